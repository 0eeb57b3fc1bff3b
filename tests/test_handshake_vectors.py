"""The published Noise test vectors (cacophony) for Noise_XK_25519_ChaChaPoly_BLAKE2s.

Every handshake and transport ciphertext and the handshake hash must match byte for byte, on
both sides, through the same wrapper (and fast hash backend, and direct transport cipher) that
parley's handshake uses. A second test checks our REKEY against noiseprotocol's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from noise.connection import Keypair, NoiseConnection

from handshake.noise import PROTOCOL_NAME, NoiseXK, StaticIdentity, TransportCipher

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "noise_xk_25519_chachapoly_blake2s.json").read_text()
)["vectors"]


def _pair(vector: dict[str, object]) -> tuple[NoiseXK, NoiseXK]:
    def h(key: str) -> bytes:
        return bytes.fromhex(str(vector[key]))

    initiator = NoiseXK(
        initiator=True,
        identity=StaticIdentity(h("init_static")),
        their_static_public=h("init_remote_static"),
        prologue=h("init_prologue"),
        ephemeral_private=h("init_ephemeral"),
    )
    responder = NoiseXK(
        initiator=False,
        identity=StaticIdentity(h("resp_static")),
        their_static_public=None,
        prologue=h("resp_prologue"),
        ephemeral_private=h("resp_ephemeral"),
    )
    return initiator, responder


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["protocol_name"])
def test_published_vector_matches_byte_for_byte(vector: dict[str, object]) -> None:
    assert vector["protocol_name"].encode() == PROTOCOL_NAME  # type: ignore[attr-defined]
    initiator, responder = _pair(vector)
    messages = vector["messages"]
    assert isinstance(messages, list)
    for index, message in enumerate(messages[:3]):
        payload = bytes.fromhex(message["payload"])
        writer, reader = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        ciphertext = writer.write(payload)
        assert ciphertext.hex() == message["ciphertext"]
        assert reader.read(ciphertext) == payload
    assert initiator.complete and responder.complete
    assert initiator.handshake_hash().hex() == vector["handshake_hash"]
    assert responder.handshake_hash().hex() == vector["handshake_hash"]
    # The responder learnt the initiator's static key from message 3.
    init_static_public = StaticIdentity(bytes.fromhex(str(vector["init_static"]))).public
    assert responder.their_static_public() == init_static_public
    assert initiator.their_static_public() == bytes.fromhex(str(vector["init_remote_static"]))

    init_send, init_receive = initiator.split()
    resp_send, resp_receive = responder.split()
    # Transport messages continue the alternation: responder, initiator, responder.
    for index, message in enumerate(messages[3:], start=3):
        payload = bytes.fromhex(message["payload"])
        send, receive = (resp_send, init_receive) if index % 2 == 1 else (init_send, resp_receive)
        ciphertext = send.encrypt(payload)
        assert ciphertext.hex() == message["ciphertext"]
        assert receive.decrypt(ciphertext) == payload


def _reference_connections(vector: dict[str, object]) -> tuple[NoiseConnection, NoiseConnection]:
    """Plain noiseprotocol (its default backend, its own CipherState), an independent oracle."""

    def h(key: str) -> bytes:
        return bytes.fromhex(str(vector[key]))

    initiator = NoiseConnection.from_name(PROTOCOL_NAME)
    initiator.set_as_initiator()
    initiator.set_prologue(h("init_prologue"))
    initiator.set_keypair_from_private_bytes(Keypair.STATIC, h("init_static"))
    initiator.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, h("init_remote_static"))
    responder = NoiseConnection.from_name(PROTOCOL_NAME)
    responder.set_as_responder()
    responder.set_prologue(h("resp_prologue"))
    responder.set_keypair_from_private_bytes(Keypair.STATIC, h("resp_static"))
    initiator.start_handshake()
    responder.start_handshake()
    responder.read_message(initiator.write_message(b""))
    initiator.read_message(responder.write_message(b""))
    responder.read_message(initiator.write_message(b""))
    return initiator, responder


def test_rekey_matches_noiseprotocol() -> None:
    reference, _ = _reference_connections(VECTORS[0])
    ours = TransportCipher(reference.noise_protocol.cipher_state_encrypt.k)
    for round_ in range(3):
        payload = bytes([round_]) * 100
        assert ours.encrypt(payload) == reference.encrypt(payload)
        ours.rekey()
        reference.rekey_outbound_cipher()
    assert ours.encrypt(b"after") == reference.encrypt(b"after")
