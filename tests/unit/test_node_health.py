"""Slurm's state of each datanode (#19 item 2): a node Slurm keeps from new jobs gets no new
placement, comes back when Slurm reports it up, and the services on a DOWN node say so.

The readers of each API version are tested on captured answers in test_slurm_versions.py.
"""

from __future__ import annotations

import logging

import pytest

from wfm_orchestrator.errors import ConfigError
from wfm_orchestrator.follower import Follower
from wfm_orchestrator.model import DatanodeState, NodeReport, down_note
from wfm_orchestrator.node_health import NodeHealth, datanode_reports
from wfm_orchestrator.slurm.nodes import NodeState

from ..conftest import LARGE, SBB, SMALL_CONF, reserve
from ..fake_slurm import FakeSlurm
from .test_drain import drain, placed_on
from .test_metrics import scrape, value

FAN = NodeReport("DOWN (fan)", down=True)
DISKS = NodeReport("IDLE+DRAIN (new disks)")


def large(i):
    return dict(LARGE, name=f"alice_s_l{i}")


def fill_but_one(client, rm, down="dn1"):
    """Four whole-node reservations with ``down`` fenced: three placed, the fourth queued."""
    for i in range(4):
        reserve(client, large(i))
    assert [rm.get(f"alice_s_l{i}").state.value for i in range(4)] == [
        "FREE", "FREE", "FREE", "QUEUED"]
    assert down not in {s for i in range(3) for s in placed_on(client, f"alice_s_l{i}")}


# --- which Slurm states keep a datanode from new placements ----------------------------


@pytest.mark.parametrize("state,flags,available,down", [
    ("IDLE", (), True, False),
    ("MIXED", (), True, False),
    ("ALLOCATED", (), True, False),
    ("IDLE", ("COMPLETING",), True, False),
    ("IDLE", ("POWERED_DOWN",), True, False),  # Slurm powers it up for a job
    ("IDLE", ("RESERVED",), True, False),
    ("IDLE", ("DRAIN",), False, False),  # sinfo: drained
    ("MIXED", ("DRAIN",), False, False),  # sinfo: draining; its jobs run on
    ("IDLE", ("FAIL",), False, False),  # sinfo: failing
    ("DOWN", (), False, True),
    ("DOWN", ("NOT_RESPONDING",), False, True),
    ("IDLE", ("NOT_RESPONDING",), False, True),  # Slurm starts nothing there either
    ("IDLE", ("INVALID_REG",), False, False),
    ("FUTURE", (), False, False),
    ("UNKNOWN", (), False, False),  # not registered yet
])
def test_which_slurm_states_keep_a_datanode_from_new_placements(state, flags, available,
                                                                 down):
    """DOWN, DRAIN, FAIL, NOT_RESPONDING (and not yet there) fence; DOWN and not responding
    also mean the node's running jobs are lost."""
    node = NodeState("dn1", state, flags)
    assert (node.available, node.down) == (available, down)


def test_a_reason_is_shown_only_for_the_states_it_explains():
    """DOWN, DRAIN and FAIL carry Slurm's reason; a reason left from an earlier drain on a
    node now only not responding is not shown."""
    assert NodeState("dn1", "DOWN", (), "fan").describe() == "DOWN (fan)"
    assert NodeState("dn1", "MIXED", ("FAIL",), "fan").describe() == "MIXED+FAIL (fan)"
    assert NodeState("dn1", "MIXED", ("NOT_RESPONDING",), "old drain").describe() == (
        "MIXED+NOT_RESPONDING")


def test_reports_carry_slurms_words_and_reason_and_skip_what_slurm_does_not_list():
    """The report says IDLE+DRAIN (why); a datanode Slurm does not list, or lists in another
    partition, is not followed (a configuration mismatch, not the node's health)."""
    nodes = [NodeState("dn1", "IDLE", ("DRAIN",), "new disks", ("data",)),
             NodeState("dn2", "MIXED", (), "", ("data",)),
             NodeState("dn3", "DOWN", ("NOT_RESPONDING",), "Not responding", ("compute",)),
             NodeState("cn1", "DOWN", (), "", ("compute",))]
    reports, unfollowed = datanode_reports(nodes, ["dn1", "dn2", "dn3", "dn4"], "data")
    assert reports == {"dn1": DISKS}
    assert unfollowed == {
        "dn3": "the Slurm node is in partition(s) compute, not in datanode_partition = data",
        "dn4": "Slurm has no node of that name"}


