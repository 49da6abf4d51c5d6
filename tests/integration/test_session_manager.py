"""The IO-SEA Session Manager's own Slurm jobs on the mini-cluster (#17).

Each test replays what the Session Manager (wfm-api 1.6.0) does, as an ordinary user
(``deploy/devcluster run --user alice``): it reserves through the API, writes its spec
files in /tmp exactly as it does, and runs its sbatch/srun/scontrol commands, without
``--ioinstrumentation`` (IO-SEA's own SPANK plugin; docs/api.md). Without ``-p``: the
SM's ``location`` becomes the partition, and our locations are not partitions here.
"""

from __future__ import annotations

import pytest

from tests.poll import poll_until

from .minicluster import user_token
from .session_manager import (
    EXPORT,
    as_user,
    create_file,
    destroy_file,
    free,
    idle,
    name,
    reserve_sbb,
    run_session,
    sbatch,
    sbb_line,
    slurm_version,
    status,
    wait_job,
    waiting_hooks,
)

pytestmark = pytest.mark.integration


def test_an_sbb_session_created_asynchronously_runs_a_step_and_ends_stopped(orchestrator,
                                                                            slurm_cluster):
    svc = name("sbb")
    before = idle(orchestrator)
    reserve_sbb(orchestrator, svc)
    run_session(orchestrator, svc, before, sbb_line(svc))


def test_an_nfs_session_created_asynchronously_runs_a_step_and_ends_stopped(orchestrator,
                                                                           slurm_cluster):
    """NFS: the SM reserves with a gssize string and writes a GBF line; --exclusive."""
    svc = name("nfs")
    before = idle(orchestrator)
    body = {"name": svc, "user": "alice", "user_slurm_token": user_token("alice"),
            "type": "NFS", "servers": 1,
            "attributes": {"gssize": "2GiB", "mountpoint": "/tmp/sm-nfs-mnt"}}  # noqa: S108
    code, answer = orchestrator.post("/ephemeralservice/reserve", body)
    assert code == 200, answer
    line = (f"GBF create_persistent Name={svc} StorageSize=2GiB Path=/tmp/sm-nfs-mnt "
            "FSType=ganesha MetaDataServers=0 data_dst=/tmp/sm-nfs-dataset")
    run_session(orchestrator, svc, before, line, "--exclusive", stype="GBF")


def test_synchronous_create_use_and_destroy_with_srun_bb(orchestrator, slurm_cluster):
    """srun --bb "#BB_LUA SBB create_persistent ..." hostname returns once the service is
    up; srun --bb use_persistent sees it; srun --bb destroy_persistent stops it."""
    svc = name("sync")
    before = idle(orchestrator)
    reserve_sbb(orchestrator, svc)
    out = as_user("alice", "srun", "-J", "create", EXPORT, "--bb", f"#BB_LUA {sbb_line(svc)}",
                  "hostname")
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    assert status(orchestrator, svc)["status"] == "ALLOCATED"
    out = as_user("alice", "srun", "-J", "interactive", "-N", "1", "-n", "1", "--bb",
                  f"#BB_LUA SBB use_persistent Name={svc}", "printenv", "WFM_SERVICE_0_NAME")
    assert out.returncode == 0 and out.stdout.strip() == svc, out.stderr
    out = as_user("alice", "srun", "-J", "destroy", EXPORT, "--bb",
                  f"#BB_LUA SBB destroy_persistent Name={svc}", "hostname")
    assert out.returncode == 0, out.stderr
    assert status(orchestrator, svc)["status"] == "STOPPED"
    assert free(orchestrator) == before


def test_a_bb_string_without_the_directive_prefix_never_reaches_the_plugin(orchestrator,
                                                                          slurm_cluster):
    """'srun --bb "SBB create_persistent ..."' (no '#BB_LUA'): Slurm 22.05 itself refuses
    it before any hook runs (docs/burst_buffer_plugin.md)."""
    out = as_user("alice", "srun", "--bb", "SBB create_persistent Name=alice-x-y Flavor=small",
                  "hostname")
    assert out.returncode != 0 and "Burst Buffer request invalid" in out.stderr


def test_a_stop_during_a_start_waits_for_the_start_then_stops(orchestrator, slurm_cluster):
    """create, and at once destroy with afterany:create (the SM's stop while starting):
    the create completes once up, the destroy then stops it; nothing is left."""
    svc = name("stop")
    before = idle(orchestrator)
    reserve_sbb(orchestrator, svc)
    create = sbatch("alice", "-J", "create", EXPORT, create_file(svc, sbb_line(svc)))
    destroy = sbatch("alice", "-J", "destroy", EXPORT, f"--dependency=afterany:{create}",
                     destroy_file(svc))
    wait_job(create, {"COMPLETED"})
    wait_job(destroy, {"COMPLETED"})
    assert status(orchestrator, svc)["status"] == "STOPPED"
    assert free(orchestrator) == before


def test_a_create_whose_service_cannot_start_ends_with_the_reason(orchestrator,
                                                                  slurm_cluster):
    """The service cannot start (here: released through the API while the create job
    waits): the create job ends CANCELLED with the plugin's reason in Reason and
    SystemComment, so the SM's destroy (afterany) still runs; nothing is left."""
    svc = name("gone")
    before = idle(orchestrator)
    reserve_sbb(orchestrator, svc)
    create = sbatch("alice", "-J", "create", EXPORT, create_file(svc, sbb_line(svc)))
    destroy = sbatch("alice", "-J", "destroy", EXPORT, f"--dependency=afterany:{create}",
                     destroy_file(svc))
    code, answer = orchestrator.delete(f"/ephemeralservice/release/{svc}")
    assert code == 200, answer
    info = wait_job(create, {"CANCELLED"})
    assert f"service {svc} cannot start" in info["_raw"], info["_raw"]
    assert "SystemComment=" in info["_raw"]  # its text, kept after the cancel
    wait_job(destroy, {"COMPLETED"})
    assert status(orchestrator, svc)["status"] == "STOPPED"
    assert free(orchestrator) == before


def test_a_waiting_data_in_holds_no_other_hooks_pipe(orchestrator, slurm_cluster):
    """Slurm 22.05 (docs/slurm.md): a hook forked while another hook's output pipe is set
    up inherits both its ends, and that hook's caller waits for the inheritor to end. A
    create job's data_in waits for its service up to the plugin's `wait`, so it first
    closes every pipe it holds both ends of (luaposix, loaded in slurmscriptd): seen here
    on the real process while it waits. 24.05+: no hook waits (test_data_in polls)."""
    svc = name("pipes")
    before = idle(orchestrator)
    reserve_sbb(orchestrator, svc)
    create = sbatch("alice", "-J", "create", EXPORT, create_file(svc, sbb_line(svc)))
    seen: dict[str, list[str]] = {}

    def up() -> bool:
        seen.update(waiting_hooks())
        return status(orchestrator, svc)["status"] == "ALLOCATED"

    poll_until(up, f"service {svc} ALLOCATED", 120, 0.1, last=lambda: str(seen))
    wait_job(create, {"COMPLETED"})
    destroy = sbatch("alice", "-J", "destroy", EXPORT, destroy_file(svc))
    wait_job(destroy, {"COMPLETED"})
    assert free(orchestrator) == before
    if slurm_version() >= (24, 5):
        assert seen == {}, seen
        return
    assert seen, "the create job's data_in was never seen waiting"
    for hook, pipes in seen.items():
        assert len(pipes) == len(set(pipes)), f"hook {hook} holds both ends of a pipe: {pipes}"
