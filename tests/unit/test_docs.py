"""The documentation and CI stay in step with the code."""

import fnmatch
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


def readme_layout() -> str:
    """The code block of the README's "## Layout" section."""
    section = read("README.md").split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def ignored(name: str) -> bool:
    """A top-level name the repository does not hold: hidden, or ignored by .gitignore."""
    if name.startswith("."):
        return True
    patterns = [p.strip().strip("/") for p in read(".gitignore").splitlines()
                if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def test_readme_layout_lists_every_module_and_directory():
    """Each module (name.py) and package (name/) of src/wfm_orchestrator, and each directory
    at the top of the repository, has its line in the README's layout."""
    layout = readme_layout()
    package = os.path.join(ROOT, "src", "wfm_orchestrator")
    missing = []
    for entry in sorted(os.listdir(package)):
        path = os.path.join(package, entry)
        if os.path.isdir(path) and os.path.exists(os.path.join(path, "__init__.py")):
            shown = f"{entry}/"
        elif entry.endswith(".py") and entry != "__init__.py":
            shown = entry
        else:
            continue
        if not re.search(rf"(?<![\w/]){re.escape(shown)}", layout):
            missing.append(f"src/wfm_orchestrator/{shown}")
    for entry in sorted(os.listdir(ROOT)):
        if os.path.isdir(os.path.join(ROOT, entry)) and not ignored(entry) and \
                not re.search(rf"^{re.escape(entry)}/", layout, re.M):
            missing.append(f"{entry}/")
    assert not missing, f"missing from the README's layout: {missing}"


def documents() -> list[str]:
    """README.md and every Markdown file under docs/, relative to the repository."""
    found = ["README.md"]
    for folder, _, files in os.walk(os.path.join(ROOT, "docs")):
        found += sorted(os.path.relpath(os.path.join(folder, f), ROOT) for f in files
                        if f.endswith(".md"))
    return found


# [text](target) and [text]: target; a code span naming a path that climbs out of the
# document's folder into another one (`../dir/file`; a bare `../x` is an example string).
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*(\S+)", re.M)
CLIMBING_PATH = re.compile(r"`((?:\.\./)+[\w.-]+/[^`\s]+)`")


def relative_links(text: str) -> list[str]:
    """The relative link targets of a Markdown text (no URL, no in-page anchor)."""
    targets = [a or b for a, b in LINK.findall(text)] + CLIMBING_PATH.findall(text)
    return [t.split("#", 1)[0] for t in targets
            if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


def test_relative_links_resolve_to_files_inside_the_repository():
    """Every relative link of README.md and docs/ names a file or directory of the
    repository (the spec included: docs/spec/), never one beside it."""
    root = os.path.realpath(ROOT)
    broken = []
    for doc in documents():
        base = os.path.dirname(os.path.join(root, doc))
        for target in relative_links(read(doc)):
            path = os.path.realpath(os.path.join(base, target))
            if os.path.commonpath([root, path]) != root:
                broken.append(f"{doc}: {target} (outside the repository)")
            elif not os.path.exists(path):
                broken.append(f"{doc}: {target} (no such file)")
    assert not broken, broken


def test_link_reader_finds_relative_links_and_skips_urls():
    text = ("see [a](docs/a.md) and [b](<../b.md> \"title\"), [c](#anchor), "
            "[d](https://x.org/y), [e](f.md#part), `../shared/spec.txt`, `../x`\n[ref]: g/h.txt\n")
    assert relative_links(text) == ["docs/a.md", "../b.md", "f.md", "g/h.txt",
                                    "../shared/spec.txt"]


def test_every_threat_model_row_names_tests_that_exist():
    """docs/security.md's threat model: each row's tests are real test functions (a renamed
    or deleted test leaves its row unproven, and this fails)."""
    text = read(os.path.join("docs", "security.md"))
    table = text[text.index(". Threat model\n"):]
    rows = re.findall(r"^\|[^\n]*\| (tests/[^|\n]+) \|$", table, re.M)
    assert len(rows) >= 10, rows
    missing = []
    for cell in rows:
        for part in cell.split(";"):
            path, _, names = part.strip().partition("::")
            source = read(path)
            for name in names.split(", "):
                if f"def {name.strip().lstrip(':')}(" not in source:
                    missing.append(f"{path}::{name.strip()}")
    assert not missing, f"threat-model rows name tests that do not exist: {missing}"


def threat_model_rows() -> list[list[str]]:
    """The cells of each row of docs/security.md's threat-model table (header excluded)."""
    text = read(os.path.join("docs", "security.md"))
    table = text[text.index(". Threat model\n"):]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert lines[1].startswith("|---"), lines[:2]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]


def test_every_threat_model_row_names_a_security_suite_test():
    """Each row's test cell names at least one test of the mini-cluster security suite
    (tests/security/: the attack staged for real, alice against bob), beside its unit
    tests; the names themselves are checked by the test above."""
    rows = threat_model_rows()
    assert len(rows) >= 28, len(rows)
    missing = [" | ".join(cells[:3]) for cells in rows
               if not re.search(r"(^|; )tests/security/test_\w+\.py::\w+", cells[-1])]
    assert not missing, f"threat-model rows without a tests/security/ test: {missing}"
