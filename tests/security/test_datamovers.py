"""Data movers: each user's tier directories, each step's progress (docs/security.md §11).

bob's steps run on his service (``bob_service``) through the session orchestrator and the
mini-cluster: their stage-in movers are real ``wfm-datamover`` jobs running as bob. Before
bob's first move, alice prepares the tier roots (shared, sticky, like ``/tmp``) as herself:
she plants ``<nvme>/bob``, slips a directory into a ``<nvme>/bob`` that bob left open, or
makes ``<nvme>/bob`` a link to a directory of hers. Each time bob's mover refuses (the step
FAILS, the detail names the directory and the rule), nothing lands in alice's reach, and
bob's files on HDD and his service are unchanged. alice also tries to read what bob's
mover created, to launch a step on bob's files, and to forge bob's steps' progress.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.conftest import connect_db
from tests.poll import poll_until
from tests.reliability.cluster import kill9, launch, wait_answering

from .conftest import (
    ALICE,
    BOB,
    HDD,
    NVME,
    chown_to,
    devcluster_run,
    launch_step,
    read_as,
    run_as,
    squeue_as,
    stage_in,
    step_secret,
    uid_of,
    unique,
    wait_step,
)

pytestmark = pytest.mark.integration

ELEMENT = "HDD:data/results.h5"  # bob's file, relative to <hdd>/bob


def bob_stage_in(orchestrator, bob_service) -> dict:
    """bob's step copying his results to NVMe before a job: its final status."""
    step = launch_step(orchestrator, BOB, bob_service, [stage_in("dm_in", "NVMe", ELEMENT)])
    return wait_step(orchestrator, step)


def as_alice(*script: str) -> None:
    out = run_as(ALICE, "sh", "-c", " && ".join(script))
    assert out.returncode == 0, out.stderr


def test_a_tier_directory_planted_by_alice_is_refused(orchestrator, bob_service, bob_files,
                                                      bob_things):
    """alice creates ``<nvme>/bob`` (hers, 0777) before bob's first move: bob's mover
    refuses to write there ("owned by uid 1001, not by you"), the step FAILS saying so,
    alice's directory stays empty, bob's files and service are unchanged."""
    planted = os.path.join(NVME, BOB)
    as_alice(f"mkdir -m 777 {planted}", f"chmod 777 {planted}")
    before = bob_things(bob_files)
    st = bob_stage_in(orchestrator, bob_service)
    assert st["status"] == "FAILED", st
    assert f"owned by uid {uid_of(ALICE)}, not by you" in st["detail"], st
    assert "bob" in st["detail"], st
    assert os.listdir(planted) == [] and os.stat(planted).st_uid == uid_of(ALICE)
    assert bob_things(bob_files) == before


def test_a_directory_others_can_write_or_a_planted_subdirectory_is_refused(
        orchestrator, bob_service, bob_files, bob_things):
    """bob's ``<nvme>/bob`` is open to all (0777, his mistake) and alice slipped her own
    ``data`` into it, the directory bob's copy goes to: the mover refuses (group/others can
    write: ``chmod go-w``), nothing is written into alice's ``data``."""
    home = os.path.join(NVME, BOB)
    os.mkdir(home)
    chown_to(home, BOB, 0o777)
    os.chmod(home, 0o777)  # noqa: S103 - bob's mistake, under test
    as_alice(f"mkdir -m 777 {home}/data", f"chmod 777 {home}/data")
    before = bob_things(bob_files)
    st = bob_stage_in(orchestrator, bob_service)
    assert st["status"] == "FAILED", st
    assert "writable by group or others" in st["detail"] and "chmod go-w" in st["detail"], st
    assert os.listdir(os.path.join(home, "data")) == []
    assert bob_things(bob_files) == before


def test_a_tier_directory_that_is_alices_link_is_refused(orchestrator, bob_service, bob_files,
                                                          bob_things, open_dir):
    """alice makes ``<nvme>/bob`` a symbolic link to a directory of hers (0777): bob's mover
    refuses it as his directory (``O_NOFOLLOW``), nothing is written through the link."""
    trap = os.path.join(open_dir, "trap")
    os.mkdir(trap)
    chown_to(trap, ALICE, 0o755)
    as_alice(f"chmod 777 {trap}", f"ln -s {trap} {NVME}/{BOB}")
    before = bob_things(bob_files)
    st = bob_stage_in(orchestrator, bob_service)
    assert st["status"] == "FAILED", st
    assert "symbolic link or not a directory" in st["detail"], st
    assert os.listdir(trap) == []
    assert os.path.islink(os.path.join(NVME, BOB))
    assert bob_things(bob_files) == before


def test_what_bobs_mover_creates_is_closed_to_alice(orchestrator, bob_service, bob_files,
                                                    bob_things):
    """bob's first move creates ``<nvme>/bob`` 0700 (the mover job's umask plays no part):
    the copy is there, and alice can neither list the directory nor read the copy."""
    before = bob_things(bob_files)
    st = bob_stage_in(orchestrator, bob_service)
    assert st["status"] == "COMPLETED", st
    home = os.path.join(NVME, BOB)
    assert os.stat(home).st_uid == uid_of(BOB) and os.stat(home).st_mode & 0o777 == 0o700
    copy = os.path.join(home, "data", "results.h5")
    assert os.path.isfile(copy)
    out = run_as(ALICE, "ls", home)
    assert out.returncode != 0 and "Permission denied" in out.stderr, out.stdout
    out = read_as(ALICE, copy)
    assert out.returncode != 0 and "Permission denied" in out.stderr, out.stdout[:100]
    assert bob_things(bob_files) == before


