"""What a start imports: a Resource-Manager-only server with auth = none starts without
the HTTP client for Slurm (requests, urllib3) and the token verifier's JWT and crypto
modules (~70 ms of its restart: benchmarks/README.md, "Scale (issue #21): memory and
restart"); they are imported when a SlurmClient is made, or a token checked. An SQLite
state_db never imports psycopg (the PostgreSQL engine's driver)."""

from __future__ import annotations

import json
import subprocess
import sys

from ..conftest import SMALL_CONF, server_env

LAZY = ("requests", "urllib3", "jwt", "cryptography", "psycopg")
PROBE = """
import json, sys
from wfm_orchestrator.cli import build_all
from wfm_orchestrator.config import load_config
built = build_all(load_config(sys.argv[1]))
built[-1].close()
at_start = sorted(m for m in {lazy} if m in sys.modules)
from wfm_orchestrator.slurm import SlurmClient
SlurmClient("http://127.0.0.1:1").close()
print(json.dumps([at_start, sorted(m for m in {lazy} if m in sys.modules)]))
"""


def test_a_resource_manager_only_start_imports_no_slurm_client_nor_jwt(tmp_path):
    conf = tmp_path / "wfm.conf"
    conf.write_text(SMALL_CONF.format(state_db=tmp_path / "state.db", queue_policy="fifo"))
    out = subprocess.run([sys.executable, "-c", PROBE.format(lazy=LAZY), str(conf)],
                         env=server_env(), capture_output=True, text=True, timeout=120, check=True)
    at_start, after_client = json.loads(out.stdout.splitlines()[-1])
    assert at_start == []
    assert {"requests", "urllib3"} <= set(after_client)  # the probe sees an import
