"""The documentation and CI stay in step with the code."""

import os
import re

from wfm_orchestrator.config import SETTINGS

from ..conftest import ROOT


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as fh:
        return fh.read()


def test_every_setting_is_documented_with_its_default():
    """docs/configuration.md has a row for each setting, with the code's default."""
    doc = read("docs", "configuration.md")
    for key, setting in SETTINGS.items():
        row = re.search(rf"^\| `{key}` \| (.*?) \|", doc, re.M)
        assert row, f"setting {key} is not documented"
        shown = row.group(1)
        assert (f"`{setting.default}`" == shown) or (not setting.default and "empty" in shown), \
            (key, shown)


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    """The README's first lines give set-up+run and test; .ci/run runs that test command."""
    head = read("README.md").splitlines()[:12]
    commands = [line.strip() for line in head if line.startswith("    ") or
                line.startswith("sudo ")]
    assert len(commands) == 2, head
    setup, test = commands
    assert "deploy/run-dev" in setup
    ci = read(".ci", "run")
    test_cmd = test.removeprefix("sudo ").strip()
    assert test_cmd in [line.strip() for line in ci.splitlines()], (test_cmd, ci)
