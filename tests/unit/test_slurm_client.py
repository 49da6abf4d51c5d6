"""SlurmClient without a network: a fake session plays slurmrestd."""

import base64
import json
import os
import time

import pytest
import requests
from urllib3.exceptions import NewConnectionError, ProtocolError

from wfm_orchestrator.errors import InvalidRequest, SlurmAuthError, SlurmError, SlurmUnavailable
from wfm_orchestrator.slurm import JobSpec, SlurmClient

# Slurm 22.05's answers; the client with 24.11's and choosing a version: further down.
CAPTURED = os.path.join(os.path.dirname(__file__), "captured")


def jwt(user, exp_in=3600):
    def b64(d):
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
    return f"{b64({'alg': 'HS256'})}.{b64({'sun': user, 'exp': int(time.time()) + exp_in})}.sig"


class Resp:
    def __init__(self, status, body=None, text=None):
        self.status_code = status
        self.text = text if text is not None else json.dumps(body)

    def json(self):
        return json.loads(self.text)


def captured(name, version="v0.0.38"):
    with open(os.path.join(CAPTURED, version, name + ".json")) as fh:
        d = json.load(fh)
    return Resp(d["status"], d["body"], d["text"])


def refused():
    return requests.exceptions.ConnectionError(
        NewConnectionError(None, "[Errno 111] Connection refused"))


