"""tests/poll.py: the one way a test waits on a deadline."""

import time

import pytest

from tests.poll import poll, poll_until


def counter(truthy_from: int, value: object = "ready"):
    """A probe falsy on its first ``truthy_from - 1`` calls, then ``value``; counts calls."""
    calls = []

    def probe():
        calls.append(time.monotonic())
        return value if len(calls) >= truthy_from else None

    return probe, calls


def test_poll_until_returns_the_first_truthy_value_of_the_probe():
    """The probe is called again until truthy, and that very value is returned."""
    probe, calls = counter(3, {"status": "ALLOCATED"})
    assert poll_until(probe, "ready", timeout=5, interval=0.01) == {"status": "ALLOCATED"}
    assert len(calls) == 3


def test_poll_until_does_not_wait_when_the_condition_already_holds():
    """A probe true at once: one call, no sleep."""
    probe, calls = counter(1)
    started = time.monotonic()
    assert poll_until(probe, "ready", timeout=5, interval=1.0) == "ready"
    assert len(calls) == 1 and time.monotonic() - started < 0.5


def test_poll_until_fails_after_the_timeout_with_what_and_the_last_state_seen():
    """The failure says what was awaited, for how long, and what was seen last."""
    probe, calls = counter(10**9)
    started = time.monotonic()
    with pytest.raises(AssertionError) as failed:
        poll_until(probe, "service s1: expected ALLOCATED", timeout=0.3, interval=0.05,
                   last=lambda: {"status": "STAGINGIN"})
    elapsed = time.monotonic() - started
    assert str(failed.value) == ("service s1: expected ALLOCATED: still not so after 0.3 s; "
                                 "last seen: {'status': 'STAGINGIN'}")
    assert 0.3 <= elapsed < 2.0 and len(calls) >= 3
    assert calls[-1] - calls[0] >= 0.3  # the probe was tried again up to the deadline


def test_poll_until_shows_a_text_last_state_as_is():
    """A log tail keeps its line breaks in the failure message (not a repr)."""
    with pytest.raises(AssertionError) as failed:
        poll_until(lambda: None, "answers", timeout=0, last=lambda: "line 1\nline 2")
    assert str(failed.value) == "answers: still not so after 0 s; last seen: line 1\nline 2"


def test_poll_until_without_last_names_only_what_and_the_timeout():
    with pytest.raises(AssertionError, match=r"^job 7: expected RUNNING: still not so after "
                                             r"0\.1 s$"):
        poll_until(lambda: 0, "job 7: expected RUNNING", timeout=0.1, interval=0.02)


def test_an_exception_in_the_probe_ends_the_wait_at_once():
    """A probe may raise to stop waiting (the process it waits for died)."""
    def probe():
        raise RuntimeError("the server exited with 1")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with 1"):
        poll_until(probe, "answers", timeout=10)
    assert time.monotonic() - started < 1.0


def test_poll_returns_none_after_the_timeout_instead_of_failing():
    """poll (the non-failing form) gives None when the condition never held."""
    probe, calls = counter(10**9)
    assert poll(probe, timeout=0.2, interval=0.05) is None
    assert len(calls) >= 2
    probe, _ = counter(2, 42)
    assert poll(probe, timeout=5, interval=0.01) == 42