# --- the resource manager: fenced like a drained node -----------------------------------


def test_a_datanode_down_in_slurm_gets_no_new_placement_and_keeps_its_reservations(
        app_factory):
    """server/resources says down with Slurm's words; what it holds stays; new ones go
    elsewhere."""
    client, rm, _ = app_factory()
    reserve(client, SBB)
    assert placed_on(client, SBB["name"]) == ["dn1"]
    rm.set_slurm_states({"dn1": FAN})
    res = client.simulate_get("/v1.0.0/server/resources/dn1").json
    assert (res["state"], res["reason"], res["free_cores"]) == ("down", "Slurm: DOWN (fan)", 6)
    assert rm.datanode_state("dn2") == (DatanodeState.UP, "")
    assert rm.get(SBB["name"]).state.value == "FREE"
    for i in range(3):
        reserve(client, dict(SBB, name=f"alice_s_{i}"))
        assert placed_on(client, f"alice_s_{i}") != ["dn1"]


def test_up_again_in_slurm_admits_the_queue(app_factory):
    """A reservation that needs the down node queues, and is placed there when Slurm
    reports it up again."""
    client, rm, _ = app_factory()
    rm.set_slurm_states({"dn1": FAN})
    fill_but_one(client, rm)
    rm.set_slurm_states({}).wait()
    assert rm.get("alice_s_l3").state.value == "FREE"
    assert placed_on(client, "alice_s_l3") == ["dn1"]
    assert rm.datanode_state("dn1") == (DatanodeState.UP, "")


def test_drained_and_down_stays_fenced_until_slurm_reports_it_up(app_factory):
    """Drained, then down in Slurm: the state is drained and the reason names both; a resume
    alone does not give it back while Slurm keeps it, Slurm's up then does."""
    client, rm, _ = app_factory()
    drain(client, "dn1", "fan noise")
    rm.set_slurm_states({"dn1": FAN})
    assert rm.datanode_state("dn1") == (DatanodeState.DRAINED, "fan noise; Slurm: DOWN (fan)")
    fill_but_one(client, rm)
    r = client.simulate_post("/admin/datanodes/dn1/resume")
    assert r.status_code == 200 and (r.json["state"], r.json["reason"]) == (
        "down", "Slurm: DOWN (fan)")
    assert rm.get("alice_s_l3").state.value == "QUEUED"
    rm.set_slurm_states({}).wait()
    assert rm.get("alice_s_l3").state.value == "FREE"


def test_down_and_drained_stays_fenced_until_the_administrator_resumes_it(app_factory):
    """Slurm's up does not undo an administrator's drain: the resume does."""
    client, rm, _ = app_factory()
    rm.set_slurm_states({"dn1": FAN})
    drain(client, "dn1", "fan noise")
    fill_but_one(client, rm)
    rm.set_slurm_states({}).wait()
    assert rm.datanode_state("dn1") == (DatanodeState.DRAINED, "fan noise")
    assert rm.get("alice_s_l3").state.value == "QUEUED"
    assert client.simulate_post("/admin/datanodes/dn1/resume").status_code == 200
    assert rm.get("alice_s_l3").state.value == "FREE"


def test_a_release_on_a_down_node_keeps_it_fenced_and_says_why(app_factory):
    """What a release frees there is shown free but not placed on; the released reservation's
    detail says its datanode was down."""
    client, rm, _ = app_factory()
    reserve(client, SBB)
    rm.set_slurm_states({"dn1": FAN})
    rec, ticket = rm.release(SBB["name"])
    ticket.wait()
    assert rec.detail == "reservation deleted; datanode dn1 was down in Slurm: DOWN (fan)"
    res = client.simulate_get("/v1.0.0/server/resources/dn1").json
    assert (res["free_cores"], res["free_msize"], res["state"]) == (8, 16384, "down")
    fill_but_one(client, rm)


