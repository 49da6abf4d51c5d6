"""SlurmClient against the real mini-cluster: users, nodes, cancel, states, auth, outages."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.poll import poll_until
from wfm_orchestrator.errors import SlurmAuthError, SlurmUnavailable
from wfm_orchestrator.slurm import JobSpec, SlurmClient

from .minicluster import RUN_DIR, devcluster, wait_for_file, wait_for_state

pytestmark = pytest.mark.integration

# Writes "<user> <node> <arg>" to $1: the command is ours, the values are data.
REPORT = ["/bin/sh", "-c", 'printf "%s %s %s\\n" "$(id -un)" "$SLURMD_NODENAME" "$2" > "$1"',
          "report"]


def home(user: str) -> str:
    return os.path.expanduser(f"~{user}")


def out_path(user: str, unique: str) -> str:
    return os.path.join(home(user), f"wfm-it-{unique}.out")


def test_job_submitted_for_alice_runs_as_alice_on_the_requested_node(
        client, job_factory, unique):
    """SlurmUser token + X-SLURM-USER-NAME alice: runs as alice, on data node dn2."""
    path = out_path("alice", unique)
    spec = JobSpec(name=f"it_{unique}", command=REPORT + [path, "x"], partition="data",
                   nodes=["dn2"], cpus_per_node=2, memory_per_node=512, cwd=home("alice"),
                   comment=f"wfm:it:{unique}")
    job_id = job_factory(spec, user="alice")
    state = wait_for_state(client, job_id, {"COMPLETED", "FAILED"})
    assert state.state == "COMPLETED", state
    assert (state.user, state.partition, state.nodes, state.exit_code) == (
        "alice", "data", ("dn2",), 0)
    assert state.comment == f"wfm:it:{unique}"
    assert wait_for_file(path) == "alice dn2 x\n"
    os.unlink(path)


def test_job_with_the_users_own_token_spans_two_nodes(client, job_factory, unique, user_token):
    """bob's own token; two datanodes, 8 CPUs and 1000 MB on each."""
    path = out_path("bob", unique)
    spec = JobSpec(name=f"it_{unique}", command=["/bin/sleep", "60"], partition="data",
                   nodes=["dn1", "dn2"], cpus_per_node=8, memory_per_node=1000,
                   cwd=home("bob"), stdout=path)
    job_id = job_factory(spec, user="bob", user_token=user_token("bob"))
    state = wait_for_state(client, job_id, {"RUNNING"})
    assert (state.user, state.nodes) == ("bob", ("dn1", "dn2"))


def test_values_with_shell_metacharacters_stay_data(client, job_factory, unique):
    """An argument such as '$(touch …); `id`' reaches the program verbatim, unevaluated."""
    path = out_path("alice", unique)
    canary = f"/tmp/wfm-it-canary-{unique}"  # noqa: S108 - must not be created
    nasty = f"$(touch {canary}); `touch {canary}` | & > < #SBATCH\n#BB_LUA x"
    spec = JobSpec(name=f"it_{unique}", partition="compute", cwd=home("alice"),
                   command=["/bin/sh", "-c", 'printf "%s|%s\\n" "$2" "$NASTY" > "$1"', "sh",
                            path, nasty], environment={"NASTY": nasty})
    job_id = job_factory(spec)
    assert wait_for_state(client, job_id, {"COMPLETED", "FAILED"}).state == "COMPLETED"
    assert wait_for_file(path) == f"{nasty}|{nasty}\n"
    assert not os.path.exists(canary)
    os.unlink(path)


@pytest.mark.parametrize("sig,end", [("SIGKILL", "CANCELLED"), ("SIGTERM", "FAILED")])
def test_cancel_ends_a_running_job_and_is_idempotent(client, job_factory, unique, sig, end):
    """cancel ends a started job; a second cancel does not raise.

    Slurm 22.05 fact: DELETE with SIGKILL ends the job CANCELLED; with SIGTERM the
    job ends FAILED, reason JobLaunchFailure, signal 15.
    """
    path = out_path("alice", unique)
    job_id = job_factory(JobSpec(
        name=f"it_{unique}", partition="compute", cwd=home("alice"),
        command=["/bin/sh", "-c", 'echo started > "$1"; exec sleep 300', "sh", path]))
    wait_for_state(client, job_id, {"RUNNING"})
    wait_for_file(path)  # the script runs: a signal now cannot hit the launch
    assert client.cancel(job_id, signal=sig) is True
    state = wait_for_state(client, job_id, {"CANCELLED", "FAILED", "COMPLETED"})
    assert state.state == end, state
    if sig == "SIGTERM":
        assert state.signal == 15
    client.cancel(job_id)
    assert client.cancel(987654321) is False
    os.unlink(path)


