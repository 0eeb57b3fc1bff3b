"""The CSM: a small convolutional autoencoder over Whisper log-mel frames.

Theory of operation
-------------------
Encoder: a pointwise projection 80 → ``hidden``, ``blocks`` residual blocks (depthwise temporal
conv of ``kernel_size`` taps + GELU + pointwise mix), then a strided conv that turns ``stride``
mel frames into one ``latent_dim`` vector, bounded by ``tanh`` so :mod:`codec.latent` can
quantize it uniformly. Decoder: the mirror image (transposed conv back to the mel rate, residual
blocks, pointwise projection to 80 bins).

Depthwise-separable blocks keep the parameter count near 40k (≈ 40 KB as int8), so a bundle fits
one Noise handshake message, while still giving each latent frame ±several frames of context.

Streaming: every temporal conv is padded with ``kernel_size - 1 - lookahead`` past frames and
``lookahead`` future frames, never more, so the encoder needs
:attr:`~fl.config.CodecConfig.encoder_lookahead_frames` future mel frames beyond a latent frame's
own ``stride`` frames, and the decoder :attr:`~fl.config.CodecConfig.decoder_lookahead_frames`
future mel-rate frames. A streaming wrapper can therefore run these modules on a sliding window
and reproduce the whole-utterance output exactly away from the utterance's edges.

Initialisation is seeded from ``CodecConfig.init_seed`` with a private generator: every node
starts from the same weights, which is what makes averaging their models meaningful.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional

from codec.bundle import state_from_bundle
from codec.config import CodecConfig
from codec.errors import BundleProblem, InvalidBundleError
from codec.latent import dequantize, quantize
from schemas.messages import WeightsBundle

#: The largest codec a peer may make us build from its bundle (the 50 KB int8 budget is ~45k).
MAX_PEER_PARAMETERS: Final = 1_000_000


class _TemporalBlock(nn.Module):
    """``x + pointwise(gelu(depthwise(x)))`` with bounded lookahead padding."""

    def __init__(self, channels: int, kernel_size: int, lookahead: int) -> None:
        super().__init__()
        self.past = kernel_size - 1 - lookahead
        self.future = lookahead
        self.depthwise = nn.Conv1d(channels, channels, kernel_size, groups=channels)
        self.pointwise = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = functional.pad(x, (self.past, self.future))
        result: torch.Tensor = x + self.pointwise(functional.gelu(self.depthwise(padded)))
        return result


class CodecModel(nn.Module):
    """Log-mel ``(batch, n_mels, T)`` ↔ latent ``(batch, latent_dim, ceil(T / stride))``."""

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.encoder_in = nn.Conv1d(config.n_mels, h, 1)
        self.encoder_blocks = nn.ModuleList(
            _TemporalBlock(h, config.kernel_size, config.lookahead) for _ in range(config.blocks)
        )
        self.encoder_down = nn.Conv1d(h, config.latent_dim, config.stride, stride=config.stride)
        self.decoder_up = nn.ConvTranspose1d(
            config.latent_dim, h, config.stride, stride=config.stride
        )
        self.decoder_blocks = nn.ModuleList(
            _TemporalBlock(h, config.kernel_size, config.lookahead) for _ in range(config.blocks)
        )
        self.decoder_out = nn.Conv1d(h, config.n_mels, 1)
        self._seeded_init(config.init_seed)

    def _seeded_init(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if name.endswith("bias"):
                    parameter.zero_()
                    continue
                fan_in = parameter[0].numel() if parameter.dim() > 1 else 1
                if isinstance(self.get_submodule(name.rsplit(".", 1)[0]), nn.ConvTranspose1d):
                    fan_in = parameter.shape[0]
                bound = 1.0 / float(np.sqrt(fan_in))
                parameter.uniform_(-bound, bound, generator=generator)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Latent in ``[-1, 1]``; ``T`` is padded at the end (edge frames) to a stride multiple."""
        if mel.dim() != 3 or mel.shape[1] != self.config.n_mels:
            raise ValueError(
                f"mel must have shape (batch, {self.config.n_mels}, T), got {tuple(mel.shape)}"
            )
        remainder = mel.shape[2] % self.config.stride
        if remainder:
            mel = functional.pad(mel, (0, self.config.stride - remainder), mode="replicate")
        x = self.encoder_in(mel)
        for block in self.encoder_blocks:
            x = block(x)
        return torch.tanh(self.encoder_down(x))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Log-mel of ``latent.shape[2] * stride`` frames."""
        if latent.dim() != 3 or latent.shape[1] != self.config.latent_dim:
            raise ValueError(
                f"latent must have shape (batch, {self.config.latent_dim}, T), "
                f"got {tuple(latent.shape)}"
            )
        x = self.decoder_up(latent)
        for block in self.decoder_blocks:
            x = block(x)
        result: torch.Tensor = self.decoder_out(x)
        return result

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Reconstruction without quantization, cropped to the input length."""
        return self.decode(self.encode(mel))[:, :, : mel.shape[2]]


