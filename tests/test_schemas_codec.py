"""The Cap'n Proto codec: round trips, strict decoding, and no dependency exception leaking."""

from __future__ import annotations

import math
import struct

import capnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import codec
from schemas.codec import NoBundle, Rekey, decode, encode
from schemas.errors import LocalProtocolError, RemoteProtocolError
from schemas.messages import (
    Bye,
    ByeReason,
    CallEnd,
    CallStart,
    Caption,
    Chunk,
    CodecFrames,
    CodecSettings,
    Hello,
    Ping,
    Pong,
    TensorBlob,
    TensorDtype,
    VoiceTraits,
    WeightsBundle,
    WordTime,
)

# An independent reader of the same schema file, through pycapnp's plain attribute API, used to
# build hostile messages that our encoder would refuse to produce.
capnp.remove_import_hook()
SCHEMA = capnp.load(str(codec._SCHEMA_PATH))

u8 = st.integers(0, 2**8 - 1)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
name = st.text(max_size=24)
digest = st.binary(max_size=codec.MAX_HASH_BYTES)
voice = st.builds(VoiceTraits, median_pitch_hz=finite, speaking_rate_wps=finite)
tensor = st.builds(
    TensorBlob,
    name=name,
    shape=st.lists(u32, max_size=codec.MAX_TENSOR_RANK).map(tuple),
    dtype=st.sampled_from(TensorDtype),
    scale=finite,
    zero_point=finite,
    data=st.binary(max_size=200),
)
bundle = st.builds(
    WeightsBundle,
    architecture_id=name,
    round=u64,
    sample_count=u64,
    compression=st.sampled_from(["none", "zlib", "lzma"]),
    tensors=st.lists(tensor, max_size=4).map(tuple),
    content_hash=digest,
)
hello = st.builds(
    Hello,
    protocol_version=u16,
    capabilities=st.lists(name, max_size=5).map(tuple),
    codec_architecture=name,
    codec_version_hash=digest,
)
messages = st.one_of(
    hello,
    bundle,
    st.builds(
        CallStart,
        call_id=u64,
        speaker_language=name,
        listener_language=name,
        codec=st.builds(
            CodecSettings,
            architecture_id=name,
            codec_version_hash=digest,
            latent_dim=u32,
            latent_bits=u8,
            frame_rate_hz=finite,
        ),
        voice=voice,
    ),
    st.builds(CodecFrames, seq=u64, start_time_s=finite, frame_count=u32, payload=st.binary()),
    st.builds(
        Caption,
        seq=u64,
        start_s=finite,
        end_s=finite,
        text=st.text(max_size=80),
        language=name,
        final=st.booleans(),
        words=st.lists(
            st.builds(WordTime, word=name, start_s=finite, end_s=finite), max_size=5
        ).map(tuple),
        voice=voice,
    ),
    st.builds(CallEnd, call_id=u64, reason=name, summary_json=st.text(max_size=200)),
    st.builds(Ping, nonce=u64),
    st.builds(Pong, nonce=u64),
    st.builds(Bye, reason=st.sampled_from(ByeReason)),
    st.builds(Chunk, message_id=u32, index=u32, count=u32, data=st.binary(max_size=100)),
    st.builds(Rekey, epoch=u32),
    st.just(NoBundle()),
)


def _decode_or_remote_error(data: bytes) -> None:
    """The decoder's contract on hostile input: a message, or RemoteProtocolError; nothing else."""
    try:
        result = decode(data)
    except RemoteProtocolError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(result, codec.WireMessage)


