"""Every API version we speak, on answers captured from its real daemon, and choosing one.

tests/unit/captured/<version>/ holds what slurmrestd answered (capture.py): 22.05.8 for
v0.0.38, 24.11.5 (``-s openapi/slurmctld``) for v0.0.40, v0.0.41 and v0.0.42. The same
jobs were submitted to each (``cap_ok``, ``cap_fail``, ...; 24.11's names end in the
version, e.g. ``cap_ok_v0042``), so every version must read them the same way.
"""

import json
import os

import pytest

from wfm_orchestrator.errors import SlurmAuthError, SlurmError, SlurmUnavailable
from wfm_orchestrator.slurm import SlurmClient
from wfm_orchestrator.slurm.states import parse_submit
from wfm_orchestrator.slurm.versions import (
    SUPPORTED,
    offered_versions,
    parse_cancel,
    parse_jobs,
    parse_nodes,
    parse_ping,
    state_word,
)

from .test_slurm_client import FakeSession, Resp

CAPTURED = os.path.join(os.path.dirname(__file__), "captured")
NEW = ("v0.0.40", "v0.0.41", "v0.0.42")  # Slurm 24.11


def cap(version, name):
    with open(os.path.join(CAPTURED, version, name + ".json")) as fh:
        d = json.load(fh)
    return d["status"], d["body"], d["text"] or ""


def captured(version, name):
    status, body, text = cap(version, name)
    return Resp(status, body, text or None)


def jobs_of(version):
    """The capture's jobs by their name without the version suffix."""
    status, body, _ = cap(version, "jobs_mixed")
    suffix = "_" + version.replace(".", "")
    return {j.name.removesuffix(suffix): j for j in parse_jobs(status, body, version)
            if version == "v0.0.38" or j.name.endswith(suffix)}


@pytest.mark.parametrize("version", SUPPORTED)
@pytest.mark.parametrize("name,state,exit_code,signal", [
    ("cap_ok", "COMPLETED", 0, 0),
    ("cap_fail", "FAILED", 3, 0),
    ("cap_kill", "CANCELLED", 128 + 15, 15),  # SIGKILL through slurmrestd = scancel
])
def test_every_version_reads_ended_jobs_alike(version, name, state, exit_code, signal):
    """State, exit status and signal of the same jobs read the same on 22.05 and 24.11."""
    job = jobs_of(version)[name]
    assert (job.state, job.exit_code, job.signal, job.is_terminal) == (
        state, exit_code, signal, True)


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_version_reads_running_and_pending_jobs_alike(version):
    """Nodes expanded, reason "" for None, user, partition, times as plain numbers."""
    jobs = jobs_of(version)
    run = jobs["cap_run"]
    assert (run.state, run.reason, run.nodes, run.user, run.partition, run.exit_code) == (
        "RUNNING", "", ("dn1", "dn2"), "alice", "data", None)
    assert run.submit_time > 1_600_000_000 and run.start_time >= run.submit_time
    assert jobs["cap_ok"].comment == "wfm:capture"


@pytest.mark.parametrize("version", NEW)
def test_24_11_pending_job_and_its_reason(version):
    """A job waiting on a dependency: PENDING (from the state list), reason Dependency."""
    (job,) = parse_jobs(*cap(version, "job_step")[:2], version)
    assert (job.state, job.reason, job.nodes, job.exit_code) == ("PENDING", "Dependency", (),
                                                                 None)


def test_state_list_reads_as_slurms_one_word():
    """A flag wins over the base state, as Slurm's job_state_string() shows it."""
    assert state_word(["RUNNING"]) == "RUNNING"
    assert state_word(["COMPLETED", "COMPLETING"]) == "COMPLETING"
    assert state_word(["PENDING", "REQUEUED"]) == "REQUEUED"
    assert state_word(["CANCELLED", "UPDATE_DB"]) == "CANCELLED"  # not a shown flag
    assert state_word([]) == "UNKNOWN"


