"""The one place that touches ``noiseprotocol``: Noise XK messages in, bytes and keys out.

Theory of operation. noiseprotocol 0.3.1 implements the Noise state machines correctly for
well-behaved input, but it has traps this module closes, so that nothing above it needs to know
them (docs/design.md, "Wire"):

* it does not cap a handshake message's size; :class:`NoiseXK` refuses anything over
  :data:`MAX_NOISE_MESSAGE` on both write and read, and anything shorter than the message's fixed
  overhead on read;
* its transport ``encrypt`` accepts 65,535 bytes of plaintext, whose ciphertext is then too large
  to be a Noise message; :class:`TransportCipher` caps plaintext at
  :data:`MAX_TRANSPORT_PLAINTEXT`;
* a failed ``read_message`` leaves its object half-advanced with no error state: a failure here
  marks this wrapper failed and the handshake state machine above moves to ``ERROR``;
* its failures leak as ``cryptography.exceptions.InvalidTag``, ``ValueError`` and its own
  ``Noise*`` exceptions; all are translated here into parley's Local/RemoteProtocolError;
* the responder can learn the initiator's static key only from internal state, which
  ``handshake_done()`` deletes: :func:`remote_static_public_of` is the single function that reads
  it, from a reference to the handshake state taken before the final message.

After the handshake, transport encryption bypasses noiseprotocol's per-message wrappers and uses
``cryptography``'s ChaCha20-Poly1305 directly (:class:`TransportCipher`): the same construction
(Noise §5.1, 96-bit nonce = 32 zero bits + 64-bit little-endian counter, empty associated data,
REKEY as in §4.2), but one method call per message instead of five. The published test vectors
check both paths byte for byte.
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from noise.backends.default import DefaultNoiseBackend
from noise.backends.default.diffie_hellmans import ED25519
from noise.backends.default.keypairs import KeyPair25519
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseValueError

from schemas.errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_NAME: Final = b"Noise_XK_25519_ChaChaPoly_BLAKE2s"
#: Binds the parley protocol version into every handshake hash (docs/design.md, "Wire").
PROLOGUE: Final = b"parley/1"
#: Noise §3: no Noise message, handshake or transport, exceeds 65535 bytes.
MAX_NOISE_MESSAGE: Final = 65535
DH_LEN: Final = 32
AEAD_TAG_LEN: Final = 16
#: Largest transport plaintext whose ciphertext is still a legal Noise message.
MAX_TRANSPORT_PLAINTEXT: Final = MAX_NOISE_MESSAGE - AEAD_TAG_LEN
#: Fixed bytes each XK handshake message adds around its payload: `e` and the payload tag in
#: messages 1 and 2; the encrypted `s` (key + tag) and the payload tag in message 3.
HANDSHAKE_OVERHEAD: Final = (
    DH_LEN + AEAD_TAG_LEN,
    DH_LEN + AEAD_TAG_LEN,
    DH_LEN + 2 * AEAD_TAG_LEN,
)
#: Largest payload per handshake message (message index 0, 1, 2).
MAX_HANDSHAKE_PAYLOAD: Final = tuple(MAX_NOISE_MESSAGE - o for o in HANDSHAKE_OVERHEAD)
#: Noise reserves nonce 2^64-1 for REKEY; a cipher refuses to go that far.
MAX_NONCE: Final = 2**64 - 1

_NONCE = struct.Struct("<4xQ")
_REKEY_NONCE: Final = _NONCE.pack(MAX_NONCE)
_ZEROS_32: Final = bytes(32)
_XK_MESSAGE_COUNT: Final = 3


class AuthenticationError(RemoteProtocolError):
    """The peer's bytes failed AEAD authentication: tampered, truncated, or the wrong key."""


class _HashlibBlake2s:
    """BLAKE2s for noiseprotocol from hashlib: the same function, without the per-call object
    construction of ``cryptography``'s Hash, which dominated the handshake's Python overhead."""

    fn = hashlib.blake2s
    hashlen = 32
    blocklen = 64

    def hash(self, data: bytes) -> bytes:
        return hashlib.blake2s(data).digest()


_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))
_BLAKE2S_BLOCK: Final = 64


