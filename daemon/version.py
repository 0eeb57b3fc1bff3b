"""The installed parley version, for ``parley --version`` and ``parley status``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def parley_version() -> str:
    """The version of the installed ``parley`` distribution ("unknown" in a bare checkout)."""
    try:
        return version("parley")
    except PackageNotFoundError:
        return "unknown"
