"""The burst-buffer plugin's Lua unit tests, run by Debian's lua5.1."""

import os
import shutil
import subprocess

import pytest

from ..conftest import ROOT

LUA = shutil.which("lua5.1")


@pytest.mark.skipif(LUA is None, reason="lua5.1 is not installed (apt-get install lua5.1)")
def test_lua_plugin_suite_passes():
    """slurm_plugin/tests/run.lua: directive parsing, hooks, caching, idempotent teardown."""
    out = subprocess.run([LUA, os.path.join(ROOT, "slurm_plugin", "tests", "run.lua")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " 0 failed" in out.stdout
