from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from daemon.identity import (
    Identity,
    IdentityError,
    format_peer_id,
    load_identity,
    save_identity,
)


def test_round_trip_and_mode(tmp_path):
    path = tmp_path / "identity.key"
    identity = Identity.generate()
    save_identity(identity, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_identity(path)
    assert loaded == identity
    # The public key is what an independent implementation derives from the private bytes.
    expected = X25519PrivateKey.from_private_bytes(path.read_bytes()).public_key()
    assert loaded.public_key == expected.public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "identity.key"
    first = Identity.generate()
    save_identity(first, path)
    with pytest.raises(IdentityError, match="already exists; use --force"):
        save_identity(Identity.generate(), path)
    assert load_identity(path) == first
    second = Identity.generate()
    save_identity(second, path, force=True)
    assert load_identity(path) == second


def test_loose_permissions_are_refused(tmp_path):
    path = tmp_path / "identity.key"
    save_identity(Identity.generate(), path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError) as caught:
        load_identity(path)
    assert str(caught.value) == (
        f"{path}: permissions 0644 are too open; the key must be private (chmod 600 {path})"
    )


@pytest.mark.parametrize(("size", "shown"), [(0, "0"), (31, "31"), (33, "more"), (64, "more")])
def test_wrong_length_is_refused(tmp_path, size, shown):
    path = tmp_path / "identity.key"
    path.write_bytes(b"\x01" * size)
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError) as caught:
        load_identity(path)
    assert str(caught.value) == f"{path}: an identity key is 32 bytes, this file has {shown}"


def test_missing_identity(tmp_path):
    with pytest.raises(IdentityError, match="no identity; run 'parley init' first"):
        load_identity(tmp_path / "identity.key")


def test_repr_hides_the_private_key():
    identity = Identity.generate()
    assert identity.private_key.hex() not in repr(identity)
    assert format_peer_id(identity.public_key)[:16] in repr(identity)


def test_peer_id_is_base32_of_the_public_key():
    import base64

    identity = Identity.generate()
    padded = identity.peer_id.upper() + "=" * (-len(identity.peer_id) % 8)
    assert base64.b32decode(padded) == identity.public_key
