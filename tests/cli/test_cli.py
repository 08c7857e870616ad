"""Every command the CLI lists must import and describe itself; no command may be a dead entry."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simpsonize.cli import COMMANDS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command):
    done = subprocess.run(
        [sys.executable, "-m", "simpsonize.cli", command, "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "usage: simpsonize " + command in done.stdout


def test_installed_console_script_reaches_the_cli():
    script = shutil.which("simpsonize", path=str(Path(sys.executable).parent))
    assert script, "the simpsonize console script is not installed next to this Python"
    done = subprocess.run([script, "bench", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_unknown_command_exits_2():
    done = subprocess.run(
        [sys.executable, "-m", "simpsonize.cli", "frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "invalid choice" in done.stderr