def _hmac_blake2s_pads(key: bytes) -> tuple[Any, Any]:
    """RFC 2104 inner and outer hash states after absorbing the padded key."""
    if len(key) > _BLAKE2S_BLOCK:
        key = hashlib.blake2s(key).digest()
    key = key.ljust(_BLAKE2S_BLOCK, b"\x00")
    return hashlib.blake2s(key.translate(_IPAD)), hashlib.blake2s(key.translate(_OPAD))


def _hmac_blake2s_with(pads: tuple[Any, Any], data: bytes) -> bytes:
    inner = pads[0].copy()
    inner.update(data)
    outer = pads[1].copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


def _hmac_blake2s(key: bytes, data: bytes, algorithm: Any = None) -> bytes:
    return _hmac_blake2s_with(_hmac_blake2s_pads(key), data)


def _hkdf_blake2s(
    chaining_key: bytes, input_key_material: bytes, num_outputs: int, hmac_hash_fn: Any = None
) -> tuple[bytes, ...]:
    """Noise §4.3 HKDF with HMAC-BLAKE2s, the temp key's pads computed once for all outputs."""
    pads = _hmac_blake2s_pads(_hmac_blake2s(chaining_key, input_key_material))
    output1 = _hmac_blake2s_with(pads, b"\x01")
    output2 = _hmac_blake2s_with(pads, output1 + b"\x02")
    if num_outputs == 2:
        return output1, output2
    return output1, output2, _hmac_blake2s_with(pads, output2 + b"\x03")


class _KeyPair25519(KeyPair25519):  # type: ignore[misc]
    """noiseprotocol's X25519 key pair, serialising with ``public_bytes_raw()`` (one call,
    instead of a generic ``public_bytes`` with encoding enums) on each key loaded."""

    @classmethod
    def from_public_bytes(cls, public_bytes: bytes) -> _KeyPair25519:
        if len(public_bytes) != DH_LEN:
            raise NoiseValueError(f"Invalid length of public_bytes! Should be {DH_LEN}")
        public = x25519.X25519PublicKey.from_public_bytes(public_bytes)
        return cls(public=public, public_bytes=public.public_bytes_raw())


class _X25519(ED25519):  # type: ignore[misc]
    """noiseprotocol's X25519 minus a per-call isinstance check against an ABC (our keys are
    always cryptography X25519 objects, built by noiseprotocol itself) and the generic
    serialisation."""

    @property
    def klass(self) -> type[_KeyPair25519]:
        return _KeyPair25519

    def generate_keypair(self) -> _KeyPair25519:
        private = x25519.X25519PrivateKey.generate()
        public = private.public_key()
        return _KeyPair25519(private, public, public.public_bytes_raw())

    def dh(self, private_key: Any, public_key: Any) -> bytes:
        shared: bytes = private_key.exchange(public_key)
        return shared


class _FastBackend(DefaultNoiseBackend):  # type: ignore[misc]
    """noiseprotocol's default backend restricted to parley's one suite, with hashing done by
    hashlib (fused HKDF). The published vectors check it byte for byte."""

    def __init__(self) -> None:
        super().__init__()
        self.diffie_hellmans: dict[str, Any] = {"25519": _X25519}
        self.ciphers: dict[str, Any] = {"ChaChaPoly": self.ciphers["ChaChaPoly"]}
        self.hashes: dict[str, Any] = {"BLAKE2s": _HashlibBlake2s}
        self.keypairs: dict[str, Any] = {"25519": _KeyPair25519}
        self.hmac = _hmac_blake2s
        self.hkdf = _hkdf_blake2s


_BACKEND: Final = _FastBackend()


class StaticIdentity:
    """Our long-term X25519 key pair, parsed once (parsing costs as much as a DH)."""

    __slots__ = ("_keypair", "public")

    def __init__(self, private_bytes: bytes) -> None:
        if len(private_bytes) != DH_LEN:
            raise LocalProtocolError(
                f"a static private key is {DH_LEN} bytes, not {len(private_bytes)}"
            )
        self._keypair = KeyPair25519.from_private_bytes(bytes(private_bytes))
        self.public: bytes = self._keypair.public_bytes

    @classmethod
    def generate(cls) -> StaticIdentity:
        return cls(x25519.X25519PrivateKey.generate().private_bytes_raw())

    def private_bytes(self) -> bytes:
        raw: bytes = self._keypair.private.private_bytes_raw()
        return raw

    def __repr__(self) -> str:
        return f"StaticIdentity(public={self.public.hex()[:16]}...)"