@pytest.mark.parametrize("version", SUPPORTED)
@pytest.mark.parametrize("name", ["submit_ok", "submit_ok_run", "submit_ok_step"])
def test_every_version_returns_the_job_id(version, name):
    """POST .../job/submit: the job id (22.05 had no step job capture)."""
    if not os.path.exists(os.path.join(CAPTURED, version, name + ".json")):
        pytest.skip(f"{name} was captured on 24.11 only (capture.py added it later)")
    status, body, text = cap(version, name)
    assert parse_submit(status, body, text=text) == body["job_id"] > 0


@pytest.mark.parametrize("version", NEW)
@pytest.mark.parametrize("name,text", [
    ("submit_bad_partition", "Invalid partition name specified"),
    ("submit_bad_node", "Requested node configuration is not available"),
])
def test_24_11_refused_submits_carry_slurms_text(version, name, text):
    """500 with Slurm's words and number, a plain SlurmError."""
    with pytest.raises(SlurmError) as e:
        parse_submit(*cap(version, name))
    assert text in str(e.value) and not isinstance(e.value, (SlurmAuthError, SlurmUnavailable))


@pytest.mark.parametrize("version", NEW)
@pytest.mark.parametrize("name", ["auth_garbage_jobs", "auth_expired", "auth_wrong_user",
                                  "auth_garbage_submit"])
def test_24_11_refused_tokens_are_auth_errors(version, name):
    """24.11 says so: HTTP 511, error 1007 "Protocol authentication error"."""
    status, body, text = cap(version, name)
    with pytest.raises(SlurmAuthError, match="Protocol authentication error"):
        if name == "auth_garbage_submit":
            parse_submit(status, body, text=text)
        parse_jobs(status, body, version, text=text)


@pytest.mark.parametrize("version", NEW)
def test_24_11_controller_down_is_unavailable(version):
    """slurmctld stopped: reads answer 502, error 1800, after ~9 s; the ping says DOWN."""
    status, body, text = cap(version, "ctld_down_jobs")
    with pytest.raises(SlurmUnavailable, match="Unable to contact slurm controller"):
        parse_jobs(status, body, version, text=text)
    with pytest.raises(SlurmUnavailable, match="no slurmctld is UP"):
        parse_ping(*cap(version, "ctld_down_ping")[:2], version)


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_version_reads_its_ping(version):
    """v0.0.38 says ping: UP, v0.0.4x pinged: UP."""
    assert parse_ping(*cap(version, "ping_ok")[:2], version)


@pytest.mark.parametrize("version,name,delivered", [
    *[(v, "cancel_ok", True) for v in SUPPORTED],
    *[(v, "cancel_pending", True) for v in NEW],
    ("v0.0.38", "cancel_unknown", False),  # 500, error 2017
    ("v0.0.40", "cancel_unknown", True),  # 200 and no error: 24.11 does not say
    ("v0.0.41", "cancel_unknown", True),
    ("v0.0.42", "cancel_unknown", False),  # 200, status[].error.code 2017
    ("v0.0.42", "cancel_finished", False),  # 200, status[].error.code 2021
])
def test_cancel_answers(version, name, delivered):
    """True: Slurm took the signal; False: nothing to cancel (as far as Slurm says)."""
    assert parse_cancel(*cap(version, name)[:2], version) is delivered


def test_a_v0042_cancel_refusal_is_an_error():
    """Another per-job error (2020: a pending job given SIGTERM) is raised with its text."""
    body = {"errors": [], "status": [{"error": {"code": 2020, "string": "Job can not be "
                                                "altered now, try again later"}}]}
    with pytest.raises(SlurmError, match="can not be altered"):
        parse_cancel(200, body, "v0.0.42")


@pytest.mark.parametrize("version,offered", [
    ("v0.0.38", ["v0.0.38"]), *[(v, ["v0.0.42", "v0.0.41", "v0.0.40"]) for v in NEW]])
def test_openapi_lists_the_versions_served(version, offered):
    """/openapi/v3's paths name the versions: 22.05 v0.0.38; 24.11 v0.0.40 to v0.0.42."""
    assert offered_versions(cap(version, "openapi_paths")[1]) == offered


# --- node states (capture.py --nodes: the same states made on each version) ---------


