"""Fuzz every network-facing decoder: only parley's RemoteProtocolError may come out.

Budget (CI): per decoder, 120 random byte strings and 120 mutations of valid messages
(hypothesis; about 10 s in all). The bench runs 100,000 inputs per decoder with the same targets
(``parley bench reliability``).
"""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.rpc import InvalidRequest, RpcConnection, RpcRequest
from schemas.errors import RemoteProtocolError
from simulations.reliability.fuzz_targets import Target, fuzz_loop, mutate, targets

TARGETS = {target.name: target for target in targets()}
EXAMPLES = 120
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _only_remote_errors(target: Target, data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        target.feed(data)


def test_every_network_decoder_has_a_target() -> None:
    assert set(TARGETS) == {
        "frame_reader",
        "schema",
        "handshake_msg1",
        "handshake_msg2",
        "handshake_msg3",
        "handshake_first_transport",
        "session_wire",
        "session_plaintext",
        "bundle",
        "rpc",
    }


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_are_accepted(name: str) -> None:
    """The seeds are valid input: a target that rejected everything would prove nothing."""
    for seed in TARGETS[name].seeds:
        TARGETS[name].feed(seed)  # raises if the seed were invalid


@pytest.mark.parametrize("name", sorted(TARGETS))
@FUZZ_SETTINGS
@given(data=st.binary(max_size=4096))
def test_random_bytes(name: str, data: bytes) -> None:
    _only_remote_errors(TARGETS[name], data)


@pytest.mark.parametrize("name", sorted(TARGETS))
@FUZZ_SETTINGS
@given(rng=st.randoms(use_true_random=False))
def test_mutations_of_valid_messages(name: str, rng: random.Random) -> None:
    target = TARGETS[name]
    data = target.structured(rng) if target.structured and rng.random() < 0.5 else None
    _only_remote_errors(target, data if data is not None else mutate(rng, target.seeds))


def test_fuzz_loop_counts_unexpected_exceptions() -> None:
    """The bench's loop must be able to fail: a decoder raising a foreign error is counted."""

    def leaky(data: bytes) -> None:
        if data[:1] == b"\x00":
            raise RemoteProtocolError("fine")
        raise KeyError("leaked")

    report = fuzz_loop(Target("leaky", leaky, (b"\x01abc",)), 200)
    assert report.inputs == 200
    assert 0 < report.unexpected_exceptions <= 200
    assert report.first_unexpected is not None and "KeyError" in report.first_unexpected


def test_rpc_garbage_yields_error_replies_or_protocol_errors() -> None:
    """A request the RPC can answer becomes an error reply (InvalidRequest), not an exception:
    the connection survives it and serves the next request."""
    import msgpack

    connection = RpcConnection()
    connection.receive_data(
        msgpack.packb([0, 1, "x" * 100, []]) + msgpack.packb([0, 2, "status", []])
    )
    first = connection.next_event()
    assert isinstance(first, InvalidRequest) and first.error.code == "invalid_request"
    second = connection.next_event()
    assert isinstance(second, RpcRequest) and second.method == "status"
