"""``parley bench echo``: echo return loss enhancement of the call's echo canceller.

Our TTS (piper, English: the translated speech a node plays) through a synthetic room impulse
response, near-end speech (espeak-ng, Portuguese) over its second half, a little noise; the
canceller (:mod:`media.echo`) with the played signal as reference. Reports on the evaluation
sentences (the tests use the tuning ones). JSON: ``echo.erle_db`` (the issue's
``two_way.erle_db`` figure, goal >= 25 dB), the same measure with cancellation off (~0 dB), and
how much of the near-end voice survives double talk.
"""

from __future__ import annotations

import common.offline  # noqa: F401

import json
import os
from pathlib import Path
from typing import Any

from common.atomic import write_atomic
from media.echo import measure_erle


def run(json_path: Path | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "echo": measure_erle(),
        "machine": {"cpus": os.cpu_count(), "note": "offline signal; no sound device involved"},
    }
    if json_path is not None:
        write_atomic(json_path, json.dumps(result, indent=2).encode())
    return result