def test_states_of_many_jobs_in_one_call(client, job_factory, unique):
    """job_states reads several jobs from one GET /jobs; unknown ids are absent."""
    ids = [job_factory(JobSpec(name=f"it_{unique}_{i}", command=["/bin/sleep", "30"],
                               partition="compute", comment=f"wfm:it:{unique}"))
           for i in range(3)]
    calls = []
    real = client._session.request

    def counting(*a, **kw):
        calls.append(a[:2])
        return real(*a, **kw)

    client._session.request = counting
    states = client.job_states(ids + [987654321])
    assert sorted(states) == sorted(ids) and len(calls) == 1
    assert {s.name for s in states.values()} == {f"it_{unique}_{i}" for i in range(3)}
    found = [j.job_id for j in client.jobs() if j.comment == f"wfm:it:{unique}"]
    assert sorted(found) == sorted(ids)


def test_a_token_with_a_bad_signature_is_refused(client, user_token, unique):
    """A JWT signed with another key: SlurmAuthError naming the refusal."""
    head, body, sig = user_token("alice").split(".")
    forged = f"{head}.{body}.{sig[::-1]}"
    with pytest.raises(SlurmAuthError, match="refused the token"):
        client.submit(JobSpec(name=f"it_{unique}", command=["/bin/true"], partition="compute"),
                      user="alice", user_token=forged)


def test_an_expired_token_is_refused(client, user_token, unique):
    """A token past its lifespan: SlurmAuthError saying it expired."""
    token = user_token("alice", lifespan=1)

    def refused() -> SlurmAuthError | None:
        try:
            client.job_states([1], user="alice", user_token=token)
        except SlurmAuthError as e:
            return e
        return None

    error = poll_until(refused, "a token with lifespan=1 refused", 10, 0.5)
    assert "expired" in str(error) or "refused" in str(error)


def test_another_users_token_is_refused(client, user_token, unique):
    """bob's token naming alice: SlurmAuthError."""
    with pytest.raises(SlurmAuthError, match="belongs to bob"):
        client.jobs(user="alice", user_token=user_token("bob"))


def _restd_pid() -> int | None:
    try:
        with open(os.path.join(RUN_DIR, "slurmrestd.pid")) as fh:
            pid = int(fh.read().strip())
        with open(f"/proc/{pid}/comm") as fh:
            return pid if fh.read().strip() == "slurmrestd" else None
    except (OSError, ValueError):
        return None


def test_slurmrestd_down_is_unavailable_within_the_timeout_then_recovers(slurm_cluster,
                                                                         slurm_version):
    """slurmrestd stopped: SlurmUnavailable within the timeout; back up: the same client works."""
    if os.geteuid() != 0:
        pytest.skip("stopping slurmrestd needs root")
    pid = _restd_pid()
    assert pid, f"no live slurmrestd pid file in {RUN_DIR}"
    client = SlurmClient.from_config(slurm_cluster)
    client.timeout = 3.0
    client.ping()
    try:
        os.kill(pid, signal.SIGTERM)
        poll_until(lambda: not os.path.exists(f"/proc/{pid}"), f"slurmrestd (pid {pid}) gone",
                   10, 0.1)
        t0 = time.monotonic()
        with pytest.raises(SlurmUnavailable, match="slurmrestd at"):
            client.ping()
        assert time.monotonic() - t0 < 3.5
    finally:
        up = devcluster("up", "--slurm", slurm_version)
        assert up.returncode == 0, up.stderr[-2000:]
    # 22.05 says "ping": "UP", 24.11 "pinged": "UP"; ping() raises unless one is UP.
    assert client.ping()
    client.close()
