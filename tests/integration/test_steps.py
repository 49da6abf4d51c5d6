"""Workflow steps end to end: a real orchestrator, the mini-cluster, the burst-buffer plugin.

step/launch -> the service is checked -> stage-in mover (HDD -> NVMe) -> the
step's job as the user with #BB_LUA wfm_use -> stage-out mover (NVMe -> HDD),
progress in the status, COMPLETED; a failed stage-in, an abort, unknown and
foreign services, and a user trying to make the orchestrator read a file he
cannot read.
"""

from __future__ import annotations

import os
import pwd
import uuid

import pytest

from tests.integration.minicluster import user_tier_dir
from tests.poll import poll_until

pytestmark = pytest.mark.integration
NVME = "/var/tmp/wfm-tiers/nvme"  # noqa: S108 - the mini-cluster's tier roots
HDD = "/var/tmp/wfm-tiers/hdd"  # noqa: S108
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def unique(prefix: str, user: str = "alice") -> str:
    return f"{user}_{prefix}_{uuid.uuid4().hex[:8]}"


def wait_step(orch, name: str, wanted: set[str], timeout: float = 120,
              interval: float = 0.5) -> dict:
    """The step's status once it is one of ``wanted``; fails with the last one and the log."""
    seen: list[dict | None] = [None]

    def reached() -> dict | None:
        code, seen[0] = orch.get(f"/step/status/{name}")
        assert code == 200, seen[0]
        return seen[0] if seen[0]["status"] in wanted else None

    return poll_until(reached, f"step {name}: expected {'/'.join(sorted(wanted))}", timeout,
                      interval, last=lambda: f"{seen[0]}\n{orch.log()[-4000:]}")


def launch(orch, body: dict) -> None:
    code, answer = orch.post("/step/launch", body)
    assert code == 200, answer


def as_user(path: str, user: str, mode: int = 0o644) -> None:
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, mode)


def make_dir(path: str, user: str) -> None:
    os.makedirs(path, exist_ok=True)
    as_user(path, user, 0o755)


# sbb: an ALLOCATED SBB service of alice for the module (conftest.py).


def test_step_with_service_stages_in_runs_as_user_and_stages_out(orchestrator, sbb):
    """copy HDD->NVMe at start, the job (as alice, using the SBB) writes a result on NVMe,
    move NVMe->HDD at stop: files end on HDD, progress shown, COMPLETED."""
    step = unique("run")
    area = uuid.uuid4().hex[:10]
    # Elements are relative to alice's directory of each tier (<root>/alice/).
    hdd = f"{user_tier_dir(HDD, 'alice')}/{area}"
    make_dir(hdd, "alice")
    with open(f"{hdd}/in.dat", "w") as fh:
        fh.write("input data\n" * 1000)
    as_user(f"{hdd}/in.dat", "alice")
    nvme = f"{NVME}/alice/{area}"
    launch(orchestrator, {
        "name": step, "user": "alice", "location": ["loc1"],
        "command_env": f"AREA={nvme} GREETING='hello world'",
        "command": "sbatch -N 1 -n 1 --mem 100M -t 5 -o /tmp/" + step + ".out "
                   "--wrap 'test -s $AREA/in.dat && { id -un; echo $GREETING; "
                   "echo \"svc=$$WFM_SERVICE_0_NAME\"; } > $AREA/out.txt'",
        "services": [{"name": sbb, "hint": "RW", "datamovers": [
            {"name": "dm_in", "trigger": "step_start", "target": "NVMe", "operation": "copy",
             "elements": [f"HDD:{area}/in.dat"]},
            {"name": "dm_out", "trigger": "step_stop", "target": "HDD", "operation": "move",
             "elements": [f"NVMe:{area}/*"]},
        ]}],
    })
    st = wait_step(orchestrator, step, FINAL, 180, interval=0.3)
    assert st["status"] == "COMPLETED", f"{st}\n{orchestrator.log()[-4000:]}"
    assert "stage-out mover dm_out done: done: move 2/2 files, 100%" in st["detail"], st
    # The files ended where they should: the input back on HDD, the result moved there.
    with open(f"{hdd}/out.txt") as fh:
        lines = fh.read().splitlines()
    assert lines[0] == "alice" and lines[1] == "hello world", lines
    assert lines[2] == f"svc={sbb}", lines  # exported by the plugin for wfm_use
    assert os.stat(f"{hdd}/out.txt").st_uid == pwd.getpwnam("alice").pw_uid
    assert os.path.exists(f"{hdd}/in.dat")
    assert not os.path.exists(f"{nvme}/in.dat") and not os.path.exists(f"{nvme}/out.txt")
    # The user list and the all-steps list hold it too.
    code, mine = orchestrator.get("/step/status/alice")
    assert code == 200 and any(s["name"] == step for s in mine)
    code, every = orchestrator.get("/step/status")
    assert code == 200 and any(s["name"] == step for s in every)