def nodes_of(version, name):
    """The datanodes of a capture, by name."""
    status, body, text = cap(version, name)
    return {n.name: n for n in parse_nodes(status, body, version, text)
            if n.name.startswith("dn")}


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_version_reads_up_nodes_and_their_partitions(version):
    """IDLE and MIXED (a job on 4 of 16 CPUs) take placements; partitions as listed."""
    status, body, text = cap(version, "nodes_up")
    every = {n.name: n for n in parse_nodes(status, body, version, text)}
    assert {n: (s.words, s.available, s.partitions) for n, s in every.items()} == {
        "cn1": ("IDLE", True, ("compute",)), "cn2": ("IDLE", True, ("compute",)),
        "dn1": ("IDLE", True, ("data",)), "dn2": ("MIXED", True, ("data",))}


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_version_reads_drained_and_draining_nodes_alike(version):
    """scontrol state=drain: IDLE+DRAIN (drained), MIXED+DRAIN (draining): no new
    placement, running jobs not lost; Slurm's reason kept."""
    nodes = nodes_of(version, "nodes_drain")
    assert [(n.words, n.reason, n.available, n.down) for n in nodes.values()] == [
        ("IDLE+DRAIN", "capture: disk swap", False, False),
        ("MIXED+DRAIN", "capture: draining", False, False)]
    assert nodes["dn1"].describe() == "IDLE+DRAIN (capture: disk swap)"


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_version_reads_down_and_failing_nodes(version):
    """state=down: DOWN (its jobs lost); state=fail: FAIL (no placement). Both also carry
    NOT_RESPONDING until Slurm's next ping, as 24.11 shows here."""
    nodes = nodes_of(version, "nodes_down")
    dn1, dn2 = nodes["dn1"], nodes["dn2"]
    assert (dn2.state, dn2.reason, dn2.available, dn2.down) == ("DOWN", "capture: fan",
                                                                 False, True)
    assert (dn1.state, "FAIL" in dn1.flags, dn1.reason, dn1.available) == (
        "IDLE", True, "capture: failing", False)
    assert set(dn1.flags + dn2.flags) <= {"FAIL", "NOT_RESPONDING"}


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_version_reads_a_node_that_stopped_answering(version):
    """slurmd stopped: IDLE+NOT_RESPONDING (Slurm starts nothing there), then DOWN after
    SlurmdTimeout, reason "Not responding". An up node's stale reason does not fence it."""
    quiet = nodes_of(version, "nodes_not_responding")
    assert (quiet["dn2"].words, quiet["dn2"].available, quiet["dn2"].down) == (
        "IDLE+NOT_RESPONDING", False, True)
    assert quiet["dn2"].describe() == "IDLE+NOT_RESPONDING"  # 24.11's reason is stale
    assert quiet["dn1"].available  # 24.11 keeps the reason of its last FAIL: still up
    gone = nodes_of(version, "nodes_down_not_responding")["dn2"]
    assert (gone.words, gone.available, gone.down) == ("DOWN+NOT_RESPONDING", False, True)
    assert gone.reason.endswith("Not responding")


@pytest.mark.parametrize("version,state,reason", [
    ("v0.0.38", "PENDING", ""),  # requeued: v0.0.38 ignores requeue=false
    *[(v, "NODE_FAIL", "NodeDown") for v in NEW],
])
def test_a_job_on_a_node_set_down(version, state, reason):
    """22.05 requeues the job (PENDING again, no nodes); 24.11 ends it NODE_FAIL."""
    [job] = [j for j in parse_jobs(*cap(version, "jobs_node_down")[:2], version)
             if j.name.startswith("cap_node_job") and j.state != "CANCELLED"]
    assert (job.state, job.reason) == (state, reason)


def test_the_client_reads_every_node_in_one_call(token_file):
    """GET /slurm/<v>/nodes with the SlurmUser token; every node, read by its version."""
    c, s = auto_client(token_file, captured("v0.0.42", "ping_ok"),
                       captured("v0.0.42", "nodes_drain"))
    assert [n.words for n in c.nodes()] == ["IDLE", "IDLE", "IDLE+DRAIN", "MIXED+DRAIN"]
    method, url, headers, *_ = s.calls[1]
    assert (method, url.rsplit("6820", 1)[1], headers["X-SLURM-USER-NAME"]) == (
        "GET", "/slurm/v0.0.42/nodes", "slurm")


