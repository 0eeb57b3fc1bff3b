"""The errors of placing and holding a call (one root: :class:`CallError`)."""

from __future__ import annotations

__all__ = ["CallError", "CallRefusedError"]


class CallError(Exception):
    """A call could not be placed or was ended; ``str()`` is the one line a user sees."""


class CallRefusedError(CallError):
    """The callee ended the call with a reason (refusal, a limit, a failure on its side)."""