def test_failed_stage_in_fails_the_step_and_its_job_never_runs(orchestrator, sbb):
    """A stage-in element that does not exist: the mover fails, the step FAILS with the
    mover's reason, and the step's job is cancelled before it runs."""
    step = unique("badin")
    user_tier_dir(HDD, "alice")  # her directory exists: the element itself matches nothing
    marker = f"/tmp/{step}.ran"  # noqa: S108 - written by alice's job on a node
    launch(orchestrator, {
        "name": step, "user": "alice",
        "command": f"--wrap 'touch {marker}'",
        "services": [{"name": sbb, "datamovers": [
            {"name": "dm_in", "trigger": "step_start", "target": "NVMe", "operation": "copy",
             "elements": ["HDD:does-not-exist/*.dat"]},
            {"name": "dm_out", "trigger": "step_stop", "target": "HDD", "operation": "move",
             "elements": ["NVMe:does-not-exist/*"]},
        ]}],
    })
    st = wait_step(orchestrator, step, FINAL, 120)
    assert st["status"] == "FAILED", st
    assert "stage-in mover dm_in failed" in st["detail"], st
    assert "no file matches" in st["detail"], st
    # Every job settled (cancelled), then the step job never ran.
    seen = [st]

    def settled() -> dict | None:
        if "cancelling" in seen[0]["detail"]:
            seen[0] = orchestrator.get(f"/step/status/{step}")[1]
        return seen[0] if "cancelling" not in seen[0]["detail"] else None

    st = poll_until(settled, f"step {step}: its jobs cancelled", 30, 0.5, last=lambda: seen[0])
    assert "not run" in st["detail"], st
    assert not os.path.exists(marker)


def test_abort_cancels_every_job_and_is_idempotent(orchestrator, client):
    """Abort a running step (its stage-out mover still pending): all its jobs end,
    the step is CANCELLED; a second abort answers 200 and changes nothing."""
    step = unique("abort")
    launch(orchestrator, {
        "name": step, "user": "bob", "command": "sbatch -t 10 --wrap 'sleep 300'",
        "services": [],
    })
    wait_step(orchestrator, step, {"RUNNING"}, 90)
    code, answer = orchestrator.delete(f"/step/abort/{step}")
    assert code == 200, answer
    st = wait_step(orchestrator, step, {"CANCELLED"}, 60)
    assert "aborted" in st["detail"], st
    code, again = orchestrator.delete(f"/step/abort/{step}")
    assert code == 200 and again["status"] == "CANCELLED", again
    jobs = [j for j in client.jobs() if j.name.startswith(step)]
    assert jobs and all(j.state == "CANCELLED" for j in jobs), jobs