def remote_static_public_of(noise_handshake_state: Any) -> bytes | None:
    """The peer's static public key held by a noiseprotocol ``HandshakeState``, or None.

    noiseprotocol 0.3.1 exposes no accessor: the key lives in ``HandshakeState.rs`` (a keypair
    object, or ``Empty`` until the `s` token is read), and ``NoiseProtocol.handshake_done()``
    drops the ``handshake_state`` attribute when the last message is processed. The caller keeps
    its own reference to the HandshakeState taken at start, so the object outlives that ``del``.
    This function is the only reader of that internal attribute.
    """
    remote = getattr(noise_handshake_state, "rs", None)
    public = getattr(remote, "public_bytes", None)
    if isinstance(public, bytes) and len(public) == DH_LEN:
        return public
    return None


class TransportCipher:
    """One direction of a Noise transport: ChaCha20-Poly1305 with a counter nonce.

    Decrypt failures are the peer's (:class:`RemoteProtocolError`); a failed decrypt does not
    advance the nonce (Noise §5.1), though the session above treats it as fatal anyway.
    """

    __slots__ = ("_aead", "_key", "nonce")

    def __init__(self, key: bytes, nonce: int = 0, *, aead: ChaCha20Poly1305 | None = None) -> None:
        self._key = key
        # `aead` lets split() hand over the object noiseprotocol already keyed with `key`.
        self._aead = aead if aead is not None else ChaCha20Poly1305(key)
        self.nonce = nonce

    def encrypt(self, plaintext: bytes) -> bytes:
        if len(plaintext) > MAX_TRANSPORT_PLAINTEXT:
            raise LocalProtocolError(
                f"transport plaintext is {len(plaintext)} bytes, over {MAX_TRANSPORT_PLAINTEXT}"
            )
        n = self.nonce
        if n >= MAX_NONCE:
            raise LocalProtocolError("transport nonce exhausted; the session must end")
        self.nonce = n + 1
        ciphertext: bytes = self._aead.encrypt(_NONCE.pack(n), plaintext, None)
        return ciphertext

    def decrypt(self, ciphertext: bytes | memoryview) -> bytes:
        n = self.nonce
        if n >= MAX_NONCE:
            raise RemoteProtocolError("transport nonce exhausted; the session must end")
        try:
            plaintext: bytes = self._aead.decrypt(_NONCE.pack(n), ciphertext, None)
        except Exception:
            # InvalidTag for a forged or corrupted message, ValueError for one too short to hold
            # a tag: both mean the peer's bytes are not an authentic next message.
            raise AuthenticationError(
                f"transport message {n} failed authentication ({len(ciphertext)} bytes)"
            ) from None
        self.nonce = n + 1
        return plaintext

    def rekey(self) -> None:
        """Noise §4.2 REKEY: k = ENCRYPT(k, 2^64-1, empty, 32 zero bytes)[:32]; n unchanged."""
        self._key = self._aead.encrypt(_REKEY_NONCE, _ZEROS_32, b"")[:32]
        self._aead = ChaCha20Poly1305(self._key)


