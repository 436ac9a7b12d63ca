"""The binary starts and describes itself."""

import subprocess


def test_help_lists_the_project(waveguide_bin):
    out = subprocess.run([waveguide_bin, "--help"], check=True, capture_output=True, text=True)
    assert "fleets of edge devices" in out.stdout
