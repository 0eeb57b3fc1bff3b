from __future__ import annotations

import io
import json
import logging
import shlex

from daemon.logs import configure_logging, event, get_logger


def _capture(log_format: str) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(log_format=log_format, level="debug", stream=stream)
    return stream


def test_key_value_lines_parse_back():
    stream = _capture("keyvalue")
    event(get_logger("test"), logging.INFO, "peer.seen", name="alice laptop", port=7405, ok=True)
    line = stream.getvalue().strip()
    assert "\n" not in line
    fields = dict(part.split("=", 1) for part in shlex.split(line))
    assert fields["event"] == "peer.seen"
    assert fields["name"] == "alice laptop"
    assert fields["port"] == "7405" and fields["level"] == "info"


def test_json_lines_and_no_tracebacks():
    stream = _capture("json")
    logger = get_logger("test")
    try:
        raise ConnectionResetError("peer went away")
    except ConnectionResetError:
        logger.error("session.failed", exc_info=True, extra={"fields": {"peer": "abc"}})
    (line,) = stream.getvalue().strip().splitlines()
    document = json.loads(line)
    assert document["event"] == "session.failed"
    assert document["peer"] == "abc"
    assert "peer went away" in document["error"]
    assert "Traceback" not in line


def test_level_filters():
    stream = _capture("keyvalue")
    configure_logging(log_format="keyvalue", level="warning", stream=stream)
    event(get_logger("test"), logging.INFO, "quiet")
    assert stream.getvalue() == ""