def test_a_change_of_slurms_words_is_followed_and_each_change_logged_once(app_factory,
                                                                         caplog):
    """The same report twice logs once; a new word logs again; up again logs once."""
    client, rm, _ = app_factory()
    caplog.set_level(logging.WARNING, logger="wfm_orchestrator.resource_manager")
    rm.set_slurm_states({"dn2": DISKS})
    rm.set_slurm_states({"dn2": DISKS})
    rm.set_slurm_states({"dn2": FAN})
    rm.set_slurm_states({})
    rm.set_slurm_states({})
    assert [r.getMessage() for r in caplog.records] == [
        "datanode dn2 is IDLE+DRAIN (new disks) in Slurm: no new placement",
        "datanode dn2 is DOWN (fan) in Slurm: no new placement",
        "datanode dn2 is up again in Slurm"]


def test_reports_of_unknown_datanodes_are_ignored(app_factory):
    """A name not configured (a reload removed it) changes nothing."""
    client, rm, _ = app_factory()
    assert rm.set_slurm_states({"dn9": FAN}).done
    assert rm.down_in_slurm() == {}


def test_the_fence_survives_a_reload_and_a_failed_commit(app_factory, make_config):
    """Slurm's say is in memory: a reload's new allocator and a resync (after a failed
    commit) fence the node again."""
    client, rm, _ = app_factory()
    rm.set_slurm_states({"dn1": FAN})
    rm.reload(make_config(SMALL_CONF))
    rm._resync()
    assert rm.datanode_state("dn1") == (DatanodeState.DOWN, "Slurm: DOWN (fan)")
    fill_but_one(client, rm)


def test_metrics_say_down(app_factory):
    """wfm_datanode_state gives down for a node down in Slurm."""
    client, rm, _ = app_factory()
    rm.set_slurm_states({"dn3": DISKS})
    m = scrape(client)
    assert value(m, "wfm_datanode_state", datanode="dn3", state="down") == 1
    assert value(m, "wfm_datanode_state", datanode="dn3", state="up") == 0
    assert value(m, "wfm_datanode_state", datanode="dn2", state="up") == 1


# --- the services on a node that went down ---------------------------------------------


def test_down_note_names_each_down_server_once():
    """One clause per down server, in placement order; none when none is down."""
    down = {"dn2": "DOWN (fan)", "dn3": "IDLE+NOT_RESPONDING"}
    assert down_note(["dn1", "dn2", "dn3", "dn2"], down) == (
        "datanode dn2 is down in Slurm: DOWN (fan); "
        "datanode dn3 is down in Slurm: IDLE+NOT_RESPONDING")
    assert down_note(["dn1"], down, "was") == ""


def test_a_service_on_a_down_datanode_says_so_a_drained_one_does_not(world):
    """DOWN: the status detail ends with the node and Slurm's words; a DRAIN in Slurm leaves
    running services alone, and their status too."""
    world.reserve()
    world.sm.reconcile()  # the service job is submitted
    before = world.status()
    world.rm.set_slurm_states({"dn1": DISKS})
    assert world.status()["detail"] == before["detail"]
    world.rm.set_slurm_states({"dn1": FAN})
    status = world.status()
    assert status["status"] == before["status"]
    assert status["detail"] == f"{before['detail']}; datanode dn1 is down in Slurm: DOWN (fan)"


# --- the poll -----------------------------------------------------------------------------


def health(world, interval=10.0):
    clock = [0.0]
    watch = NodeHealth(world.slurm, world.rm, interval, clock=lambda: clock[0])
    for name in world.config.datanodes:
        world.slurm.set_node(name)
    return watch, clock


