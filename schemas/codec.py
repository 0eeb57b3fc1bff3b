"""Bytes <-> typed messages, through the Cap'n Proto envelope in ``parley.capnp``.

Decoding is strict because its input comes from the network: the envelope's version must be
:data:`~schemas.messages.PROTOCOL_VERSION`, the union tag must be one we know, every text, list and
blob must be within its named limit, every float finite, every enum value known, and the capnp
reader runs with a traversal limit proportional to the input and a nesting limit. Whatever goes
wrong, including any exception pycapnp raises (``KjException``, ``ValueError`` for a length that is
not a multiple of eight, ``UnicodeDecodeError`` for bad text), comes out as one
:class:`~schemas.errors.RemoteProtocolError` naming what was wrong. Encoding checks the same limits
and raises :class:`~schemas.errors.LocalProtocolError`: we never send what the peer must refuse.

Two envelope members are session control and never reach code above ``handshake/``:
:class:`Rekey` (the sender's outbound key moves to a new epoch) and :class:`NoBundle` (message 3 or
the responder's first transport message without weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import capnp

from schemas.errors import LocalProtocolError, RemoteProtocolError
from schemas.messages import (
    PROTOCOL_VERSION,
    Bye,
    ByeReason,
    CallEnd,
    CallStart,
    Caption,
    Chunk,
    CodecFrames,
    CodecSettings,
    Hello,
    Message,
    Ping,
    Pong,
    TensorBlob,
    TensorDtype,
    VoiceTraits,
    WeightsBundle,
    WordTime,
)

# --- Limits (a violation on decode is the peer's error, on encode ours) -----------------------
#: Identifiers, language codes, architecture ids, compression names, reasons.
MAX_NAME_CHARS: Final = 256
#: Caption text.
MAX_TEXT_CHARS: Final = 4096
#: A call's latency summary (JSON): a few dozen numbers, far below this.
MAX_SUMMARY_CHARS: Final = 16384
MAX_CAPABILITIES: Final = 64
#: Content and codec version hashes (BLAKE2b-512 is the largest we would use).
MAX_HASH_BYTES: Final = 64
MAX_TENSORS: Final = 1024
MAX_TENSOR_RANK: Final = 8
MAX_WORDS_PER_CAPTION: Final = 2048
#: One decoded envelope (a reassembled chunked payload is the largest).
MAX_ENVELOPE_BYTES: Final = 16 * 1024 * 1024
#: Our schema nests 5 deep (Envelope > Caption > words > WordTime); leave room, refuse bombs.
NESTING_LIMIT: Final = 16
#: Traversal budget per input word: a well-formed message reads each word about once, so a small
#: factor admits every honest message and caps pointer-amplification attacks.
TRAVERSAL_WORDS_PER_INPUT_WORD: Final = 4
TRAVERSAL_SLACK_WORDS: Final = 1024

_SCHEMA_PATH: Final = Path(__file__).with_name("parley.capnp")

# Field access below goes through pycapnp's `_get`/`_set`/`_which_str` rather than attribute
# syntax: the same lookups without the `__getattr__` indirection, about three times faster, and
# message (de)coding sits on the transport's per-message path.


@dataclass(frozen=True, slots=True)
class Rekey:
    """Session control: the sender's outbound key moves to ``epoch`` after this message."""

    epoch: int


@dataclass(frozen=True, slots=True)
class NoBundle:
    """Handshake control: the sender deliberately sends no weights (it does not trust us)."""


WireMessage = Message | Rekey | NoBundle


def _load_schema() -> Any:
    # The import hook would make every `import x` consult .capnp files on sys.path; we load the one
    # schema explicitly, once, from the package directory.
    capnp.remove_import_hook()
    return capnp.load(str(_SCHEMA_PATH))


_SCHEMA: Final = _load_schema()
_ENVELOPE: Final = _SCHEMA.Envelope


# --- Decoding ---------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    """pycapnp messages span lines (with a stack dump); keep one line for the error."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _text(value: str, limit: int, what: str) -> str:
    if len(value) > limit:
        raise RemoteProtocolError(f"{what} is {len(value)} characters, over the limit of {limit}")
    return value


