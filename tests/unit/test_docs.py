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


def script_steps(text: str) -> list[str]:
    """The commands a bash script runs, in order: no comments, no shell set-up (set, cd,
    export, variable assignments), "$REPO/" dropped from paths."""
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or re.match(r"(set|cd|export)\b|\w+=", line):
            continue
        steps.append(line.replace('"$REPO/', "").replace('"', ""))
    return steps


def test_ci_runs_the_readme_commands():
    """.ci/run = the set-up of the README's first command (deploy/run-dev, without starting
    the service) then the README's second command, exactly."""
    head = read("README.md").splitlines()[:12]
    setup, test = [line.strip() for line in head if line.startswith("    ")][:2]
    assert setup == "sudo deploy/run-dev", setup
    run_dev = script_steps(read("deploy", "run-dev"))
    assert run_dev[-1].startswith("exec ") and "wfm-orchestrator" in run_dev[-1] and \
        "serve" in run_dev[-1], run_dev
    ci = script_steps(read(".ci", "run"))
    assert ci == [*run_dev[:-1], test.removeprefix("sudo ")], (ci, run_dev, test)


def test_ci_names_tests_that_exist():
    """Every test .ci/run's comments name (path, or path::function) exists."""
    ci = read(".ci", "run")
    named = re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", ci)
    assert named, "the comment of .ci/run names the test that keeps it equal to the README"
    for path, function in named:
        assert os.path.isfile(os.path.join(ROOT, path)), f".ci/run names {path}: no such file"
        if function:
            assert re.search(rf"^def {function}\(", read(path), re.M), \
                f".ci/run names {path}::{function}: no such test"
