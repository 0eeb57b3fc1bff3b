"""The daemon's one error root, and the exit codes the command line maps errors to.

:class:`DaemonError` is the root of the failures the daemon raises for bad input or a bad
environment (a config file, a database, a socket in use); each carries the exit code the
command line ends with, by type: :data:`EXIT_USER_ERROR` unless a subclass says the failure is
one of the moment (:data:`EXIT_RUNTIME_FAILURE`: the port is taken, a node already runs).
``daemon.cli`` shows any :class:`common.errors.ParleyError` as one line and exits with
:attr:`DaemonError.exit_code` (``EXIT_USER_ERROR`` for the other packages' roots).
"""

from __future__ import annotations

from typing import Final

from common.errors import ParleyError

EXIT_RUNTIME_FAILURE: Final = 1
EXIT_USER_ERROR: Final = 2
EXIT_NOT_RUNNING: Final = 3


class DaemonError(ParleyError):
    """Root of the daemon's expected failures; ``exit_code`` is what the CLI exits with."""

    exit_code: int = EXIT_USER_ERROR


class RuntimeFailure(DaemonError):
    """A failure of the moment rather than of the input (exit code 1)."""

    exit_code: int = EXIT_RUNTIME_FAILURE


__all__ = [
    "EXIT_NOT_RUNNING",
    "EXIT_RUNTIME_FAILURE",
    "EXIT_USER_ERROR",
    "DaemonError",
    "RuntimeFailure",
]