def _blob(value: Any, limit: int, what: str) -> bytes:
    if len(value) > limit:
        raise RemoteProtocolError(f"{what} is {len(value)} bytes, over the limit of {limit}")
    return bytes(value)


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise RemoteProtocolError(f"{what} is not a finite number ({value!r})")
    return value


def _decode_hello(r: Any) -> Hello:
    caps = r._get("capabilities")
    if len(caps) > MAX_CAPABILITIES:
        raise RemoteProtocolError(
            f"Hello has {len(caps)} capabilities, over the limit of {MAX_CAPABILITIES}"
        )
    return Hello(
        protocol_version=r._get("protocolVersion"),
        capabilities=tuple(_text(c, MAX_NAME_CHARS, "Hello capability") for c in caps),
        codec_architecture=_text(
            r._get("codecArchitecture"), MAX_NAME_CHARS, "Hello codec architecture"
        ),
        codec_version_hash=_blob(
            r._get("codecVersionHash"), MAX_HASH_BYTES, "Hello codec version hash"
        ),
    )


def _decode_tensor(r: Any) -> TensorBlob:
    shape = r._get("shape")
    if len(shape) > MAX_TENSOR_RANK:
        raise RemoteProtocolError(
            f"tensor rank {len(shape)} is over the limit of {MAX_TENSOR_RANK}"
        )
    raw_dtype = r._get("dtype").raw
    try:
        dtype = TensorDtype(raw_dtype)
    except ValueError:
        raise RemoteProtocolError(f"unknown tensor dtype {raw_dtype}") from None
    return TensorBlob(
        name=_text(r._get("name"), MAX_NAME_CHARS, "tensor name"),
        shape=tuple(shape),
        dtype=dtype,
        scale=_finite(r._get("scale"), "tensor scale"),
        zero_point=_finite(r._get("zeroPoint"), "tensor zero point"),
        data=bytes(r._get("data")),
    )


def _decode_weights_bundle(r: Any) -> WeightsBundle:
    tensors = r._get("tensors")
    if len(tensors) > MAX_TENSORS:
        raise RemoteProtocolError(
            f"WeightsBundle has {len(tensors)} tensors, over the limit of {MAX_TENSORS}"
        )
    return WeightsBundle(
        architecture_id=_text(r._get("architectureId"), MAX_NAME_CHARS, "bundle architecture id"),
        round=r._get("round"),
        sample_count=r._get("sampleCount"),
        compression=_text(r._get("compression"), MAX_NAME_CHARS, "bundle compression"),
        tensors=tuple(_decode_tensor(t) for t in tensors),
        content_hash=_blob(r._get("contentHash"), MAX_HASH_BYTES, "bundle content hash"),
    )


def _decode_voice(r: Any) -> VoiceTraits:
    return VoiceTraits(
        median_pitch_hz=_finite(r._get("medianPitchHz"), "median pitch"),
        speaking_rate_wps=_finite(r._get("speakingRateWps"), "speaking rate"),
    )


def _decode_call_start(r: Any) -> CallStart:
    codec = r._get("codec")
    return CallStart(
        call_id=r._get("callId"),
        speaker_language=_text(r._get("speakerLanguage"), MAX_NAME_CHARS, "speaker language"),
        listener_language=_text(r._get("listenerLanguage"), MAX_NAME_CHARS, "listener language"),
        codec=CodecSettings(
            architecture_id=_text(
                codec._get("architectureId"), MAX_NAME_CHARS, "codec architecture id"
            ),
            codec_version_hash=_blob(codec._get("codecVersionHash"), MAX_HASH_BYTES, "codec hash"),
            latent_dim=codec._get("latentDim"),
            latent_bits=codec._get("latentBits"),
            frame_rate_hz=_finite(codec._get("frameRateHz"), "codec frame rate"),
        ),
        voice=_decode_voice(r._get("voice")),
    )


def _decode_codec_frames(r: Any) -> CodecFrames:
    return CodecFrames(
        seq=r._get("seq"),
        start_time_s=_finite(r._get("startTimeS"), "CodecFrames start time"),
        frame_count=r._get("frameCount"),
        payload=bytes(r._get("payload")),
        speech_start=bool(r._get("speechStart")),
        speech_end=bool(r._get("speechEnd")),
    )


