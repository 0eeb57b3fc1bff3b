"""Typed peer-to-peer messages: one frozen dataclass per kind.

These are the Python face of ``parley.capnp``. Code above the wire layer builds and matches on
these classes only; :mod:`schemas.codec` turns them into bytes and back (strictly: anything
unexpected from the network is a :class:`~schemas.errors.RemoteProtocolError`).

Field conventions: times are seconds as ``float``; hashes are raw ``bytes``; sequences are
tuples so that every message is hashable and immutable.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: The wire protocol version carried in every envelope and in ``Hello``.
PROTOCOL_VERSION = 1


class ByeReason(enum.IntEnum):
    """Why a peer is closing the session: done, going away, or not trusted. A broken or
    refused session is closed without ``Bye`` (the values 3-6 planned for those were never
    sent, and are not reused)."""

    NORMAL = 0
    SHUTDOWN = 1
    NOT_TRUSTED = 2


class TensorDtype(enum.IntEnum):
    """How a tensor's bytes are stored inside a :class:`WeightsBundle`."""

    FLOAT32 = 0
    FLOAT16 = 1
    INT8 = 2


@dataclass(frozen=True, slots=True)
class Hello:
    """Messages 1 and 2 of the handshake. Never carries weights (docs/design.md, "Wire").

    ``capabilities`` names what the sender serves (``fl/1``, ``call/1``); the node shows it per
    session and refuses nothing for it, so a later version can add some."""

    protocol_version: int
    capabilities: tuple[str, ...]
    codec_architecture: str
    codec_version_hash: bytes


@dataclass(frozen=True, slots=True)
class TensorBlob:
    """One named tensor, quantized: ``value = (stored - zero_point) * scale`` for INT8."""

    name: str
    shape: tuple[int, ...]
    dtype: TensorDtype
    scale: float
    zero_point: float
    data: bytes


@dataclass(frozen=True, slots=True)
class WeightsBundle:
    """A codec's weights as exchanged in the handshake and in FL rounds.

    ``compression`` names how each blob's ``data`` is compressed (``"none"``, ``"zlib"``,
    ``"lzma"``); ``content_hash`` is computed by :mod:`codec.bundle` over everything else and
    checked on load.
    """

    architecture_id: str
    round: int
    sample_count: int
    compression: str
    tensors: tuple[TensorBlob, ...]
    content_hash: bytes


@dataclass(frozen=True, slots=True)
class CodecSettings:
    """What the receiver needs to dequantize and decode a stream of codec frames."""

    architecture_id: str
    codec_version_hash: bytes
    latent_dim: int
    latent_bits: int
    frame_rate_hz: float


@dataclass(frozen=True, slots=True)
class VoiceTraits:
    """The sender's voice, measured from its features, applied when synthesizing."""

    median_pitch_hz: float
    speaking_rate_wps: float


@dataclass(frozen=True, slots=True)
class CallStart:
    call_id: int
    speaker_language: str
    listener_language: str
    codec: CodecSettings
    voice: VoiceTraits


@dataclass(frozen=True, slots=True)
class CodecFrames:
    """A batch (~100 ms) of quantized latent frames; ``payload`` is the packed codes.

    ``speech_start``/``speech_end``: the sender's voice-activity detector heard speech begin /
    end within this batch's audio (advisory; false from senders that do not run one)."""

    seq: int
    start_time_s: float
    frame_count: int
    payload: bytes
    speech_start: bool = False
    speech_end: bool = False


@dataclass(frozen=True, slots=True)
class WordTime:
    word: str
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class Caption:
    seq: int
    start_s: float
    end_s: float
    text: str
    language: str
    final: bool
    words: tuple[WordTime, ...]
    voice: VoiceTraits


@dataclass(frozen=True, slots=True)
class CallEnd:
    """Ends a call. The listener's last ``CallEnd`` carries its latency summary as JSON text."""

    call_id: int
    reason: str
    summary_json: str = ""


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int


@dataclass(frozen=True, slots=True)
class Bye:
    reason: ByeReason


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a payload larger than a single Noise transport message."""

    message_id: int
    index: int
    count: int
    data: bytes


Message = (
    Hello | WeightsBundle | CallStart | CodecFrames | Caption | CallEnd | Ping | Pong | Bye | Chunk
)
