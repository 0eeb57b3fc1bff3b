"""Test-wide setup: offline environment first, then the network guard."""

from __future__ import annotations

import common.offline  # noqa: F401  (before anything imports a dependency that phones home)

import sys

import pytest

from tests.netguard import NetworkGuard

GUARD = NetworkGuard()
sys.addaudithook(GUARD)


@pytest.fixture(autouse=True)
def _no_traffic_off_this_machine() -> None:
    before = len(GUARD.violations)
    yield
    new = GUARD.violations[before:]
    if new:
        pytest.fail("network guard: " + "; ".join(new), pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if GUARD.violations and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
