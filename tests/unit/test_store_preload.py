"""A start's reader process (store_preload.py): the reservations it reads and decodes on
the other CPU make exactly the records an in-process read makes, and whatever goes wrong
with it (another schema version, a failure halfway, a thread already running) the start
reads in-process instead. SQLite only.

``os.fork`` is only safe in a process with one thread, and pytest's may have more: each
start runs in a fresh interpreter (PROBE)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from wfm_orchestrator.config import parse_config
from wfm_orchestrator.model import parse_reserve
from wfm_orchestrator.resource_manager import ResourceManager
from wfm_orchestrator.store import Store

from ..conftest import SMALL_CONF, server_env

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                reason="the reader process runs only with two CPUs or more")

# The records a start makes, as comparable JSON, and whether the reader process made them.
# argv: config, how ("preload", "in-process", "fail-halfway", "old-schema", "threaded").
PROBE = """
import json, logging, sys, threading
logging.basicConfig(level=logging.INFO)
from wfm_orchestrator import store_preload
from wfm_orchestrator.config import load_config
from wfm_orchestrator.repositories import reservations
from wfm_orchestrator.resource_manager import ResourceManager
from wfm_orchestrator.store import Store

config, how = load_config(sys.argv[1]), sys.argv[2]
preload = reservations.PRELOAD
if how == "fail-halfway":
    store_preload.CHUNK_ROWS = 2
    calls = []
    def decode(rows):
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("the second chunk breaks")
        return reservations.decode_rows(rows)
    preload = (preload[0], decode)
elif how == "old-schema":
    import wfm_orchestrator.store as store_module
    real = store_module.MIGRATIONS
    store_module.MIGRATIONS = real + ["SELECT 1"]  # this code "knows" one version more
elif how == "threaded":
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
store = Store(config.state_db, preload=None if how == "in-process" else preload)
if how == "old-schema":
    store_module.MIGRATIONS = real
forked = store._engine._preload is not None
if how == "refused":  # the configuration lost a datanode that reservations hold
    import os
    from wfm_orchestrator.errors import StoreError
    pid = store._engine._preload._pid
    try:
        ResourceManager(config, store)
    except StoreError as e:
        try:
            os.waitpid(pid, os.WNOHANG)
            reaped = False
        except ChildProcessError:
            reaped = True
        print(json.dumps({"forked": forked, "refused": str(e), "reaped": reaped}))
        sys.exit(0)
rm = ResourceManager(config, store)
records = [[r.name, list(r.request), r.state.value, r.seq,
            r.placement and [[p.server, list(p.core_list), p.msize, p.ssize]
                             for p in r.placement],
            r.detail, r.created, r.updated, r.bound_job, r.held_since, r.claimed]
           for r in rm.live()] + [["queued", [r.name for r in rm.queued(100)]]]
free = {n: [len(f.core_list), f.msize, f.ssize] for n in config.datanodes
        for f in [rm.allocator.free(n)]}
# each held placement the allocator's own list, each repeated string one object
shared = all(rm.allocator.release(r.name) is r.placement for r in rm.live()
             if r.state.value in ("FREE", "ALLOCATED"))
shared &= len({id(r.request.user_slurm_token) for r in rm.live()}) == 1
if stop := locals().get("stop"):
    stop.set()
