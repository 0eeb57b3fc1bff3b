"""Structured logs: one line per event, ``key=value`` or JSON, never a traceback for the network.

Events are logged as ``log.info("handshake.done", peer=..., seconds=...)`` through
:func:`event`, so every line has an event name and flat fields that tools can grep or parse.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from daemon.errors import DaemonError

LOGGER_NAME = "parley"


def _format_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(ch.isspace() or ch in '"=' for ch in text):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={stamp}Z",
            f"level={record.levelname.lower()}",
            f"event={record.getMessage()}",
        ]
        parts += [f"{key}={_format_value(value)}" for key, value in fields.items()]
        if record.exc_info and record.levelno >= logging.ERROR:
            # Unexpected failures keep their cause on the same line, not a multi-line trace.
            parts.append(f"error={_format_value(repr(record.exc_info[1]))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        document = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            **{
                key: value if isinstance(value, int | float | bool | None) else str(value)
                for key, value in fields.items()
            },
        }
        if record.exc_info and record.levelno >= logging.ERROR:
            document["error"] = repr(record.exc_info[1])
        return json.dumps(document)


#: A log file is rotated when it reaches this size; this many old files are kept beside it
#: (``node.log.1`` … ``node.log.5``), so a node running for months holds at most ~60 MB of logs.
LOG_FILE_MAX_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5


class LogFileError(DaemonError):
    """The log file cannot be opened; ``str()`` is the one line to show."""


def configure_logging(
    *, log_format: str, level: str, stream: TextIO | None = None, log_file: Path | None = None
) -> None:
    """Route parley's logger to ``log_file`` (rotated) or else ``stream`` (stderr).

    Calling it again replaces the handlers: that is how ``SIGHUP`` applies a changed level,
    format or file, and reopens a file that ``logrotate`` or a user moved away.
    """
    logger = logging.getLogger(LOGGER_NAME)
    handler: logging.Handler
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(
                log_file, maxBytes=LOG_FILE_MAX_BYTES, backupCount=LOG_FILE_BACKUPS, delay=False
            )
        except OSError as error:
            raise LogFileError(f"{log_file}: cannot open the log file: {error.strerror}") from None
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler.setFormatter(JsonFormatter() if log_format == "json" else KeyValueFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def event(logger: logging.Logger, level: int, name: str, /, **fields: Any) -> None:
    """Log one event with flat fields."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})


def get_logger(component: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{component}")
