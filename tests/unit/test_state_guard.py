"""The resource manager's lock while its state is not the durable one (state_guard.py)."""

import threading

import pytest

from wfm_orchestrator.errors import StateNotLoaded, StoreError
from wfm_orchestrator.state_guard import StateLock


def attempt(lock: StateLock, wait: float = 5.0) -> list[BaseException | None]:
    """``with lock`` on another thread; what it raised (None: it was entered), or nothing
    if it did not finish within ``wait`` s."""
    out: list[BaseException | None] = []

    def enter():
        try:
            with lock:
                out.append(None)
        except StateNotLoaded as e:
            out.append(e)

    thread = threading.Thread(target=enter, daemon=True)
    thread.start()
    thread.join(timeout=wait)
    return out


def test_a_current_state_is_an_ordinary_lock():
    lock = StateLock()
    assert attempt(lock) == [None]
    with lock.held():
        assert attempt(lock, wait=0.2) == []  # waits for the holder, as a lock does
    assert attempt(lock) == [None]  # and is entered once the holder is done


def test_a_stale_state_is_refused_at_once_even_while_the_reader_holds_the_lock():
    lock = StateLock()
    lock.stale = "read failed: connection refused"
    with lock.held():  # the read again, waiting for an unreachable database
        [error] = attempt(lock)
    assert isinstance(error, StateNotLoaded) and isinstance(error, StoreError)
    assert "connection refused" in str(error) and "nothing was done" in str(error)
    with pytest.raises(StateNotLoaded):
        with lock:
            pass
    lock.stale = None  # read again
    assert attempt(lock) == [None]


def test_a_use_waiting_while_the_state_turns_stale_is_refused_when_it_gets_the_lock():
    lock = StateLock()
    entered = threading.Event()
    out: list[BaseException | None] = []

    def waiter():
        entered.set()
        try:
            with lock:
                out.append(None)
        except StateNotLoaded as e:
            out.append(e)

    with lock.held():  # the refused commit's reload, which fails
        thread = threading.Thread(target=waiter, daemon=True)
        thread.start()
        entered.wait(5)
        lock.stale = "read failed"
    thread.join(timeout=5)
    assert len(out) == 1 and isinstance(out[0], StateNotLoaded)