class NoiseXK:
    """A `Noise_XK_25519_ChaChaPoly_BLAKE2s` handshake, bytes in and out, with parley's caps.

    ``write``/``read`` alternate as the pattern dictates (the state machine above enforces the
    order). ``ephemeral_private`` fixes the ephemeral key, for the published test vectors only.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        identity: StaticIdentity,
        their_static_public: bytes | None,
        prologue: bytes = PROLOGUE,
        protocol_name: bytes = PROTOCOL_NAME,
        ephemeral_private: bytes | None = None,
    ) -> None:
        if initiator and (their_static_public is None or len(their_static_public) != DH_LEN):
            raise LocalProtocolError(f"an XK initiator needs the responder's {DH_LEN}-byte key")
        self.initiator = initiator
        self._message_index = 0
        self._failed = False
        try:
            connection = NoiseConnection.from_name(protocol_name, backend=_BACKEND)
            if initiator:
                connection.set_as_initiator()
                connection.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, their_static_public)
            else:
                connection.set_as_responder()
            connection.set_prologue(prologue)
            # The parsed identity is shared, not re-parsed from bytes on every handshake.
            connection.noise_protocol.keypairs["s"] = identity._keypair
            if ephemeral_private is None:
                connection.start_handshake()
            else:
                connection.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral_private)
                with warnings.catch_warnings():
                    # noiseprotocol warns (rightly) that a fixed ephemeral is for tests only.
                    warnings.simplefilter("ignore")
                    connection.start_handshake()
        except LocalProtocolError:
            raise
        except Exception as exc:
            raise LocalProtocolError(f"cannot start the Noise handshake: {exc}") from None
        self._connection = connection
        # Kept for remote_static_public_of(): noiseprotocol deletes its own reference at the end.
        self._noise_handshake_state = connection.noise_protocol.handshake_state

    @property
    def complete(self) -> bool:
        return self._message_index == _XK_MESSAGE_COUNT

    def _check_usable(self) -> None:
        if self._failed:
            raise LocalProtocolError("this Noise handshake already failed")
        if self.complete:
            raise LocalProtocolError("the Noise handshake is already complete")

    def write(self, payload: bytes) -> bytes:
        """Create the next handshake message around ``payload``."""
        self._check_usable()
        index = self._message_index
        if len(payload) > MAX_HANDSHAKE_PAYLOAD[index]:
            raise LocalProtocolError(
                f"handshake message {index + 1} payload is {len(payload)} bytes, over the limit"
                f" of {MAX_HANDSHAKE_PAYLOAD[index]}"
            )
        try:
            message = bytes(self._connection.write_message(payload))
        except Exception as exc:
            self._failed = True
            # Our side wrote: a failure is a bad local key (e.g. a low-order responder key that
            # makes a DH output all zeros) or misuse, never the peer's bytes.
            raise LocalProtocolError(f"cannot write handshake message {index + 1}: {exc}") from None
        self._message_index = index + 1
        return message

    def read(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message; return its payload."""
        self._check_usable()
        index = self._message_index
        size = len(message)
        if size > MAX_NOISE_MESSAGE:
            self._failed = True
            raise RemoteProtocolError(
                f"handshake message {index + 1} is {size} bytes, over {MAX_NOISE_MESSAGE}"
            )
        if size < HANDSHAKE_OVERHEAD[index]:
            self._failed = True
            raise RemoteProtocolError(
                f"handshake message {index + 1} is truncated: {size} bytes, at least"
                f" {HANDSHAKE_OVERHEAD[index]} needed"
            )
        try:
            payload = bytes(self._connection.read_message(bytes(message)))
        except Exception:
            self._failed = True
            # InvalidTag (tampered, wrong key, wrong prologue), NoiseValueError or ValueError (a
            # malformed or low-order public key): each means the peer's message is not valid.
            raise AuthenticationError(
                f"handshake message {index + 1} failed to decrypt or authenticate"
            ) from None
        self._message_index = index + 1
        return payload

    def their_static_public(self) -> bytes | None:
        """The peer's static public key: known in advance by an initiator, learnt at message 3
        by a responder (None before)."""
        return remote_static_public_of(self._noise_handshake_state)

    def handshake_hash(self) -> bytes:
        if not self.complete:
            raise LocalProtocolError("the handshake hash exists only after message 3")
        value: bytes = self._connection.get_handshake_hash()
        return value

    def split(self) -> tuple[TransportCipher, TransportCipher]:
        """(send, receive) transport ciphers for our side, each at nonce 0."""
        if not self.complete or self._failed:
            raise LocalProtocolError("transport keys exist only after a complete handshake")
        protocol = self._connection.noise_protocol
        send, receive = protocol.cipher_state_encrypt, protocol.cipher_state_decrypt
        # noiseprotocol's CipherState: `k` its key, `cipher.cipher` the AEAD keyed with it.
        return (
            TransportCipher(send.k, send.n, aead=send.cipher.cipher),
            TransportCipher(receive.k, receive.n, aead=receive.cipher.cipher),
        )