def _decode_caption(r: Any) -> Caption:
    words = r._get("words")
    if len(words) > MAX_WORDS_PER_CAPTION:
        raise RemoteProtocolError(
            f"Caption has {len(words)} words, over the limit of {MAX_WORDS_PER_CAPTION}"
        )
    return Caption(
        seq=r._get("seq"),
        start_s=_finite(r._get("startS"), "Caption start"),
        end_s=_finite(r._get("endS"), "Caption end"),
        text=_text(r._get("text"), MAX_TEXT_CHARS, "Caption text"),
        language=_text(r._get("language"), MAX_NAME_CHARS, "Caption language"),
        final=r._get("final"),
        words=tuple(
            WordTime(
                word=_text(w._get("word"), MAX_NAME_CHARS, "Caption word"),
                start_s=_finite(w._get("startS"), "word start"),
                end_s=_finite(w._get("endS"), "word end"),
            )
            for w in words
        ),
        voice=_decode_voice(r._get("voice")),
    )


def _decode_bye(r: Any) -> Bye:
    try:
        return Bye(reason=ByeReason(r._get("reason")))
    except ValueError:
        raise RemoteProtocolError(f"unknown Bye reason {r._get('reason')}") from None


def _decode_chunk(r: Any) -> Chunk:
    return Chunk(
        message_id=r._get("messageId"),
        index=r._get("index"),
        count=r._get("count"),
        data=bytes(r._get("data")),
    )


_DECODERS: Final[dict[str, Callable[[Any], WireMessage]]] = {
    "hello": _decode_hello,
    "weightsBundle": _decode_weights_bundle,
    "callStart": _decode_call_start,
    "codecFrames": _decode_codec_frames,
    "caption": _decode_caption,
    "callEnd": lambda r: CallEnd(
        call_id=r._get("callId"),
        reason=_text(r._get("reason"), MAX_NAME_CHARS, "CallEnd reason"),
        summary_json=_text(r._get("summaryJson"), MAX_SUMMARY_CHARS, "CallEnd summary"),
    ),
    "ping": lambda r: Ping(nonce=r._get("nonce")),
    "pong": lambda r: Pong(nonce=r._get("nonce")),
    "bye": _decode_bye,
    "chunk": _decode_chunk,
    "rekey": lambda r: Rekey(epoch=r._get("epoch")),
}