def test_the_poll_reads_slurms_nodes_when_due_and_tells_the_resource_manager(world):
    """The first poll reads; the next read only after the interval; what it read is the
    datanodes' state."""
    watch, clock = health(world)
    world.slurm.set_node("dn2", "IDLE", "DRAIN", reason="new disks")
    watch.poll()
    assert world.rm.datanode_state("dn2") == (DatanodeState.DOWN, "Slurm: IDLE+DRAIN (new disks)")
    world.slurm.set_node("dn2", "IDLE")
    clock[0] = 9.9
    watch.poll()
    assert world.slurm.node_reads == 1
    assert world.rm.datanode_state("dn2")[0] == DatanodeState.DOWN
    clock[0] = 10.0
    watch.poll()
    assert world.slurm.node_reads == 2
    assert world.rm.datanode_state("dn2") == (DatanodeState.UP, "")


def test_an_unreadable_slurm_keeps_the_states_last_read_and_is_logged_once(world, caplog):
    """Neither all fenced nor all freed by an outage; its start and end logged once."""
    caplog.set_level(logging.INFO, logger="wfm_orchestrator.follower")  # its Outage logs
    watch, clock = health(world, interval=1.0)
    world.slurm.set_node("dn2", "DOWN", reason="fan")
    watch.poll()
    world.slurm.down = True
    for t in (1.0, 2.0, 3.0):
        clock[0] = t
        watch.poll()
    assert world.rm.datanode_state("dn2") == (DatanodeState.DOWN, "Slurm: DOWN (fan)")
    world.slurm.down = False
    world.slurm.set_node("dn2")
    clock[0] = 4.0
    watch.poll()
    assert world.rm.datanode_state("dn2") == (DatanodeState.UP, "")
    assert [r.getMessage() for r in caplog.records if r.name.endswith("follower")] == [
        "cannot read Slurm's nodes (the datanodes keep the states last read): "
        "connection refused",
        "Slurm's nodes are readable again"]


def test_a_datanode_slurm_does_not_list_is_not_followed_and_said_once(world, caplog):
    """Not fenced (a naming mismatch would stop every placement there): a warning naming
    the fix, once."""
    caplog.set_level(logging.WARNING, logger="wfm_orchestrator.node_health")
    watch, clock = health(world, interval=1.0)
    del world.slurm.node_states["dn4"]
    watch.poll()
    clock[0] = 1.0
    watch.poll()
    assert world.rm.datanode_state("dn4") == (DatanodeState.UP, "")
    [record] = caplog.records
    assert record.getMessage().startswith(
        "datanode dn4: its state in Slurm is not followed: Slurm has no node of that name "
        "(make the Datanode records of ")


def test_the_follower_polls_at_the_start_of_every_full_cycle():
    """Even with nothing live (no GET /jobs then); not in a cycle for some trackers only."""
    slurm = FakeSlurm()
    f = Follower(slurm, interval=1.0, stop_timeout=1.0)
    polls = []
    f.add_poll(lambda: polls.append(slurm.reads))
    f.cycle()
    f.cycle()
    f.cycle([])
    assert (polls, slurm.reads) == ([0, 0], 0)


def test_the_server_polls_the_nodes_only_with_slurm_and_an_interval(make_config):
    """node_poll_interval = 0, or no slurmrestd_url: no poll."""
    from wfm_orchestrator.cli import build_all

    base = SMALL_CONF.replace("slurmrestd_url =", "slurmrestd_url = http://127.0.0.1:1\n"
                              "slurm_token_file = /dev/null")
    for text, polls in ((base, 1), (base + "node_poll_interval = 0\n", 0), (SMALL_CONF, 0)):
        *_, services, _steps, store = build_all(make_config(text))
        try:
            assert len(services.follower._polls) == polls, text
        finally:
            store.close()


# --- the setting ------------------------------------------------------------------------


def test_node_poll_interval_defaults_to_10_s_and_0_turns_it_off(make_config):
    """10 s by default; 0 is off; a negative or a word is refused naming the setting."""
    assert make_config().node_poll_interval == 10.0
    assert make_config(SMALL_CONF + "node_poll_interval = 0\n").node_poll_interval == 0.0
    for bad in ("-1", "soon", "100000"):
        with pytest.raises(ConfigError, match="node_poll_interval"):
            make_config(SMALL_CONF + f"node_poll_interval = {bad}\n")