@settings(max_examples=400, deadline=None)
@given(messages)
def test_round_trip(message: codec.WireMessage) -> None:
    assert decode(encode(message)) == message


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_remote_error(data: bytes) -> None:
    _decode_or_remote_error(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_mutated_valid_messages_only_remote_error(
    message: codec.WireMessage, data: st.DataObject
) -> None:
    """Valid-looking input: a real encoding with bytes overwritten, then maybe truncated."""
    encoded = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(u8)
    cut = data.draw(st.integers(0, len(encoded)))
    _decode_or_remote_error(
        bytes(encoded[: cut - cut % 8] if data.draw(st.booleans()) else encoded)
    )


def _raw_envelope(version: int = 1) -> object:
    envelope = SCHEMA.Envelope.new_message()
    envelope.version = version
    return envelope


def test_unknown_union_tag_is_named() -> None:
    data = bytearray(encode(Ping(nonce=7)))
    # Segment table (8 bytes), root pointer (8); the union discriminant follows the UInt16
    # version in the root struct's data section.
    struct.pack_into("<H", data, 18, 999)
    with pytest.raises(RemoteProtocolError, match="unknown union tag"):
        decode(bytes(data))


def test_wrong_version_is_named() -> None:
    envelope = _raw_envelope(version=2)
    envelope.body.init("ping").nonce = 1  # type: ignore[attr-defined]
    with pytest.raises(RemoteProtocolError, match="version 2, expected 1"):
        decode(envelope.to_bytes())  # type: ignore[attr-defined]


def test_oversize_text_is_named() -> None:
    envelope = _raw_envelope()
    hello_ = envelope.body.init("hello")  # type: ignore[attr-defined]
    hello_.protocolVersion = 1
    caps = hello_.init("capabilities", 1)
    caps[0] = "x" * (codec.MAX_NAME_CHARS + 1)
    with pytest.raises(RemoteProtocolError, match="capability is 257 characters"):
        decode(envelope.to_bytes())  # type: ignore[attr-defined]


def test_too_many_list_items_is_named() -> None:
    envelope = _raw_envelope()
    caption = envelope.body.init("caption")  # type: ignore[attr-defined]
    caption.init("words", codec.MAX_WORDS_PER_CAPTION + 1)
    with pytest.raises(RemoteProtocolError, match="2049 words"):
        decode(envelope.to_bytes())  # type: ignore[attr-defined]


def test_non_finite_float_is_named() -> None:
    envelope = _raw_envelope()
    frames = envelope.body.init("codecFrames")  # type: ignore[attr-defined]
    frames.startTimeS = math.nan
    with pytest.raises(RemoteProtocolError, match="start time is not a finite number"):
        decode(envelope.to_bytes())  # type: ignore[attr-defined]


def test_unknown_enum_values_are_named() -> None:
    envelope = _raw_envelope()
    envelope.body.init("bye").reason = 77  # type: ignore[attr-defined]
    with pytest.raises(RemoteProtocolError, match="unknown Bye reason 77"):
        decode(envelope.to_bytes())  # type: ignore[attr-defined]

    envelope = _raw_envelope()
    tensors = envelope.body.init("weightsBundle").init("tensors", 1)  # type: ignore[attr-defined]
    tensors[0].dtype = 9
    with pytest.raises(RemoteProtocolError, match="unknown tensor dtype 9"):
        decode(envelope.to_bytes())  # type: ignore[attr-defined]


def test_traversal_limit_violation_is_a_remote_error(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Caption(1, 0.0, 1.0, "t" * 800, "en", True, (), VoiceTraits(1.0, 1.0)))
    monkeypatch.setattr(codec, "TRAVERSAL_WORDS_PER_INPUT_WORD", 0)
    monkeypatch.setattr(codec, "TRAVERSAL_SLACK_WORDS", 8)
    with pytest.raises(RemoteProtocolError, match="traversal limit"):
        decode(data)


def test_nesting_limit_violation_is_a_remote_error(monkeypatch: pytest.MonkeyPatch) -> None:
    words = (WordTime("a", 0.0, 1.0),)
    data = encode(Caption(1, 0.0, 1.0, "a", "en", True, words, VoiceTraits(1.0, 1.0)))
    monkeypatch.setattr(codec, "NESTING_LIMIT", 2)
    with pytest.raises(RemoteProtocolError, match="nesting"):
        decode(data)


def test_length_not_word_aligned_and_oversize() -> None:
    with pytest.raises(RemoteProtocolError, match="multiple of 8"):
        decode(b"\x00" * 12)
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        decode(b"\x00" * (codec.MAX_ENVELOPE_BYTES + 8))


def test_encoding_refuses_what_the_peer_would_refuse() -> None:
    with pytest.raises(LocalProtocolError, match="Hello capability"):
        encode(Hello(1, ("x" * 300,), "a", b""))
    with pytest.raises(LocalProtocolError, match="not a finite number"):
        encode(CodecFrames(1, math.inf, 1, b""))
    with pytest.raises(LocalProtocolError, match="cannot encode Ping"):
        encode(Ping(nonce=-1))
    with pytest.raises(LocalProtocolError, match="not a parley wire message"):
        encode("hello")  # type: ignore[arg-type]