store.close()
print(json.dumps({"forked": forked, "records": records, "free": free, "shared": shared}))
"""


def start(conf, how: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(conf), how], env=server_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    result["log"] = out.stderr
    return result


def body(name: str, cores: int = 1, **more) -> dict:
    return {"name": name, "user": "alice", "user_slurm_token": "token-of-alice", "type": "GBF",
            "location": ["loc1"], "attributes": {"cores": cores, "gssize": 10,
                                                 "mountpoint": "/scratch"}, **more}


def stopped_server(tmp_path):
    """The configuration of a database with reservations in every state: held (FREE,
    ALLOCATED with its job, claimed), released with its reason, queued; then closed as a
    stopped server leaves it."""
    text = SMALL_CONF.format(state_db=tmp_path / "state.db", queue_policy="fifo")
    path = tmp_path / "wfm.conf"
    path.write_text(text)
    config = parse_config(text, str(path))
    store = Store(config.state_db)
    rm = ResourceManager(config, store)
    for i in range(7):
        rm.reserve(parse_reserve(body(f"s{i}", cores=1 + i % 3), config))
    rm.reserve(parse_reserve(body("bob_s1_svc", user="bob", type="NFS",
                                  location=["loc2"]), config))
    rm.allocate("s1", job_id=42)
    rm.claim("s2", "job 7 of uid 1001")
    rm.release("s3", "stopped by its user")
    for name in ("f2", "f3", "f4", "q0", "q1"):  # whole datanodes of loc1: four wait
        rm.reserve(parse_reserve(body(name, cores=8), config))
    store.write([]).wait()
    store.close()
    return path


def test_the_reader_process_makes_the_records_an_in_process_read_makes(tmp_path):
    conf = stopped_server(tmp_path)
    here = start(conf, "in-process")
    there = start(conf, "preload")
    assert not here["forked"] and there["forked"]
    assert there["records"] == here["records"]
    assert there["free"] == here["free"]
    assert there["shared"] and here["shared"]
    queued = here["records"][-1]
    assert queued == ["queued", ["f3", "f4", "q0", "q1"]]
    assert len(here["records"]) > 10  # what the comparison compares


def test_a_reader_failing_halfway_is_given_up_and_the_start_reads_in_process(tmp_path):
    conf = stopped_server(tmp_path)
    here = start(conf, "in-process")
    broken = start(conf, "fail-halfway")
    assert broken["forked"]
    assert "the reader process failed" in broken["log"]
    assert "the second chunk breaks" in broken["log"]
    assert broken["records"] == here["records"] and broken["free"] == here["free"]


def test_a_database_of_another_schema_version_is_read_in_process(tmp_path):
    conf = stopped_server(tmp_path)
    here = start(conf, "in-process")
    other = start(conf, "old-schema")
    assert other["forked"]
    assert "did not read it (schema version" in other["log"]
    assert other["records"] == here["records"]


def test_a_start_refused_halfway_ends_its_reader_process(tmp_path):
    """The records it sent no longer fit (a datanode left the configuration): the start
    is refused as without it, and the child is ended and reaped, not left writing."""
    conf = stopped_server(tmp_path)
    conf.write_text(conf.read_text().replace("Datanodes=dn[1-2]", "Datanodes=dn1")
                    .replace("Datanode=dn[1-4]", "Datanode=dn[1,3-4]"))
    refused = start(conf, "refused")
    assert refused["forked"] and refused["reaped"]
    assert "no longer fits the configured datanodes" in refused["refused"]


def test_no_reader_process_while_another_thread_runs(tmp_path):
    """A fork copies locks other threads may hold: none is made then (a standby taking
    over, tests serving in threads)."""
    conf = stopped_server(tmp_path)
    threaded = start(conf, "threaded")
    assert not threaded["forked"]
    assert threaded["records"] == start(conf, "in-process")["records"]


def test_no_reader_process_for_a_new_file(tmp_path):
    from wfm_orchestrator.repositories import reservations

    store = Store(str(tmp_path / "state.db"), preload=reservations.PRELOAD)
    try:
        assert store.preloaded(reservations.PRELOAD[0]) is None
    finally:
        store.close()


PIN = """
import json, os, threading
from wfm_orchestrator.cli import _cpus_wanted, _pin_cpus
before = sorted(os.sched_getaffinity(0))
stop = threading.Event()
started = threading.Thread(target=stop.wait, daemon=True)
started.start()  # a thread the start made (the store's) before the pinning
wanted = _cpus_wanted("auto")
_pin_cpus(wanted)
print(json.dumps([before, wanted, sorted(os.sched_getaffinity(0)),
                  sorted(os.sched_getaffinity(started.native_id))]))
stop.set()
"""


def test_the_server_is_pinned_to_its_cpus_once_started_every_thread_of_it():
    """``cpus = auto``: the start runs on every CPU (the reader process, the check), then
    every thread of the server, those started meanwhile too, is confined to one."""
    out = subprocess.run([sys.executable, "-c", PIN], env=server_env(), capture_output=True,
                         text=True, timeout=60, check=True)
    before, wanted, main, thread = json.loads(out.stdout)
    assert len(before) >= 2 and wanted == before[:1]
    assert main == wanted and thread == wanted
