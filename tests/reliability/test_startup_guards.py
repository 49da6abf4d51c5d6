"""Startup guards of the state database, through the real ``serve`` command.

* A second orchestrator on the same state database (also reached through a
  symbolic link) refuses to start: exit code 3 and a message naming the
  holder; the first one keeps serving.
* A corrupt database (garbage bytes, a truncated file, a page overwritten
  with random bytes: the header page and 9 others at random in CI, every
  page with ``WFM_RELIABILITY_PAGES=0``), a foreign one (another application's
  SQLite file) or a newer one (a schema version this orchestrator does not
  know) is refused with exit code 3 and a message saying which, and the file
  is left byte for byte as it was.
"""

# ruff: noqa: S311 - random test workloads and timings, not cryptography

from __future__ import annotations

import os
import random
import shutil
import sqlite3

import pytest

from wfm_orchestrator.store import MIGRATIONS

from .harness import (
    Http,
    Orchestrator,
    env_int,
    figures,
    free_port,
    gbf,
    read_rows,
    run_cli,
    small_config,
)

# Real server processes, no Slurm: runs without the mini-cluster.
pytestmark = [pytest.mark.reliability, pytest.mark.server]

EXIT_STORE = 3
PAGE = 4096


# populated: the bytes of a state database a real server wrote (conftest.py).


CORRUPT = "not an SQLite database|is corrupt|unusable: database disk image is malformed|" \
          "unusable: file is not a database"


def refused(tmp_path, data: bytes | None, expect: str) -> str:
    """Write ``data`` as the state database, run ``serve``: refused, file untouched.

    ``expect``: the reason the message must give ('|' separates alternatives).
    """
    port = free_port()
    config = small_config(str(tmp_path), port)
    db = str(tmp_path / "state.db")
    if data is not None:
        with open(db, "wb") as fh:
            fh.write(data)
    out = run_cli(config)
    assert out.returncode == EXIT_STORE, (
        f"expected exit code {EXIT_STORE}, got {out.returncode}:\n{out.stderr[-2000:]}")
    lead = "state database unusable, not starting: "
    assert lead in out.stderr, out.stderr[-2000:]
    message = out.stderr[out.stderr.index(lead) + len(lead):].strip()
    assert db in message, f"the message does not name the file {db}: {message}"
    assert any(e in message for e in expect.split("|")), f"expected {expect!r} in: {message}"
    if data is not None:
        with open(db, "rb") as fh:
            assert fh.read() == data, "the refused database was modified"
        wal = db + "-wal"
        assert not os.path.exists(wal) or os.path.getsize(wal) == 0, (
            "a WAL with content was left next to the refused database")
    return message


def test_second_orchestrator_on_the_same_database_refuses_to_start(tmp_path):
    """Exit code 3 naming the holder's pid; the first keeps serving, its data intact."""
    port = free_port()
    config = small_config(str(tmp_path), port)
    first = Orchestrator(config, port, str(tmp_path / "first.log"))
    first.start()
    http = Http(port)
    try:
        assert http.request("POST", "/v1.0.0/ephemeralservice/reserve",
                            gbf("kept", 2, 100))[0] == 200
        second_dir = tmp_path / "second"
        second_dir.mkdir()
        second = small_config(str(second_dir), free_port())
        text = open(second).read().replace(str(second_dir / "state.db"),
                                           str(tmp_path / "state.db"))
        open(second, "w").write(text)
        out = run_cli(second)
        assert out.returncode == EXIT_STORE, out.stderr[-2000:]
        assert f"in use by another orchestrator (pid {first.proc.pid})" in out.stderr, out.stderr
        assert http.request("GET", "/v1.0.0/ephemeralservice/status/kept")[0] == 200
        assert first.running
    finally:
        http.close()
        first.stop()
    assert read_rows(str(tmp_path / "state.db"))["kept"].state == "FREE"


