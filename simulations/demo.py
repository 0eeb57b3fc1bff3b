"""``make demo``: the main job on the embedded defaults.

For now: two node homes in a temporary folder, each with a fresh identity, printed. Later
issues turn this into a real two-node call.
"""

from __future__ import annotations

import daemon.offline  # noqa: F401

import tempfile
from pathlib import Path

from daemon.cli import main as parley


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="parley-demo-"))
    for name in ("alice", "bob"):
        print(f"== {name}")
        parley(["init", "--home", str(root / name)])
        parley(["id", "--home", str(root / name)])
    print(f"node homes are in {root}")


if __name__ == "__main__":
    main()
