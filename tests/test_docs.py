"""The docs tell the truth. The CLI reference (README table and
docs/cli.md) is generated from the click definitions and must be current; install lines
work from a checkout; every option `--help` shows is documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_cli_reference_is_generated_and_current():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "cli_reference.py"), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr


def test_every_option_of_every_command_is_in_the_docs():
    from stagedx.cli import _register, cli

    _register()
    doc = (ROOT / "docs" / "cli.md").read_text()
    for name, cmd in cli.commands.items():
        assert f"`stagedx {name}" in README, name
        for p in cmd.params:
            if isinstance(p, click.Option):
                for opt in p.opts:
                    assert f"`{opt}`" in doc, (name, opt)


def test_install_lines_work_from_a_checkout():
    """stagedx is not on a package index: every pip install of it is from the checkout ('.')."""
    installs = re.findall(r"pip install [^\n]*stagedx\[", README)
    assert installs == [], installs
    assert "pip install '.[export,cpu]'" in README


def test_engines_doc_example_fits_the_vendored_pair():
    doc = (ROOT / "docs" / "engines.md").read_text()
    for value in re.findall(r"--max-context (\d+)", doc):
        assert int(value) <= 1024
    assert "--device tensorrt" in doc


def test_readme_has_the_errors_and_safety_section():
    section = " ".join(README.split("## Errors and safety", 1)[1].split("\n## ", 1)[0].split())
    for needle in ("exit", "--force", "thread", "sha256", "inside the bundle folder"):
        assert needle in section, needle