def test_a_step_naming_bobs_directory_is_refused(orchestrator, bob_files, bob_things):
    """alice launches a step whose elements are absolute paths in bob's directory, or the
    bare tier root: 400 naming the element (``services[0].datamovers[0].elements[k]``);
    nothing is stored, bob's files unchanged."""
    before = bob_things(bob_files)
    mine = f"{ALICE}_svc_{os.urandom(4).hex()}"
    for k, element in enumerate([f"{HDD}/{BOB}/data/results.h5", f"HDD:{HDD}/{BOB}/data/*",
                                 HDD, f"{HDD}/"]):
        step = unique("steal", ALICE)
        code, answer = orchestrator.post("/step/launch", {
            "name": step, "user": ALICE, "command": "--wrap true",
            "services": [{"name": mine, "datamovers": [
                stage_in("dm_in", "NVMe", element)]}]})
        assert code == 400, (element, answer)
        assert answer["field"] == "services[0].datamovers[0].elements[0]", (k, answer)
        assert orchestrator.get(f"/step/status/{step}") == (200, [])
    assert bob_things(bob_files) == before


def forge(orchestrator, step: str, mover: str, secret: str | None) -> tuple[int, dict]:
    body = {"step_name": step, "datamover_name": mover, "progress": "done: copy 1/1, 100%"}
    if secret is not None:
        body["step_secret"] = secret
    return orchestrator.post("/step/progress", body)


def test_progress_for_bobs_step_needs_its_own_secret(orchestrator, bob_service, bob_files,
                                                    bob_things, alice_service):
    """alice holds the shared mover token (here: any caller) and her own step's secret
    (her mover jobs' ``WFM_STEP_SECRET``). A progress for bob's step without a secret, with
    a made-up one or with hers: 403 naming ``step_secret``; bob's step's status unchanged."""
    before = bob_things(bob_files)
    step = launch_step(orchestrator, BOB, bob_service, [stage_in("dm_in", "NVMe", ELEMENT)])
    wait_step(orchestrator, step)
    _, bob_status = orchestrator.get(f"/step/status/{step}")
    hers = launch_step(orchestrator, ALICE, alice_service, [])
    for secret in (None, "", "x" * 32, step_secret(orchestrator, hers)):
        code, answer = forge(orchestrator, step, "dm_in", secret)
        assert code == 403, (secret, answer)
        assert answer["field"] == "step_secret", answer
        assert "step_secret" in answer["message"] and step in answer["message"], answer
    assert orchestrator.get(f"/step/status/{step}")[1] == bob_status
    assert bob_things(bob_files) == before


def test_the_step_secret_is_nowhere_alice_can_look(orchestrator, bob_service, bob_files,
                                                   bob_things):
    """While and after bob's movers run, alice looks for his step's secret where Slurm and
    the orchestrator show things: every job's name, comment and command (``squeue``), the
    full ``scontrol show job`` of each, his step's status, the orchestrator's log; and
    bob's mover job's batch script and environment are not hers to read."""
    before = bob_things(bob_files)
    step = launch_step(orchestrator, BOB, bob_service, [stage_in("dm_in", "NVMe", ELEMENT)])
    secret = step_secret(orchestrator, step)
    assert len(secret) >= 24
    seen = []

    def mover_job() -> str | None:
        out = squeue_as(ALICE, "%i|%u|%j|%k|%o")
        seen.append(out)
        ids = [line.split("|")[0] for line in out.splitlines() if step in line]
        return ids[0] if ids else None

    job_id = poll_until(mover_job, f"bob's mover job of {step} in squeue", 60, 0.1,
                        last=lambda: seen[-1] if seen else "")
    shown = devcluster_run("scontrol", "show", "job", "-dd", job_id, user=ALICE)
    script = devcluster_run("scontrol", "write", "batch_script", job_id, "-", user=ALICE)
    st = wait_step(orchestrator, step)
    everything = "\n".join([*seen, shown.stdout, str(st), orchestrator.log(),
                            script.stdout])
    assert secret not in everything
    # scontrol exits 0 even when it refuses: the refusal is its message.
    assert "job script retrieval failed" in script.stderr and not script.stdout, script
    assert bob_things(bob_files) == before


def test_progress_for_a_step_without_a_secret_is_refused(orchestrator, bob_service,
                                                        bob_files, bob_things):
    """A step launched before the upgrade has no secret (the migration's empty default);
    staged for real: bob's step is stored, the orchestrator stopped, the secret emptied as
    the migration leaves it, the orchestrator started again. A forged progress with no, an
    empty or any secret: 403 naming ``step_secret``."""
    before = bob_things(bob_files)
    step = launch_step(orchestrator, BOB, bob_service, [stage_in("dm_in", "NVMe", ELEMENT)])
    wait_step(orchestrator, step)
    kill9(orchestrator)
    conn = connect_db(orchestrator.state_db)
    try:
        with conn:
            conn.execute("UPDATE step SET mover_secret = '' WHERE name = ?", (step,))
    finally:
        conn.close()
    launch(orchestrator)
    wait_answering(orchestrator)
    _, status = orchestrator.get(f"/step/status/{step}")
    for secret in (None, "", "anything"):
        code, answer = forge(orchestrator, step, "dm_in", secret)
        assert code == 403 and answer["field"] == "step_secret", (secret, answer)
        assert re.search(r"secret", answer["message"]), answer
    assert orchestrator.get(f"/step/status/{step}")[1] == status
    assert bob_things(bob_files) == before
