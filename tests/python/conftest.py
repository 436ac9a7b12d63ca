"""Shared fixtures for the Python-side checks: where the waveguide binary is."""

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def waveguide_bin() -> str:
    path = os.environ.get("WAVEGUIDE_BIN", str(ROOT / "target" / "debug" / "waveguide"))
    if not os.path.exists(path):
        pytest.fail(f"waveguide binary not found at {path}: run ./scripts/test")
    return path
