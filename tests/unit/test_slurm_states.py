"""Readers of slurmrestd responses, against responses captured from the mini-cluster."""

import json
import os

import pytest

from wfm_orchestrator.errors import SlurmAuthError, SlurmError, SlurmUnavailable
from wfm_orchestrator.slurm.states import (
    is_unknown_job,
    parse_submit,
    raise_for_response,
    slurm_errors,
)
from wfm_orchestrator.slurm.versions import parse_job_states, parse_jobs, parse_ping

# Slurm 22.05's answers; those of 24.11 (v0.0.40-42) are read in test_slurm_versions.py.
V38 = "v0.0.38"
CAPTURED = os.path.join(os.path.dirname(__file__), "captured", V38)


def cap(name):
    with open(os.path.join(CAPTURED, name + ".json")) as fh:
        d = json.load(fh)
    return d["status"], d["body"], d["text"] or ""


def by_name(jobs):
    return {j.name: j for j in jobs}


def test_jobs_list_gives_state_reason_nodes_and_user():
    """GET /jobs: every captured job is read with Slurm's state and reason."""
    jobs = by_name(parse_jobs(*cap("jobs_mixed")[:2], V38))
    run = jobs["cap_run"]
    assert (run.state, run.reason, run.nodes, run.user) == ("RUNNING", "", ("dn1", "dn2"), "alice")
    assert run.exit_code is None and run.partition == "data" and run.is_active
    pend = jobs["cap_pend"]
    assert (pend.state, pend.reason, pend.nodes) == ("PENDING", "Dependency", ())


@pytest.mark.parametrize("name,state,exit_code,signal", [
    ("cap_ok", "COMPLETED", 0, 0),
    ("cap_fail", "FAILED", 3, 0),  # raw wait status 768
    ("cap_kill", "CANCELLED", 128 + 15, 15),  # raw 15: killed by SIGTERM
])
def test_exit_code_is_decoded_from_the_wait_status(name, state, exit_code, signal):
    """exit_code 768 means exit 3; a low byte is the signal."""
    job = by_name(parse_jobs(*cap("jobs_mixed")[:2], V38))[name]
    got = (job.state, job.exit_code, job.signal, job.is_terminal)
    assert got == (state, exit_code, signal, True)


def test_comment_is_read():
    """The comment tag set at submit is read back (to find jobs after a restart)."""
    assert by_name(parse_jobs(*cap("jobs_mixed")[:2], V38))["cap_ok"].comment == "wfm:capture"


def test_pending_burst_buffer_reason_is_kept():
    """A job cancelled while its burst buffer was not ready keeps Slurm's reason."""
    reasons = {j.reason for j in parse_jobs(*cap("jobs_mixed")[:2], V38)}
    assert "BurstBufferResources" in reasons


def test_job_states_filters_the_requested_ids():
    """job_states: only the asked ids; ids Slurm does not know are absent."""
    status, body, _ = cap("jobs_mixed")
    all_ids = [j["job_id"] for j in body["jobs"]]
    got = parse_job_states(status, body, [all_ids[0], all_ids[-1], 999999], V38)
    assert set(got) == {all_ids[0], all_ids[-1]}


def test_one_job():
    """GET /job/{id} reads like a list of one."""
    (job,) = parse_jobs(*cap("job_one")[:2], V38)
    assert job.name == "cap_run" and job.state == "RUNNING"


def test_unknown_job_is_recognised():
    """GET /job/999999: 500 with error 2017, read as 'unknown job'."""
    status, body, _ = cap("job_unknown")
    assert status == 500 and is_unknown_job(slurm_errors(body))
    with pytest.raises(SlurmError, match="Unable to find JobId=999999"):
        parse_jobs(status, body, V38)
    assert is_unknown_job(slurm_errors(cap("cancel_unknown")[1]))


@pytest.mark.parametrize("name", ["submit_ok", "submit_ok_fail", "submit_ok_run"])
def test_submit_returns_the_job_id(name):
    """POST /job/submit: the job_id."""
    status, body, text = cap(name)
    assert parse_submit(status, body, text=text) == body["job_id"] > 0


def test_submit_with_job_id_and_an_error_is_a_success():
    """An id with an error (node not registered yet) still means the job exists."""
    body = {"errors": [{"error_code": 2068, "error": "Required node not available"}],
            "job_id": 3, "step_id": "BATCH"}
    assert parse_submit(200, body) == 3


