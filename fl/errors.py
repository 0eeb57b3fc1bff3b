"""Errors of the federated-learning package.

:class:`FLError` is the root of every error raised by :mod:`fl`. The codec's own errors (bad
bundles and latent payloads from peers, corrupt checkpoints) live in :mod:`codec.errors`.
"""

from __future__ import annotations

from common.errors import ParleyError


class FLError(ParleyError):
    """Root of every error raised by :mod:`fl`."""
