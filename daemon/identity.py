"""The node's long-term X25519 identity: created once, kept secret, never overwritten by accident.

The file holds the 32 raw private-key bytes and must be mode 0600: a key that others can read
is refused rather than silently used, as ssh does.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from common.atomic import write_atomic
from daemon.errors import DaemonError
from daemon.peers import format_peer_id, short_peer_id

KEY_LENGTH = 32


class IdentityError(DaemonError):
    """An identity file that cannot be used; ``str()`` is the one line to show the user."""


class IdentityMissingError(IdentityError):
    """No identity file yet (``parley init`` creates one)."""


class IdentityExposedError(IdentityError):
    """The identity file is readable by others (``chmod 600`` fixes it)."""


@dataclass(frozen=True, slots=True, repr=False)
class Identity:
    """Our static key pair. ``repr`` never shows the private half."""

    private_key: bytes
    public_key: bytes

    @classmethod
    def generate(cls) -> Identity:
        return cls.from_private_bytes(
            X25519PrivateKey.generate().private_bytes(
                Encoding.Raw, PrivateFormat.Raw, NoEncryption()
            )
        )

    @classmethod
    def from_private_bytes(cls, private_key: bytes) -> Identity:
        if len(private_key) != KEY_LENGTH:
            raise ValueError(f"an X25519 private key is {KEY_LENGTH} bytes, got {len(private_key)}")
        public = X25519PrivateKey.from_private_bytes(private_key).public_key()
        return cls(private_key, public.public_bytes(Encoding.Raw, PublicFormat.Raw))

    @property
    def peer_id(self) -> str:
        return format_peer_id(self.public_key)

    def __repr__(self) -> str:
        return f"Identity(peer_id={short_peer_id(self.public_key)}…)"


def save_identity(identity: Identity, path: Path, *, force: bool = False) -> None:
    """Write the key (0600, atomically). Refuses to replace an existing one unless ``force``."""
    if path.exists() and not force:
        raise IdentityError(f"{path}: an identity already exists; use --force to replace it")
    write_atomic(path, identity.private_key, mode=0o600)


def load_identity(path: Path) -> Identity:
    """Read and check the key file: present, private (0600), exactly 32 bytes."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise IdentityMissingError(f"{path}: no identity; run 'parley init' first") from None
    except OSError as error:
        raise IdentityError(f"{path}: cannot read: {error.strerror or error}") from None
    with os.fdopen(descriptor, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if mode & 0o077:
            raise IdentityExposedError(
                f"{path}: permissions {mode:04o} are too open; the key must be private "
                f"(chmod 600 {path})"
            )
        data = handle.read(KEY_LENGTH + 1)
    if len(data) != KEY_LENGTH:
        raise IdentityError(
            f"{path}: an identity key is {KEY_LENGTH} bytes, this file has "
            f"{'more' if len(data) > KEY_LENGTH else len(data)}"
        )
    return Identity.from_private_bytes(data)
