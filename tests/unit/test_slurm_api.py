"""The real Slurm client and the unit tests' fake both satisfy what the managers need.

mypy checks it (slurm/api.py's Protocols): a method renamed or a parameter changed on
either side fails here, not in production. A deliberately drifted fake proves the
check can fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from ..conftest import ROOT

SNIPPET = textwrap.dedent("""
    from tests.fake_slurm import FakeSlurm
    from wfm_orchestrator.slurm.api import SlurmApi, SlurmJobs, SlurmNodes
    from wfm_orchestrator.slurm.client import SlurmClient


    class Drifted(FakeSlurm):
        # A fake that forgot cancel's user and user_token.
        def cancel(self, job_id: int, signal: str = "SIGTERM") -> bool:  # type: ignore[override]
            return True


    def check(fake: FakeSlurm, real: SlurmClient, drifted: Drifted) -> None:
        fake_api: SlurmApi = fake
        real_api: SlurmApi = real
        fake_read: SlurmJobs = fake
        real_read: SlurmJobs = real
        fake_nodes: SlurmNodes = fake
        real_nodes: SlurmNodes = real
        drifted_api: SlurmApi = drifted  # the one error expected
""")


def test_client_and_fake_satisfy_the_slurm_protocols(tmp_path):
    """Exactly one mypy error: the drifted fake; the real client and the fake are accepted."""
    if shutil.which("mypy") is None and subprocess.run(
            [sys.executable, "-m", "mypy", "--version"], capture_output=True).returncode:
        pytest.fail("mypy is not installed: pip install -e '.[test]'")
    env = {**os.environ, "MYPYPATH": os.pathsep.join([os.path.join(ROOT, "src"), ROOT])}
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
         "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), "--config-file", "",
         "-c", SNIPPET],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    errors = [line for line in r.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, r.stdout + r.stderr
    assert '"Drifted", variable has type "SlurmApi"' in errors[0], errors