def decode(data: bytes) -> WireMessage:
    """Decode one envelope from the peer; anything invalid is a :class:`RemoteProtocolError`."""
    size = len(data)
    if size > MAX_ENVELOPE_BYTES:
        raise RemoteProtocolError(
            f"message is {size} bytes, over the limit of {MAX_ENVELOPE_BYTES}"
        )
    if size % 8:
        raise RemoteProtocolError(f"message length {size} is not a multiple of 8 bytes")
    traversal_limit = TRAVERSAL_WORDS_PER_INPUT_WORD * (size // 8) + TRAVERSAL_SLACK_WORDS
    try:
        with _ENVELOPE.from_bytes(
            data, traversal_limit_in_words=traversal_limit, nesting_limit=NESTING_LIMIT
        ) as envelope:
            version = envelope._get("version")
            if version != PROTOCOL_VERSION:
                raise RemoteProtocolError(f"message version {version}, expected {PROTOCOL_VERSION}")
            body = envelope._get("body")
            try:
                tag = body._which_str()
            except capnp.KjException:
                raise RemoteProtocolError("message has an unknown union tag") from None
            if tag == "noBundle":
                return NoBundle()
            decoder = _DECODERS.get(tag)
            if decoder is None:  # a retired ordinal (RoundOffer, RoundResult)
                raise RemoteProtocolError(f"message kind {tag!r} is not part of the protocol")
            return decoder(body._get(tag))
    except RemoteProtocolError:
        raise
    except Exception as exc:
        # pycapnp's failure surface is not documented (KjException for structure and traversal,
        # ValueError, UnicodeDecodeError, OverflowError...). Input from the peer reached it, so
        # whatever it raises is the peer's error; the one-line reason keeps the first line only.
        raise RemoteProtocolError(f"malformed message: {_first_line(exc)}") from None


# --- Encoding ---------------------------------------------------------------------------------


def _check_text(value: str, limit: int, what: str) -> str:
    if len(value) > limit:
        raise LocalProtocolError(f"{what} is {len(value)} characters, over the limit of {limit}")
    return value


def _check_blob(value: bytes, limit: int, what: str) -> bytes:
    if len(value) > limit:
        raise LocalProtocolError(f"{what} is {len(value)} bytes, over the limit of {limit}")
    return value


def _check_finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise LocalProtocolError(f"{what} is not a finite number ({value!r})")
    return value


def _encode_hello(body: Any, m: Hello) -> None:
    if len(m.capabilities) > MAX_CAPABILITIES:
        raise LocalProtocolError(f"Hello has more than {MAX_CAPABILITIES} capabilities")
    b = body.init("hello")
    b._set("protocolVersion", m.protocol_version)
    caps = b.init("capabilities", len(m.capabilities))
    for i, cap in enumerate(m.capabilities):
        caps[i] = _check_text(cap, MAX_NAME_CHARS, "Hello capability")
    b._set(
        "codecArchitecture", _check_text(m.codec_architecture, MAX_NAME_CHARS, "codec architecture")
    )
    b._set(
        "codecVersionHash", _check_blob(m.codec_version_hash, MAX_HASH_BYTES, "codec version hash")
    )


def _encode_weights_bundle(body: Any, m: WeightsBundle) -> None:
    if len(m.tensors) > MAX_TENSORS:
        raise LocalProtocolError(f"WeightsBundle has more than {MAX_TENSORS} tensors")
    b = body.init("weightsBundle")
    b._set(
        "architectureId", _check_text(m.architecture_id, MAX_NAME_CHARS, "bundle architecture id")
    )
    b._set("round", m.round)
    b._set("sampleCount", m.sample_count)
    b._set("compression", _check_text(m.compression, MAX_NAME_CHARS, "bundle compression"))
    b._set("contentHash", _check_blob(m.content_hash, MAX_HASH_BYTES, "bundle content hash"))
    tensors = b.init("tensors", len(m.tensors))
    for i, t in enumerate(m.tensors):
        if len(t.shape) > MAX_TENSOR_RANK:
            raise LocalProtocolError(f"tensor {t.name!r} has rank over {MAX_TENSOR_RANK}")
        out = tensors[i]
        out._set("name", _check_text(t.name, MAX_NAME_CHARS, "tensor name"))
        shape = out.init("shape", len(t.shape))
        for j, dim in enumerate(t.shape):
            shape[j] = dim
        out._set("dtype", int(TensorDtype(t.dtype)))
        out._set("scale", _check_finite(t.scale, "tensor scale"))
        out._set("zeroPoint", _check_finite(t.zero_point, "tensor zero point"))
        out._set("data", t.data)


def _encode_voice(b: Any, v: VoiceTraits) -> None:
    b._set("medianPitchHz", _check_finite(v.median_pitch_hz, "median pitch"))
    b._set("speakingRateWps", _check_finite(v.speaking_rate_wps, "speaking rate"))


def _encode_call_start(body: Any, m: CallStart) -> None:
    b = body.init("callStart")
    b._set("callId", m.call_id)
    b._set("speakerLanguage", _check_text(m.speaker_language, MAX_NAME_CHARS, "speaker language"))
    b._set(
        "listenerLanguage", _check_text(m.listener_language, MAX_NAME_CHARS, "listener language")
    )
    codec = b.init("codec")
    codec._set("architectureId", _check_text(m.codec.architecture_id, MAX_NAME_CHARS, "codec arch"))
    codec._set(
        "codecVersionHash", _check_blob(m.codec.codec_version_hash, MAX_HASH_BYTES, "codec hash")
    )
    codec._set("latentDim", m.codec.latent_dim)
    codec._set("latentBits", m.codec.latent_bits)
    codec._set("frameRateHz", _check_finite(m.codec.frame_rate_hz, "codec frame rate"))
    _encode_voice(b.init("voice"), m.voice)


def _encode_codec_frames(body: Any, m: CodecFrames) -> None:
    b = body.init("codecFrames")
    b._set("seq", m.seq)
    b._set("startTimeS", _check_finite(m.start_time_s, "CodecFrames start time"))
    b._set("frameCount", m.frame_count)
    b._set("payload", m.payload)
    b._set("speechStart", bool(m.speech_start))
    b._set("speechEnd", bool(m.speech_end))


def _encode_caption(body: Any, m: Caption) -> None:
    if len(m.words) > MAX_WORDS_PER_CAPTION:
        raise LocalProtocolError(f"Caption has more than {MAX_WORDS_PER_CAPTION} words")
    b = body.init("caption")
    b._set("seq", m.seq)
    b._set("startS", _check_finite(m.start_s, "Caption start"))
    b._set("endS", _check_finite(m.end_s, "Caption end"))
    b._set("text", _check_text(m.text, MAX_TEXT_CHARS, "Caption text"))
    b._set("language", _check_text(m.language, MAX_NAME_CHARS, "Caption language"))
    b._set("final", m.final)
    words = b.init("words", len(m.words))
    for i, w in enumerate(m.words):
        words[i]._set("word", _check_text(w.word, MAX_NAME_CHARS, "Caption word"))
        words[i]._set("startS", _check_finite(w.start_s, "word start"))
        words[i]._set("endS", _check_finite(w.end_s, "word end"))
    _encode_voice(b.init("voice"), m.voice)


def _encode_call_end(body: Any, m: CallEnd) -> None:
    b = body.init("callEnd")
    b._set("callId", m.call_id)
    b._set("reason", _check_text(m.reason, MAX_NAME_CHARS, "CallEnd reason"))
    b._set("summaryJson", _check_text(m.summary_json, MAX_SUMMARY_CHARS, "CallEnd summary"))


def _encode_chunk(body: Any, m: Chunk) -> None:
    b = body.init("chunk")
    b._set("messageId", m.message_id)
    b._set("index", m.index)
    b._set("count", m.count)
    b._set("data", m.data)


def _encode_ping(body: Any, m: Ping) -> None:
    body.init("ping")._set("nonce", m.nonce)


def _encode_pong(body: Any, m: Pong) -> None:
    body.init("pong")._set("nonce", m.nonce)


def _encode_bye(body: Any, m: Bye) -> None:
    body.init("bye")._set("reason", int(ByeReason(m.reason)))


def _encode_rekey(body: Any, m: Rekey) -> None:
    body.init("rekey")._set("epoch", m.epoch)


def _encode_no_bundle(body: Any, m: NoBundle) -> None:
    body._set("noBundle", None)


_ENCODERS: Final[dict[type, Callable[[Any, Any], None]]] = {
    Hello: _encode_hello,
    WeightsBundle: _encode_weights_bundle,
    CallStart: _encode_call_start,
    CodecFrames: _encode_codec_frames,
    Caption: _encode_caption,
    CallEnd: _encode_call_end,
    Ping: _encode_ping,
    Pong: _encode_pong,
    Bye: _encode_bye,
    Chunk: _encode_chunk,
    Rekey: _encode_rekey,
    NoBundle: _encode_no_bundle,
}


def encode(message: WireMessage) -> bytes:
    """Encode one message as an envelope; a value the peer would refuse is a LocalProtocolError."""
    encoder = _ENCODERS.get(type(message))
    if encoder is None:
        raise LocalProtocolError(f"{type(message).__name__} is not a parley wire message")
    try:
        envelope = _ENVELOPE.new_message()
        envelope._set("version", PROTOCOL_VERSION)
        encoder(envelope._get("body"), message)
        data: bytes = envelope.to_bytes()
    except LocalProtocolError:
        raise
    except Exception as exc:
        # pycapnp rejects out-of-range integers (a UInt16 field given 70000) and wrong types.
        raise LocalProtocolError(
            f"cannot encode {type(message).__name__}: {_first_line(exc)}"
        ) from None
    if len(data) > MAX_ENVELOPE_BYTES:
        raise LocalProtocolError(
            f"{type(message).__name__} encodes to {len(data)} bytes, over {MAX_ENVELOPE_BYTES}"
        )
    return data
