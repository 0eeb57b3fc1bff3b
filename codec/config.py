"""Frozen, validated settings of the personal speech codec (its shape and its wire settings).

Every field is checked at construction and a bad value raises :class:`ValueError` naming the
field, so a config that exists is a config that works (STYLE.md §10).

The codec's *architecture id* is derived from every field that changes either the shape of a
weight or what the weights compute (padding / lookahead), so two nodes that advertise the same id
can exchange and average weights. Wire settings (latent bits) and the init seed are not part of
it: they change neither.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

#: Whisper's front end produces one log-mel frame every 10 ms (hop 160 at 16 kHz).
MEL_FRAME_RATE_HZ = 100
#: Largest sample count (mel frames of enrolled audio) a bundle may claim: 1,000 hours at
#: :data:`MEL_FRAME_RATE_HZ`. The count weighs a peer in the mean, and it is self-reported, so
#: an absurd one (2**64 - 1 was accepted) would let one peer outweigh everyone else.
MAX_SAMPLE_COUNT = 1000 * 3600 * MEL_FRAME_RATE_HZ

_ARCHITECTURE_PREFIX = "csm-v1"
_ARCHITECTURE_PATTERN = re.compile(
    r"^csm-v1-m(?P<n_mels>[1-9][0-9]*)-d(?P<latent_dim>[1-9][0-9]*)-h(?P<hidden>[1-9][0-9]*)"
    r"-b(?P<blocks>[0-9]+)-s(?P<stride>[1-9][0-9]*)-k(?P<kernel_size>[1-9][0-9]*)"
    r"-a(?P<lookahead>[0-9]+)$"
)
_MAX_ARCHITECTURE_ID_LENGTH = 128


def check_int(name: str, value: object, low: int, high: int) -> None:
    # bool is an int subclass; a True stride is a bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def check_float(
    name: str, value: object, low: float, high: float, *, low_open: bool = False
) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    too_low = number <= low if low_open else number < low
    if too_low or number > high:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {number}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CodecConfig:
    """Shape and wire settings of the CSM autoencoder (see :mod:`codec.model`).

    ``stride`` mel frames become one latent frame (latent rate ``100 / stride`` Hz); every
    temporal convolution has ``kernel_size`` taps of which ``lookahead`` look into the future.
    """

    n_mels: int = 80
    latent_dim: int = 32
    hidden: int = 64
    blocks: int = 2
    stride: int = 4
    kernel_size: int = 5
    lookahead: int = 2
    latent_bits: int = 5
    init_seed: int = 0

    def __post_init__(self) -> None:
        check_int("n_mels", self.n_mels, 1, 512)
        check_int("latent_dim", self.latent_dim, 1, 512)
        check_int("hidden", self.hidden, 1, 1024)
        check_int("blocks", self.blocks, 0, 16)
        check_int("stride", self.stride, 1, 16)
        check_int("kernel_size", self.kernel_size, 1, 31)
        check_int("lookahead", self.lookahead, 0, self.kernel_size - 1)
        check_int("latent_bits", self.latent_bits, 1, 8)
        check_int("init_seed", self.init_seed, 0, 2**63 - 1)

    @property
    def architecture_id(self) -> str:
        """Names every weight shape and padding choice, e.g. ``csm-v1-m80-d32-h64-b2-s4-k5-a2``."""
        return (
            f"{_ARCHITECTURE_PREFIX}-m{self.n_mels}-d{self.latent_dim}-h{self.hidden}"
            f"-b{self.blocks}-s{self.stride}-k{self.kernel_size}-a{self.lookahead}"
        )

    @property
    def frame_rate_hz(self) -> float:
        """Latent frames per second."""
        return MEL_FRAME_RATE_HZ / self.stride

    @property
    def bits_per_second(self) -> float:
        return self.latent_dim * self.latent_bits * self.frame_rate_hz

    @property
    def kbps(self) -> float:
        """Exact wire bitrate of the latent stream (payload only, before framing)."""
        return self.bits_per_second / 1000

    @property
    def parameter_count(self) -> int:
        """Weights and biases of :class:`codec.model.CodecModel`, computed without building it."""
        m, d, h, k = self.n_mels, self.latent_dim, self.hidden, self.kernel_size
        projections = 2 * m * h + h + m  # encoder_in and decoder_out
        block = (h * k + h) + (h * h + h)  # depthwise + pointwise, with biases
        resampling = (h * d * self.stride + d) + (d * h * self.stride + h)
        return projections + 2 * self.blocks * block + resampling

    @property
    def encoder_lookahead_frames(self) -> int:
        """Future mel frames the encoder needs beyond a latent frame's own ``stride`` frames."""
        return self.blocks * self.lookahead

    @property
    def decoder_lookahead_frames(self) -> int:
        """Future mel-rate frames the decoder needs past the output frame it is producing."""
        return self.blocks * self.lookahead

    @property
    def encoder_left_context_frames(self) -> int:
        """Past mel frames the encoder's temporal convolutions read (streaming state size)."""
        return self.blocks * (self.kernel_size - 1 - self.lookahead)

    @classmethod
    def from_architecture_id(
        cls, architecture_id: str, *, latent_bits: int = 5, init_seed: int = 0
    ) -> CodecConfig:
        """Rebuild the config a peer advertised; raises :class:`ValueError` if it is malformed."""
        if len(architecture_id) > _MAX_ARCHITECTURE_ID_LENGTH:
            raise ValueError("architecture_id is too long")
        match = _ARCHITECTURE_PATTERN.fullmatch(architecture_id)
        if match is None:
            raise ValueError(f"architecture_id {architecture_id!r} is not a csm-v1 id")
        fields = {key: int(value) for key, value in match.groupdict().items()}
        config = cls(**fields, latent_bits=latent_bits, init_seed=init_seed)
        # Leading zeros ("h064") would parse but name a different string; refuse them.
        if config.architecture_id != architecture_id:
            raise ValueError(f"architecture_id {architecture_id!r} is not canonical")
        return config

    def to_json_dict(self) -> dict[str, int]:
        return {
            "n_mels": self.n_mels,
            "latent_dim": self.latent_dim,
            "hidden": self.hidden,
            "blocks": self.blocks,
            "stride": self.stride,
            "kernel_size": self.kernel_size,
            "lookahead": self.lookahead,
            "latent_bits": self.latent_bits,
            "init_seed": self.init_seed,
        }

    @classmethod
    def from_json_dict(cls, data: object) -> CodecConfig:
        """Inverse of :meth:`to_json_dict`; raises :class:`ValueError` on anything unexpected."""
        if not isinstance(data, dict):
            raise ValueError("codec config must be a JSON object")
        expected = set(cls().to_json_dict())
        if set(data) != expected:
            raise ValueError(f"codec config keys must be {sorted(expected)}, got {sorted(data)}")
        return cls(**data)