def test_abort_of_a_step_with_movers_cancels_them(orchestrator, client, sbb):
    """Abort while the job runs: the pending stage-out mover is cancelled as well."""
    step = unique("abortdm")
    launch(orchestrator, {
        "name": step, "user": "alice", "command": "--wrap 'sleep 300'",
        "services": [{"name": sbb, "datamovers": [
            {"name": "dm_out", "trigger": "step_stop", "target": "HDD", "operation": "copy",
             "elements": ["NVMe:nothing-here"]}]}],
    })
    wait_step(orchestrator, step, {"RUNNING"}, 90)
    assert orchestrator.delete(f"/step/abort/{step}")[0] == 200
    wait_step(orchestrator, step, {"CANCELLED"}, 60)
    jobs = [j for j in client.jobs() if j.name.startswith(step)]
    assert len(jobs) == 2 and all(j.state == "CANCELLED" for j in jobs), jobs


def test_unknown_or_foreign_service_fails_the_step(orchestrator, sbb):
    """Naming a service nobody reserved, or alice's service in bob's step: FAILED, and
    the detail says which service and why."""
    unknown = unique("nosvc")
    launch(orchestrator, {"name": unknown, "user": "alice", "command": "--wrap true",
                          "services": [{"name": "alice_no_such_service"}]})
    st = wait_step(orchestrator, unknown, FINAL, 30)
    assert st["status"] == "FAILED"
    assert "service alice_no_such_service is unknown" in st["detail"], st

    foreign = unique("foreign", "bob")
    launch(orchestrator, {"name": foreign, "user": "bob", "command": "--wrap true",
                          "services": [{"name": sbb, "hint": "RO"}]})
    st = wait_step(orchestrator, foreign, FINAL, 30)
    assert st["status"] == "FAILED"
    assert f"service {sbb} belongs to another user" in st["detail"], st


def test_a_user_cannot_make_the_orchestrator_read_what_he_cannot_read(orchestrator):
    """alice names /etc/shadow and bob's private script as her job script: the job runs as
    alice, who cannot read them; nothing of them reaches her output."""
    secret = os.path.join(pwd.getpwnam("bob").pw_dir, f"secret-{uuid.uuid4().hex[:6]}.sh")
    with open(secret, "w") as fh:
        fh.write("echo BOB-SECRET-CONTENT\n")
    as_user(secret, "bob", 0o700)
    try:
        for script in ("/etc/shadow", secret):
            step = unique("steal")
            out = f"/tmp/{step}.out"  # noqa: S108 - the job's output, as alice
            launch(orchestrator, {"name": step, "user": "alice",
                                  "command": f"sbatch -o {out} {script}"})
            st = wait_step(orchestrator, step, FINAL, 90)
            assert st["status"] == "FAILED", st
            with open(out) as fh:
                text = fh.read()
            assert "Permission denied" in text, text
            assert "root:" not in text and "BOB-SECRET-CONTENT" not in text, text
            assert os.stat(out).st_uid == pwd.getpwnam("alice").pw_uid
    finally:
        os.unlink(secret)


def test_bad_launch_requests_are_refused_with_the_field(orchestrator):
    """Injection through command, command_env, names and elements: 400 naming the field."""
    base = {"name": unique("bad"), "user": "alice", "command": "--wrap true"}
    cases = [
        ({"command": "sbatch --export=ALL --wrap true"}, "command"),
        ({"command": "sbatch -p data --wrap true"}, "command"),
        ({"command": "--wrap 'echo $UNDEFINED'"}, "command"),
        ({"command_env": "LD_PRELOAD=/tmp/x.so"}, "command_env"),
        ({"command_env": "SLURM_JOB_ID=1"}, "command_env"),
        ({"name": "x;rm -rf /"}, "name"),
        ({"services": [{"name": "s", "datamovers": [
            {"name": "d", "trigger": "step_start", "target": "NVMe", "operation": "copy",
             "elements": ["HDD:../../etc/shadow"]}]}]}, "services[0].datamovers[0].elements[0]"),
        ({"services": [{"name": "s", "datamovers": [
            {"name": "d", "trigger": "step_start", "target": "NVMe", "operation": "copy",
             "elements": ["/etc/passwd"]}]}]}, "services[0].datamovers[0].elements[0]"),
    ]
    for change, field in cases:
        code, answer = orchestrator.post("/step/launch", {**base, **change})
        assert code == 400, (change, answer)
        assert answer["field"] == field, (change, answer)
