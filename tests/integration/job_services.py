"""A job's own services (#BB_LUA wfm_job, #18) on the mini-cluster: batch scripts written
as a user would, submitted with real ``sbatch``, and waits on the orchestrator's side
(tests/integration/test_job_services.py, tests/security/test_job_services.py)."""

from __future__ import annotations

import uuid

from tests.poll import poll_until

from .orchestrator import Orchestrator
from .session_manager import SPEC_DIR, free, write_spec

SBB = "type=SBB flavor=small targets=/nonexistent/a"
NFS = "type=NFS gssize=2G mountpoint=/tmp/wfm-jobsvc-mnt"  # noqa: S108 - a name, never mounted


def job_script(*lines: str, body: str = "true", sbatch: str = "") -> tuple[str, str]:
    """A batch script with ``#BB_LUA wfm_job <line>`` for each line, then ``body``; its
    path and the path of its output (both in /tmp, shared with the 24.11 tree)."""
    tag = uuid.uuid4().hex[:8]
    out = f"{SPEC_DIR}/jobsvc-{tag}.out"
    directives = "".join(f"#BB_LUA wfm_job {line}\n" for line in lines)
    path = write_spec(f"{SPEC_DIR}/jobsvc-{tag}.sh",
                      f"#!/bin/bash\n#SBATCH -o {out}\n{sbatch}{directives}{body}\n")
    return path, out


def service_name(job_id: int, short: str | None = None, user: str = "alice") -> str:
    return f"{user}_job{job_id}" + (f"_{short}" if short else "")


def statuses(orch: Orchestrator, job_id: int) -> list[dict]:
    """The statuses of job ``job_id``'s services (scope job), from the list."""
    code, listed = orch.get("/ephemeralservice/status")
    assert code == 200, listed
    return [s for s in listed if s.get("scope") == "job" and s.get("job_id") == job_id]


def wait_service(orch: Orchestrator, name: str, wanted: str, timeout: float = 120) -> dict:
    """The status of ``name`` once it is ``wanted``; it may not exist yet (the job's setup
    has not run: the status path then reads the name as a user id and answers a list)."""
    seen: list[object] = [None]

    def reached() -> dict | None:
        code, st = orch.get(f"/ephemeralservice/status/{name}")
        seen[0] = st
        return st if code == 200 and isinstance(st, dict) and st["status"] == wanted \
            else None

    return poll_until(reached, f"service {name}: expected {wanted}", timeout, 0.5,
                      last=lambda: f"{seen[0]}\n{orch.log()[-3000:]}")


def wait_free(orch: Orchestrator, before: dict, timeout: float = 120) -> None:
    """Until the datanodes' free cores are ``before`` again (every service ended)."""
    seen: list[dict] = [{}]

    def back() -> bool:
        seen[0] = free(orch)
        return seen[0] == before

    poll_until(back, f"datanodes free as before ({before})", timeout, 0.5,
               last=lambda: f"{seen[0]}\n{orch.log()[-3000:]}")