def test_a_nodes_answer_without_nodes_is_an_error():
    """No nodes list: SlurmError naming the call (never an empty list, which would
    read as every node up)."""
    with pytest.raises(SlurmError, match="read nodes: the response has no nodes list"):
        parse_nodes(200, {"meta": {}}, "v0.0.42")


# --- choosing the version (auto) ----------------------------------------------------


NOT_FOUND = Resp(404, text="Unable find requested URL. Please view /openapi/v3 for API "
                           "reference.")


def auto_client(token_file, *answers):
    s = FakeSession(*answers)
    return SlurmClient("http://127.0.0.1:6820", token_file=token_file, timeout=2.0,
                       session=s), s


def test_auto_takes_the_newest_version_served(token_file):
    """24.11 answers the first ping (v0.0.42): that one is used for the call."""
    c, s = auto_client(token_file, captured("v0.0.42", "ping_ok"),
                       captured("v0.0.42", "jobs_mixed"))
    assert c.api_version == "auto"
    assert any(j.name == "cap_ok_v0042" for j in c.jobs())
    assert c.api_version == "v0.0.42"
    assert [call[1].rsplit("6820", 1)[1] for call in s.calls] == [
        "/slurm/v0.0.42/ping", "/slurm/v0.0.42/jobs"]


def test_auto_finds_22_05s_only_version(token_file):
    """22.05 answers 404 for v0.0.42 to v0.0.40, then v0.0.38's ping."""
    c, s = auto_client(token_file, NOT_FOUND, NOT_FOUND, NOT_FOUND,
                       captured("v0.0.38", "ping_ok"))
    assert c.negotiate() == "v0.0.38" and len(s.calls) == 4


def test_auto_with_no_common_version_names_both_sides(token_file):
    """A slurmrestd serving none of ours: SlurmUnavailable listing what it serves and what
    we speak; nothing chosen, so the next call asks again."""
    doc = Resp(200, {"paths": {"/slurm/v0.0.37/ping": {}, "/slurm/v0.0.37/jobs": {}}})
    c, s = auto_client(token_file, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, doc)
    with pytest.raises(SlurmUnavailable) as e:
        c.jobs()
    assert "serves API versions v0.0.37" in str(e.value)
    assert "v0.0.42, v0.0.41, v0.0.40, v0.0.38" in str(e.value)
    assert c.api_version == "auto"


def test_auto_with_slurmrestd_unreachable_says_what_it_needs(token_file):
    """Connection refused: SlurmUnavailable naming the versions needed; retried later."""
    c, s = auto_client(token_file)  # every request refused
    with pytest.raises(SlurmUnavailable, match="no API version chosen yet .* v0.0.38"):
        c.negotiate()
    s.answers = [captured("v0.0.41", "ping_ok")]
    assert c.negotiate() == "v0.0.42"  # any answer but a 404 means served


def test_a_version_that_disappears_is_chosen_again(token_file):
    """slurmrestd upgraded under a running orchestrator: the 404 drops the version, and
    the next call chooses again."""
    c, s = auto_client(token_file, NOT_FOUND, NOT_FOUND, NOT_FOUND,
                       captured("v0.0.38", "ping_ok"), NOT_FOUND,
                       captured("v0.0.42", "ping_ok"), captured("v0.0.42", "jobs_mixed"))
    assert c.negotiate() == "v0.0.38"
    with pytest.raises(SlurmUnavailable, match="no longer serves API v0.0.38"):
        c.jobs()
    assert c.jobs() and c.api_version == "v0.0.42"


def test_an_explicit_version_not_served_says_how_to_fix_it(token_file):
    """slurm_api_version = v0.0.38 against 24.11: the 404 names the setting and auto."""
    s = FakeSession(NOT_FOUND)
    c = SlurmClient("http://127.0.0.1:6820", api_version="v0.0.38", token_file=token_file,
                    timeout=2.0, session=s)
    with pytest.raises(SlurmUnavailable, match="does not serve API v0.0.38.*auto"):
        c.jobs()