def test_second_orchestrator_through_a_symlink_refuses_to_start(tmp_path):
    """The same database file reached through a symbolic link is the same database."""
    port = free_port()
    config = small_config(str(tmp_path), port)
    first = Orchestrator(config, port, str(tmp_path / "first.log"))
    first.start()
    try:
        other = tmp_path / "other"
        other.mkdir()
        os.symlink(tmp_path / "state.db", other / "linked.db")
        second = small_config(str(other), free_port())
        text = open(second).read().replace(str(other / "state.db"), str(other / "linked.db"))
        open(second, "w").write(text)
        out = run_cli(second)
        assert out.returncode == EXIT_STORE, (
            f"a second orchestrator started on the same database through a symlink "
            f"(exit {out.returncode}):\n{out.stderr[-1500:]}")
        assert "in use by another orchestrator" in out.stderr, out.stderr
    finally:
        first.stop()


def test_garbage_bytes_are_refused_and_kept(tmp_path):
    """A file that is not SQLite at all."""
    refused(tmp_path, random.Random(1).randbytes(64 * 1024), "is not an SQLite database")


@pytest.mark.parametrize("keep", [10, 16, 100, PAGE * 3, 0.5])
def test_truncated_database_is_refused_and_kept(tmp_path, populated, keep):
    """Cut at a few bytes, in the header, at a page boundary, in the middle of a page."""
    size = int(len(populated) * keep) + 1000 if isinstance(keep, float) else keep
    refused(tmp_path, populated[:size], CORRUPT)


def test_overwritten_pages_are_refused_and_kept(tmp_path, populated):
    """Pages overwritten with random bytes, one at a time: every one is detected.

    CI tries the header page and 9 others at random; WFM_RELIABILITY_PAGES=0 tries all.
    """
    rng = random.Random()
    pages = len(populated) // PAGE
    wanted = env_int("WFM_RELIABILITY_PAGES", 10)
    chosen = list(range(pages)) if wanted <= 0 or wanted >= pages else \
        [0, *sorted(rng.sample(range(1, pages), wanted - 1))]
    reasons: dict[str, int] = {}
    for page in chosen:
        case = tmp_path / f"page{page + 1}"
        # Closed, as a state directory must be: an open one holding wfm.conf is refused
        # before any page is read (docs/security.md §9).
        case.mkdir(mode=0o700)
        data = bytearray(populated)
        data[page * PAGE:(page + 1) * PAGE] = rng.randbytes(PAGE)
        message = refused(case, bytes(data), CORRUPT)
        reason = ("not SQLite (page 1 is the header)" if "not an SQLite" in message
                  else message.splitlines()[-1].split(": ")[-1][:60])
        reasons[reason] = reasons.get(reason, 0) + 1
    figures("startup guards", database_pages=pages, pages_overwritten=len(chosen),
            pages_refused=len(chosen), which=",".join(str(p + 1) for p in chosen),
            reasons="; ".join(f"{k} x{v}" for k, v in sorted(reasons.items())))


def test_foreign_sqlite_database_is_refused_and_kept(tmp_path):
    """Another application's SQLite file (its own tables, no application id of ours)."""
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, login TEXT)")
    conn.executemany("INSERT INTO users (login) VALUES (?)", [(f"u{i}",) for i in range(50)])
    conn.commit()
    conn.close()
    refused(tmp_path, path.read_bytes(), "another application")


def test_foreign_database_with_another_application_id_is_refused(tmp_path):
    """An empty SQLite file marked by another application."""
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.close()
    refused(tmp_path, path.read_bytes(), "another application")


def test_newer_schema_is_refused_and_kept(tmp_path, populated):
    """A database from a newer orchestrator (higher user_version)."""
    path = tmp_path / "newer.db"
    path.write_bytes(populated)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    assert not os.path.exists(str(path) + "-wal") or os.path.getsize(str(path) + "-wal") == 0
    refused(tmp_path, path.read_bytes(), "newer than this orchestrator knows")


def test_intact_copy_still_starts(tmp_path, populated):
    """The control case: the same bytes, untouched, start and keep every reservation."""
    (tmp_path / "state.db").write_bytes(populated)
    port = free_port()
    server = Orchestrator(small_config(str(tmp_path), port), port, str(tmp_path / "s.log"))
    server.start()
    http = Http(port)
    try:
        status, answer = http.request("GET", "/v1.0.0/ephemeralservice/status")
        assert status == 200 and len(answer) == 300
    finally:
        http.close()
        server.stop()
    shutil.rmtree(tmp_path, ignore_errors=True)