def dropped():
    return requests.exceptions.ConnectionError(
        ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")))


class FakeSession:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def mount(self, prefix, adapter):
        pass

    def close(self):
        pass

    def request(self, method, url, headers=None, data=None, params=None, timeout=None):
        self.calls.append((method, url, dict(headers or {}), data, params, timeout))
        a = self.answers.pop(0) if self.answers else refused()
        if isinstance(a, BaseException):
            raise a
        return a


def client(token_file, *answers, timeout=2.0, api_version="v0.0.38"):
    s = FakeSession(*answers)
    return SlurmClient("http://127.0.0.1:6820", api_version=api_version, token_file=token_file,
                       timeout=timeout, session=s), s


SPEC = JobSpec(name="j1", command=["/bin/true"], partition="compute")


def test_submit_with_slurm_user_token_names_the_user(token_file):
    """No user token: SlurmUser's token, X-SLURM-USER-NAME = the user."""
    c, s = client(token_file, captured("submit_ok"))
    assert c.submit(SPEC, user="alice") > 0
    method, url, headers, data, _, timeout = s.calls[0]
    assert (method, url) == ("POST", "http://127.0.0.1:6820/slurm/v0.0.38/job/submit")
    assert headers["X-SLURM-USER-NAME"] == "alice"
    assert headers["X-SLURM-USER-TOKEN"] == open(token_file).read().strip()
    assert json.loads(data)["job"]["name"] == "j1" and 0 < timeout <= 2.0


def test_submit_with_the_users_own_token(token_file):
    """A user token is sent as is, with that user's name."""
    tok = jwt("alice")
    c, s = client(token_file, captured("submit_ok"))
    c.submit(SPEC, user="alice", user_token=tok)
    assert s.calls[0][2]["X-SLURM-USER-TOKEN"] == tok


def test_submit_is_retried_when_the_connection_was_refused(token_file):
    """Refused before sending: safe to send again."""
    c, s = client(token_file, refused(), refused(), captured("submit_ok"))
    assert c.submit(SPEC, user="alice") > 0 and len(s.calls) == 3


def test_submit_is_never_resent_once_it_may_have_arrived(token_file):
    """A dropped connection after sending: no second POST, SlurmUnavailable says so."""
    c, s = client(token_file, dropped(), captured("submit_ok"))
    with pytest.raises(SlurmUnavailable, match="may have arrived"):
        c.submit(SPEC, user="alice")
    assert len(s.calls) == 1


def test_reads_are_retried_on_any_connection_error(token_file):
    """GET /jobs after a dropped connection is sent again."""
    c, s = client(token_file, dropped(), captured("jobs_mixed"))
    assert c.jobs() and len(s.calls) == 2


def test_http_errors_are_not_retried(token_file):
    """A 500 from Slurm is an answer: raised once with Slurm's text."""
    c, s = client(token_file, captured("submit_bad_partition"))
    with pytest.raises(SlurmError, match="Invalid partition name"):
        c.submit(SPEC, user="alice")
    assert len(s.calls) == 1


def test_unreachable_slurmrestd_fails_within_the_timeout(token_file):
    """Always refused: SlurmUnavailable before the deadline."""
    c, _ = client(token_file, timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(SlurmUnavailable, match="slurmrestd at http://127.0.0.1:6820"):
        c.ping()
    assert time.monotonic() - t0 < 1.5


def test_read_timeout_is_unavailable(token_file):
    """A read timeout is not retried past the deadline."""
    c, s = client(token_file, requests.exceptions.ReadTimeout("slow"))
    with pytest.raises(SlurmUnavailable, match="no answer within"):
        c.jobs()


@pytest.mark.parametrize("token,match", [
    ("garbage", "not a JWT"),
    ("a b", "malformed"),
    (None, "expired"),
])
def test_bad_user_tokens_are_refused_before_sending(token_file, token, match):
    """Malformed or expired tokens: SlurmAuthError, nothing sent."""
    c, s = client(token_file)
    with pytest.raises(SlurmAuthError, match=match):
        c.submit(SPEC, user="alice", user_token=token or jwt("alice", exp_in=-10))
    assert s.calls == []


def test_a_token_of_another_user_is_refused(token_file):
    """bob's token for alice: SlurmAuthError naming both."""
    c, _ = client(token_file)
    with pytest.raises(SlurmAuthError, match="belongs to bob"):
        c.submit(SPEC, user="alice", user_token=jwt("bob"))


def test_refused_token_with_controller_up_is_an_auth_error(token_file):
    """-1 on the user's call, the SlurmUser ping works: SlurmAuthError."""
    c, s = client(token_file, captured("auth_garbage_jobs"), captured("ping_ok"))
    with pytest.raises(SlurmAuthError, match="refused the token"):
        c.jobs(user="alice", user_token=jwt("alice"))
    assert s.calls[1][1].endswith("/ping")


def test_refused_everything_with_controller_unreachable_is_unavailable(token_file):
    """-1 on the call and the confirming ping cannot connect: SlurmUnavailable."""
    c, _ = client(token_file, captured("ctld_down_jobs"), requests.exceptions.ReadTimeout())
    with pytest.raises(SlurmUnavailable):
        c.jobs()


def test_token_file_is_reread_when_it_changes(token_file):
    """A rewritten token file is picked up without a restart."""
    c, s = client(token_file, captured("ping_ok"), captured("ping_ok"))
    c.ping()
    new = jwt("slurm", exp_in=7200)
    with open(token_file, "w") as fh:
        fh.write(new)
    os.utime(token_file, (time.time() + 5, time.time() + 5))
    c.ping()
    assert s.calls[1][2]["X-SLURM-USER-TOKEN"] == new


def test_missing_token_file_is_an_auth_error(tmp_path):
    """An unreadable token file is reported with its path."""
    c, _ = client(str(tmp_path / "none.jwt"))
    with pytest.raises(SlurmAuthError, match="none.jwt"):
        c.ping()


def test_cancel_of_an_unknown_job_is_false(token_file):
    """Cancel is idempotent: unknown job -> False; delivered -> True."""
    c, s = client(token_file, captured("cancel_unknown"), captured("cancel_ok"))
    assert c.cancel(999999) is False
    assert c.cancel(12, signal="SIGKILL") is True
    assert s.calls[1][0] == "DELETE" and s.calls[1][4] == {"signal": "SIGKILL"}


def test_cancel_checks_its_arguments(token_file):
    """Bad ids and signals are refused before any call."""
    c, s = client(token_file)
    for kw in ({"job_id": 0}, {"job_id": "1; rm"}, {"job_id": 1, "signal": "KILL; x"}):
        with pytest.raises(InvalidRequest):
            c.cancel(**kw)
    assert s.calls == []


def test_job_states_reads_all_jobs_once(token_file):
    """Many ids, one GET /jobs."""
    c, s = client(token_file, captured("jobs_mixed"))
    states = c.job_states([8, 9, 999999])
    assert set(states) == {8, 9} and len(s.calls) == 1
    assert states[9].exit_code == 3


def test_unknown_job_is_none(token_file):
    """GET /job/{id} of a job Slurm forgot -> None."""
    c, _ = client(token_file, captured("job_unknown"))
    assert c.job(999999) is None


def test_tokens_never_appear_in_errors(token_file):
    """Error messages do not quote tokens."""
    tok = jwt("alice")
    c, _ = client(token_file, captured("auth_garbage_jobs"), captured("ping_ok"))
    with pytest.raises(SlurmAuthError) as e:
        c.jobs(user="alice", user_token=tok)
    assert tok not in str(e.value) and tok.split(".")[1] not in str(e.value)


def test_unsupported_api_version_is_refused():
    """Only versions with builders and readers (or auto)."""
    with pytest.raises(InvalidRequest):
        SlurmClient("http://x", api_version="v0.0.39")


def test_touch_updates_a_job_with_its_own_comment_and_an_unknown_job_is_false(token_file):
    """stage_in_nudge.py's update: POST /job/{id} {"comment": ...} as the SlurmUser
    (answers captured from slurmrestd 22.05)."""
    c, s = client(token_file, captured("update_ok"), captured("update_unknown"))
    assert c.touch(12, "wfm:tag") is True
    method, url, headers, data, _, _ = s.calls[0]
    assert (method, url) == ("POST", "http://127.0.0.1:6820/slurm/v0.0.38/job/12")
    assert json.loads(data) == {"comment": "wfm:tag"}
    assert headers["X-SLURM-USER-NAME"] == "slurm"
    assert c.touch(999999, "x") is False
    assert c.schedules_after_stage_in is False
    assert client(token_file, api_version="v0.0.42")[0].schedules_after_stage_in is True
