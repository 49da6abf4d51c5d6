"""A start rebuilds the reservations from the state database (issue #21): in arrival order
whatever the table's, each holding resources sharing its placement with the allocator,
the strings requests repeat kept once."""

from __future__ import annotations

from wfm_orchestrator.model import parse_reserve
from wfm_orchestrator.resource_manager import ResourceManager, State
from wfm_orchestrator.store import Store

from ..conftest import connect_db


def body(name: str, cores: int = 1) -> dict:
    return {"name": name, "user": "alice", "user_slurm_token": "token-of-alice", "type": "GBF",
            "location": ["loc1"], "attributes": {"cores": cores, "gssize": 10,
                                                 "mountpoint": "/scratch"}}


def test_a_start_keeps_arrival_order_when_the_table_has_another(make_config, state_db):
    """A name released and reserved again keeps its row (its place in the table) under a
    new seq: after a restart the lists and the queue are in seq order still."""
    config = make_config()
    store = Store(config.state_db)
    rm = ResourceManager(config, store)
    for name in ("a", "b", "c"):
        rm.reserve(parse_reserve(body(name), config))
    rm.release("a")
    rm.reserve(parse_reserve(body("a"), config))  # seq 4, first row of the table
    for name in ("f2", "f3", "f4"):  # the other datanodes, whole (8 cores each)
        rm.reserve(parse_reserve(body(name, cores=8), config))
    for name in ("q0", "q1", "q2"):  # these wait
        rm.reserve(parse_reserve(body(name, cores=8), config))
    rm.release("q0")
    rm.reserve(parse_reserve(body("q0", cores=8), config))  # queued last, row before q1's
    expected = [r.name for r in rm.live()]
    queue = [r.name for r in rm.queued(10)]
    store.write([]).wait()
    store.close()

    store = Store(config.state_db)
    again = ResourceManager(config, store)
    assert [r.name for r in again.live()] == expected
    assert [item[0].name for item in again.page(None, None).items] == expected
    assert [r.name for r in again.queued(10)] == queue and queue[-1] == "q0"
    assert again.snapshot("q0")[1] == len(queue)  # its queue position, by bisection
    store.close()


def test_a_restored_reservation_shares_its_placement_and_its_strings(make_config, state_db):
    config = make_config()
    store = Store(config.state_db)
    rm = ResourceManager(config, store)
    for name in ("r1", "r2"):
        rm.reserve(parse_reserve(body(name), config))
    store.write([]).wait()
    store.close()

    store = Store(config.state_db)
    again = ResourceManager(config, store)
    r1, r2 = again.get("r1"), again.get("r2")
    assert r1.state == State.FREE and r1.placement
    for field in ("user", "user_slurm_token", "type", "mountpoint"):
        assert getattr(r1.request, field) is getattr(r2.request, field)
    assert r1.request.locations[0] is r2.request.locations[0]
    placement = r1.placement
    assert again.allocator.release("r1") is placement  # the allocator's own list
    store.close()


def test_reservations_with_one_request_text_keep_their_own_names_and_tokens(make_config,
                                                                          state_db):
    """A start decodes a ``request`` text many reservations share once (decode_rows): each
    still gets its own name and token, and the fields after them are the same objects."""
    config = make_config()
    store = Store(config.state_db)
    rm = ResourceManager(config, store)
    for name, token in (("s1", "token-1"), ("s2", "token-2"), ("s3", "token-1")):
        rm.reserve(parse_reserve(body(name) | {"user_slurm_token": token}, config))
    store.write([]).wait()
    store.close()
    db = connect_db(config.state_db)
    assert len({text for (text,) in db.execute("SELECT request FROM reservation")}) == 1
    db.close()

    store = Store(config.state_db)
    again = ResourceManager(config, store)
    s1, s2, s3 = (again.get(name).request for name in ("s1", "s2", "s3"))
    assert (s1.name, s2.name, s3.name) == ("s1", "s2", "s3")
    assert (s1.user_slurm_token, s2.user_slurm_token, s3.user_slurm_token) == (
        "token-1", "token-2", "token-1")
    assert s1[3:] == s2[3:] and s1[1] == s2[1]  # all but the name and the token
    assert s1.locations is s2.locations is s3.locations
    store.close()


def test_a_request_stored_as_an_object_before_the_array_form_loads_the_same(make_config,
                                                                          state_db):
    """Rows written before the request column held an array keep their JSON object until
    they change: a start reads both forms to the same request."""
    import ujson

    config = make_config()
    store = Store(config.state_db)
    rm = ResourceManager(config, store)
    rm.reserve(parse_reserve(body("old"), config))
    job = "alice_job42"
    rm.reserve(parse_reserve(body(job), config, job_id=42))
    store.write([]).wait()
    store.close()
    store = Store(config.state_db)
    loaded = ResourceManager(config, store)
    expected = {name: loaded.get(name).request for name in ("old", job)}
    store.close()
    assert expected[job].job_id == 42
    db = connect_db(config.state_db)
    stored = dict(db.execute("SELECT name, request FROM reservation").fetchall())
    assert all(type(ujson.loads(text)) is list for text in stored.values())
    # The object form rows of earlier versions hold (its keys sorted, the name in it).
    old = expected["old"]
    db.execute("UPDATE reservation SET request = ? WHERE name = 'old'", (ujson.dumps({
        "cores": old.cores, "flavor": old.flavor, "locations": list(old.locations),
        "mountpoint": old.mountpoint, "msize": old.msize, "name": "old", "servers": old.servers,
        "ssize": old.ssize, "targets": list(old.targets), "type": old.type, "user": old.user},
        sort_keys=True),))
    db.commit()
    db.close()

    store = Store(config.state_db)
    again = ResourceManager(config, store)
    assert again.get("old").request == expected["old"]
    assert again.get(job).request == expected[job]
    assert again.get("old").request.locations == ("loc1",)
    store.close()