@pytest.mark.parametrize("name,text", [
    ("submit_bad_partition", "Invalid partition name specified"),
    ("submit_bad_node", "Requested node configuration is not available"),
])
def test_submit_errors_carry_slurms_text(name, text):
    """A refused submit raises SlurmError with Slurm's own words and numbers."""
    status, body, raw = cap(name)
    with pytest.raises(SlurmError) as e:
        parse_submit(status, body, "submit job x", raw)
    assert text in str(e.value) and e.value.status == 500 and e.value.errors
    assert not isinstance(e.value, (SlurmAuthError, SlurmUnavailable))


@pytest.mark.parametrize("name", ["auth_garbage_jobs", "auth_expired", "auth_wrong_user"])
def test_refused_tokens_on_reads_are_auth_errors(name):
    """Bad, expired or other-user tokens: 500 'Unspecified error' -1 -> SlurmAuthError."""
    status, body, text = cap(name)
    with pytest.raises(SlurmAuthError, match="refused the token"):
        parse_jobs(status, body, V38, text=text)


def test_refused_token_on_submit_is_an_auth_error():
    """Submit with a bad token: 500 5005 'Zero Bytes...' -> SlurmAuthError."""
    with pytest.raises(SlurmAuthError, match="Zero Bytes"):
        parse_submit(*cap("auth_garbage_submit"))


def test_refused_token_on_ping_is_an_auth_error():
    """Ping with a bad token -> SlurmAuthError."""
    with pytest.raises(SlurmAuthError):
        parse_ping(*cap("auth_garbage_ping")[:2], V38)


def test_missing_headers_is_an_auth_error():
    """No auth headers: plain-text 401 -> SlurmAuthError with the text."""
    status, body, text = cap("auth_no_headers")
    assert status == 401 and body is None
    with pytest.raises(SlurmAuthError, match="Authentication failure"):
        parse_jobs(status, body, V38, text=text)


def test_ping_ok():
    """A controller UP."""
    assert parse_ping(*cap("ping_ok")[:2], V38)[0]["ping"] == "UP"


def test_ping_without_controller_up_is_unavailable():
    """Pings listing no UP controller -> SlurmUnavailable."""
    with pytest.raises(SlurmUnavailable):
        parse_ping(200, {"errors": [], "pings": [{"hostname": "vm", "ping": "DOWN"}]}, V38)


def test_cancel_responses():
    """Cancel: 200 with no errors succeeds, also for a finished job."""
    for name in ("cancel_ok", "cancel_finished"):
        status, body, text = cap(name)
        raise_for_response(status, body, "cancel", text)


def test_controller_unreachable_is_unavailable():
    """slurmrestd up but slurmctld down (error 1001 family) -> SlurmUnavailable."""
    body = {"errors": [{"error": "Unable to contact slurm controller (connect failure)",
                        "error_number": 1001, "source": "slurm_load_jobs"}]}
    with pytest.raises(SlurmUnavailable, match="connect failure"):
        parse_jobs(500, body, V38)


def test_non_json_error_keeps_the_text():
    """A non-JSON body is quoted in the error."""
    with pytest.raises(SlurmError, match="Bad Gateway"):
        parse_jobs(502, None, V38, text="Bad Gateway")


# --- following a job: ended, gone, exit status (shared by services and steps) ----------


def test_gone_is_ended_but_not_a_slurm_state():
    from wfm_orchestrator.slurm.states import ACTIVE_STATES, GONE, TERMINAL_STATES, has_ended

    assert has_ended(GONE) and has_ended("COMPLETED") and not has_ended("RUNNING")
    assert GONE not in TERMINAL_STATES | ACTIVE_STATES
    assert not any(has_ended(s) for s in ACTIVE_STATES)


@pytest.mark.parametrize("state, updated, why", [
    ("RUNNING", 999.0, "no longer known to Slurm"),  # seen before, missing now
    ("PENDING", 0.0, "no longer known to Slurm"),
    ("", 939.0, "never seen in Slurm"),  # submitted more than 60 s ago, never listed
    ("", 941.0, ""),  # submitted just now: Slurm may list it at the next read
    ("COMPLETED", 0.0, ""),  # ended: Slurm forgetting it after MinJobAge changes nothing
    ("GONE", 0.0, ""),
])
def test_gone_reason_of_a_job_missing_from_slurms_list(state, updated, why):
    from wfm_orchestrator.slurm.states import gone_reason

    assert gone_reason(state, updated, now=1000.0) == why


@pytest.mark.parametrize("code, text", [
    (None, ""), (0, ""), (3, ", exit status 3"), (768, ", exit status 3"),
    (137, ", exit status 137"),
])
def test_exit_status_text(code, text):
    from wfm_orchestrator.slurm.states import exit_status_text

    assert exit_status_text(code) == text
