"""Markers shared by test modules."""

from __future__ import annotations

import shutil

import pytest

#: Translation runs through apertium (a Debian package, in the Makefile's DEB_PACKAGES).
needs_apertium = pytest.mark.skipif(
    shutil.which("apertium") is None, reason="Debian package apertium missing"
)