def parameter_count(model: CodecModel) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def expected_shapes(config: CodecConfig) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in a codec's state (what a peer's bundle must match)."""
    return {name: tuple(tensor.shape) for name, tensor in CodecModel(config).state_dict().items()}


def state_to_numpy(model: CodecModel) -> dict[str, npt.NDArray[np.float32]]:
    """A detached float32 copy of the model's weights, keyed like ``state_dict``."""
    return {
        name: tensor.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, tensor in model.state_dict().items()
    }


def load_numpy_state(model: CodecModel, state: Mapping[str, npt.NDArray[np.floating]]) -> None:
    """Copy ``state`` into ``model``; names and shapes must match exactly (:class:`ValueError`)."""
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if set(state) != set(shapes):
        missing = sorted(set(shapes) - set(state))
        extra = sorted(set(state) - set(shapes))
        raise ValueError(f"state does not match the model: missing {missing}, unexpected {extra}")
    for name, shape in shapes.items():
        if tuple(state[name].shape) != shape:
            raise ValueError(
                f"tensor {name} has shape {tuple(state[name].shape)}, expected {shape}"
            )
    model.load_state_dict(
        {
            name: torch.from_numpy(np.asarray(array, dtype=np.float32))
            for name, array in state.items()
        }
    )


def new_model(
    config: CodecConfig, state: Mapping[str, npt.NDArray[np.floating]] | None = None
) -> CodecModel:
    """A model from ``config``, seeded init or ``state`` (e.g. from a checkpoint or bundle)."""
    model = CodecModel(config)
    if state is not None:
        load_numpy_state(model, state)
    model.eval()
    return model


def model_from_bundle(bundle: WeightsBundle, *, latent_bits: int) -> CodecModel:
    """The sender's codec, built from its (untrusted) bundle, to decode the frames it sends.

    ``latent_bits`` comes from the call's ``CodecSettings``. Every problem, including a
    malformed or oversized architecture id, is an :class:`~fl.errors.InvalidBundleError`.
    """
    try:
        config = CodecConfig.from_architecture_id(bundle.architecture_id, latent_bits=latent_bits)
    except ValueError as error:
        raise InvalidBundleError(
            BundleProblem.ARCHITECTURE, f"unusable codec settings: {error}"
        ) from error
    if config.parameter_count > MAX_PEER_PARAMETERS:
        raise InvalidBundleError(
            BundleProblem.SIZE,
            f"codec {config.architecture_id} has {config.parameter_count} parameters, "
            f"over the limit of {MAX_PEER_PARAMETERS}",
        )
    state = state_from_bundle(
        bundle,
        expected_architecture_id=config.architecture_id,
        expected_shapes=expected_shapes(config),
    )
    return new_model(config, state)


def _mel_tensor(model: CodecModel, mel: npt.NDArray[np.floating]) -> torch.Tensor:
    array = np.asarray(mel, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != model.config.n_mels or array.shape[1] == 0:
        raise ValueError(f"mel must have shape ({model.config.n_mels}, T>0), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("mel contains non-finite values")
    return torch.from_numpy(np.ascontiguousarray(array))[None]


def encode_to_codes(model: CodecModel, mel: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """Mel ``(n_mels, T)`` → integer codes ``(ceil(T / stride), latent_dim)`` for the wire."""
    with torch.no_grad():
        latent = model.encode(_mel_tensor(model, mel))[0].T.numpy()
    return quantize(latent, model.config.latent_bits)


def decode_codes(model: CodecModel, codes: npt.NDArray[np.integer]) -> npt.NDArray[np.float32]:
    """Codes ``(frames, latent_dim)`` → log-mel ``(n_mels, frames * stride)``."""
    latent = dequantize(codes, model.config.latent_bits)
    if latent.ndim != 2 or latent.shape[1] != model.config.latent_dim:
        raise ValueError(
            f"codes must have shape (frames, {model.config.latent_dim}), got {latent.shape}"
        )
    with torch.no_grad():
        mel = model.decode(torch.from_numpy(np.ascontiguousarray(latent.T))[None])[0]
    return mel.numpy().astype(np.float32, copy=False)
