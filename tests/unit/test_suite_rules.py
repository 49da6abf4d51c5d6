"""The test suite's own rules: fixtures only in conftest.py, waits through tests/poll.py,
markers by what a test needs."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT, mark_slurm_users

TESTS = Path(ROOT) / "tests"

def is_fixture(decorator: ast.expr) -> bool:
    """@pytest.fixture, @pytest.fixture(...), @fixture, @fixture(...)."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Attribute) and target.attr == "fixture") or \
        (isinstance(target, ast.Name) and target.id == "fixture")


def fixtures_defined(tree: ast.Module) -> set[str]:
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and any(is_fixture(d) for d in node.decorator_list)}


def module_path(importer: Path, node: ast.ImportFrom) -> Path | None:
    """The file an ``from X import ...`` inside the tests reads, if it is one of ours."""
    if node.level:
        base = importer.parent
        for _ in range(node.level - 1):
            base = base.parent
    elif node.module and node.module.split(".")[0] == "tests":
        base = Path(ROOT)
    else:
        return None
    parts = (node.module or "").split(".") if node.module else []
    candidate = base.joinpath(*parts)
    for path in (candidate.with_suffix(".py"), candidate / "__init__.py"):
        if path.is_file():
            return path
    return None


def fixture_registrations(path: Path, defined: dict[Path, set[str]]) -> set[str]:
    """Fixtures ``path`` defines or registers: decorated functions, fixtures imported from
    another module of the suite, ``name = module.fixture`` aliases."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = fixtures_defined(tree)
    modules: dict[str, Path] = {}  # local name -> module of the suite (from tests import x)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            source = module_path(path, node)
            if source is None:
                continue
            found |= {a.name for a in node.names} & defined.get(source, set())
            if source.name == "__init__.py":
                modules |= {a.asname or a.name: source.parent / f"{a.name}.py"
                            for a in node.names}
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute) \
                and isinstance(node.value.value, ast.Name) \
                and node.value.attr in defined.get(modules.get(node.value.value.id), set()):
            found |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return found


def suite_modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def violations() -> dict[str, set[str]]:
    """{module: fixtures} for every module of tests/ other than a conftest.py."""
    modules = suite_modules()
    defined = {p: fixtures_defined(ast.parse(p.read_text(encoding="utf-8"))) for p in modules}
    out = {}
    for path in modules:
        if path.name == "conftest.py":
            continue
        found = fixture_registrations(path, defined)
        if found:
            out[path.relative_to(ROOT).as_posix()] = found
    return out


def test_fixtures_are_defined_only_in_conftest_files():
    """A fixture lives in the conftest.py of its directory, never in a test or helper module
    (defined, imported or aliased there)."""
    found = violations()
    assert not found, (
        "fixtures outside conftest.py (move each into the conftest.py of its directory: "
        f"tests/, tests/unit/, tests/integration/ or tests/reliability/): {found}")


def test_the_rule_sees_a_fixture_defined_imported_or_aliased(tmp_path):
    """The detector itself: the three ways a module registers a fixture, none in plain code."""
    (tmp_path / "helpers.py").write_text(
        "import pytest\n\n@pytest.fixture(scope='module')\ndef shared():\n    return 1\n")
    module = tmp_path / "test_x.py"
    module.write_text(
        "import pytest\nfrom pytest import fixture\nfrom . import helpers\n"
        "from .helpers import shared\n"
        "alias = helpers.shared\npytestmark = pytest.mark.shared\n\n"
        "@fixture\ndef plain():\n    return 2\n\n"
        "@pytest.fixture\nasync def later():\n    return 3\n\n"
        "def helper():\n    return 4\n\n"
        "def test_it(shared):\n    assert shared\n")
    (tmp_path / "__init__.py").write_text("")
    defined = {tmp_path / "helpers.py": {"shared"}, module: set()}
    assert fixture_registrations(module, defined) == {"plain", "later", "shared", "alias"}


# Loops on time.monotonic() that are not waits for a condition: they run for a set time.
TIMED_RUNS = {
    "tests/reliability/test_concurrency.py": 1,  # each client's traffic until the run ends
    "tests/reliability/test_slurm_faults.py": 1,  # requests during a slurmrestd outage
    "tests/unit/test_server_loop.py": 1,  # read_for: what a socket sends in a set time
    "tests/ha/cluster.py": 2,  # Writer: writes until stopped, each acknowledgement timed
    "tests/ha/test_store_failover.py": 1,  # StoreWriter: the same, through the store
    "tests/ha/test_leader_failover.py": 2,  # Client: requests until stopped, acks timed
}


def deadline_loops(tree: ast.Module) -> int:
    """How many ``while`` loops read time.monotonic(): each is a hand-written deadline."""
    def reads_the_clock(loop: ast.While) -> bool:
        return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                   and n.func.attr == "monotonic" for n in ast.walk(loop))

    return sum(isinstance(n, ast.While) and reads_the_clock(n) for n in ast.walk(tree))


def test_waits_go_through_poll_until():
    """No module of the suite but tests/poll.py loops on a deadline of its own."""
    found = {}
    for path in suite_modules():
        module = path.relative_to(ROOT).as_posix()
        loops = deadline_loops(ast.parse(path.read_text(encoding="utf-8")))
        if loops and module != "tests/poll.py":
            found[module] = loops
    assert found == TIMED_RUNS, (
        "a loop on time.monotonic() outside tests/poll.py: wait with poll_until(probe, what, "
        f"timeout, interval, last) (or poll) instead; found {found}, allowed {TIMED_RUNS}")


def test_the_deadline_loop_detector_sees_both_shapes():
    tree = ast.parse(
        "import time\n"
        "def a():\n    deadline = time.monotonic() + 5\n"
        "    while time.monotonic() < deadline:\n        time.sleep(1)\n"
        "def b():\n    deadline = time.monotonic() + 5\n    while True:\n"
        "        if time.monotonic() >= deadline:\n            raise AssertionError\n"
        "def c():\n    while True:\n        break\n")
    assert deadline_loops(tree) == 2


class Item:
    """What the marker hook reads of a collected test."""

    def __init__(self, *fixturenames: str):
        self.fixturenames = list(fixturenames)
        self.markers: list[str] = []

    def add_marker(self, mark) -> None:
        self.markers.append(mark.name)


def test_every_test_using_the_mini_cluster_is_marked_integration():
    """`integration` = needs Slurm: given to a test whose fixtures include slurm_cluster (so
    -m "not integration" runs without the mini-cluster), and to no other."""
    slurm, via_orchestrator, server, plain = (
        Item("slurm_cluster"), Item("orchestrator", "slurm_cluster", "tmp_path"),
        Item("server", "tmp_path_factory"), Item())
    mark_slurm_users([slurm, via_orchestrator, server, plain])
    assert slurm.markers == ["integration"] and via_orchestrator.markers == ["integration"]
    assert server.markers == [] and plain.markers == []


@pytest.mark.parametrize("marker", ["integration", "server", "reliability", "ha"])
def test_markers_are_registered_and_documented(marker):
    """Each marker is registered (pytest runs with --strict-markers) and explained."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as fh:
        assert f'"{marker}: ' in fh.read()
    with open(os.path.join(ROOT, "docs", "testing.md"), encoding="utf-8") as fh:
        assert f"`{marker}`" in fh.read()


def test_an_unregistered_marker_is_an_error(tmp_path):
    """With the project's pytest settings a misspelt marker stops the run (it does not just
    warn, and select nothing under -m)."""
    test = tmp_path / "test_typo.py"
    test.write_text("import pytest\n\npytestmark = pytest.mark.integratoin\n\n"
                    "def test_x():\n    pass\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-c", os.path.join(ROOT, "pyproject.toml"), "--rootdir", str(tmp_path),
                          str(test)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0, out.stdout
    assert "'integratoin' not found in `markers`" in out.stdout, out.stdout
