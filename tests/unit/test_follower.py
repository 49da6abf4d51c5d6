"""The Slurm job follower: one read per cycle for services and steps, the outage,
per-item isolation, cancel throttling."""

from __future__ import annotations

import logging

from wfm_orchestrator.errors import SlurmError, SlurmUnavailable
from wfm_orchestrator.follower import Cancels, Follower, JobIndex
from wfm_orchestrator.slurm import JobState

from ..fake_slurm import FakeSlurm
from ..poll import poll_until


class Tracker:
    """A tracker whose items record the cycles they saw, or raise what they are told."""

    noun = "thing"

    def __init__(self, *items: tuple[str, BaseException | None]):
        self.items = list(items)
        self.seen: list[tuple[str, JobIndex]] = []

    def live(self):
        return [(name, lambda jobs, name=name, err=err: self._advance(name, err, jobs))
                for name, err in self.items]

    def _advance(self, name, err, jobs):
        self.seen.append((name, jobs))
        if err is not None:
            raise err


def follower(slurm=None):
    return Follower(slurm or FakeSlurm(), interval=1.0, stop_timeout=1.0)


def shared_world(world):
    """The server's wiring: the step manager joins the service manager's follower."""
    from wfm_orchestrator.steps import StepManager

    steps = StepManager(world.config, world.store, world.sm, world.slurm,
                        clock=world.clock, home=lambda u: f"/home/{u}",
                        follower=world.sm.follower)
    steps.launch({"name": "alice_s1_step_0", "user": "alice", "command": "sbatch job.sh"})
    return steps


def test_services_and_steps_share_one_read_of_slurm_per_cycle(world):
    """A live service and a live step: one GET /jobs moves both forward."""
    steps = shared_world(world)
    world.reserve()
    world.sm.follower.cycle()
    assert world.slurm.reads == 1
    assert sorted(spec.name for spec, _, _ in world.slurm.submitted) == [
        "alice_s1_step_0", "alice_s_sbb"]
    assert steps.status("alice_s1_step_0")["detail"].startswith("Slurm job")


def test_no_read_when_nothing_is_live(world):
    shared_world(world).abort("alice_s1_step_0")
    world.sm.follower.cycle()
    world.sm.follower.cycle()
    assert world.slurm.reads == 1  # the abort's cycle; then nothing is live
    assert world.slurm.submitted == []


def test_an_outage_is_logged_once_shown_by_every_status_and_its_end_logged(world, caplog):
    steps = shared_world(world)
    world.reserve()
    world.slurm.down = True
    with caplog.at_level(logging.INFO, "wfm_orchestrator.follower"):
        world.sm.follower.cycle()
        world.sm.follower.cycle()
        assert [r.getMessage() for r in caplog.records] == [
            "cannot read Slurm jobs (services and steps wait): connection refused"]
        assert "[Slurm unreachable: connection refused]" in world.status()["detail"]
        assert "[Slurm unreachable: connection refused]" in \
            steps.status("alice_s1_step_0")["detail"]
        world.slurm.down = False
        world.sm.follower.cycle()
    assert caplog.records[-1].getMessage() == "Slurm is reachable again"
    assert "unreachable" not in world.status()["detail"]
    assert "unreachable" not in steps.status("alice_s1_step_0")["detail"]


def test_one_failing_item_does_not_stop_the_others(caplog):
    """A typed error is logged and the cycle goes on, to the other trackers too."""
    first = Tracker(("a", SlurmError("refused by Slurm")), ("b", None))
    second = Tracker(("c", None))
    f = follower()
    f.add(first)
    f.add(second)
    f.cycle()
    assert [n for n, _ in first.seen + second.seen] == ["a", "b", "c"]
    assert "thing a: refused by Slurm" in caplog.text
    assert f.problem == ""


def test_slurm_unreachable_while_handling_an_item_stops_the_cycle():
    first = Tracker(("a", SlurmUnavailable("connect timeout")), ("b", None))
    second = Tracker(("c", None))
    f = follower()
    f.add(first)
    f.add(second)
    f.cycle()
    assert [n for n, _ in first.seen + second.seen] == ["a"]
    assert f.problem == "connect timeout"


def test_cycle_for_some_trackers_only_reads_for_them():
    """A manager's reconcile() runs the follower for that manager alone."""
    first, second = Tracker(("a", None)), Tracker(("c", None))
    f = follower()
    f.add(first)
    f.add(second)
    f.cycle([second])
    assert first.seen == [] and [n for n, _ in second.seen] == ["c"]


def test_job_index_finds_jobs_by_id_and_by_tag():
    jobs = [JobState(7, "n", "wfm-orchestrator:step:x:main", "RUNNING", "", (), None, "u"),
            JobState(8, "m", "", "PENDING", "", (), None, "u")]
    index = JobIndex.of(jobs)
    assert sorted(index.by_id) == [7, 8]
    assert list(index.by_tag) == ["wfm-orchestrator:step:x:main"]


def test_a_cancel_is_sent_again_only_after_the_interval_or_when_undone():
    cancels = Cancels(60.0)
    assert cancels.due("job", 1000.0)
    cancels.record("job", 1000.0)
    assert not cancels.due("job", 1059.0)
    assert cancels.due("job", 1059.0, again=True)  # Slurm requeued it: the cancel did not take
    assert cancels.due("job", 1060.0)
    cancels.forget("job")
    assert cancels.sent("job") is None and cancels.due("job", 1000.5)


def test_the_server_gives_services_and_steps_one_follower(make_config):
    """cli.build_all wires both managers, and the job-scoped services (#18), to the same
    follower (one read per cycle)."""
    from tests.conftest import SERVICE_CONF
    from wfm_orchestrator.cli import build_all

    _app, _nonblocking, _rm, services, steps, store = build_all(make_config(SERVICE_CONF))
    try:
        assert services.follower is steps.follower
        assert [t.noun for t in services.follower.trackers] == ["service", "step",
                                                                  "job-scoped service"]
    finally:
        store.close()


def test_each_item_s_writes_are_handed_to_the_writer_after_it(world):
    """A tracker records what it did without waiting for the commit: the follower hands
    those writes to the store's writer after each item, so they never wait for another
    thread's next commit (the server's loop turn or someone's wait)."""
    world.reserve()
    world.sm.follower.cycle()  # submits the service's job and records its id, unwaited
    assert world.sm.job("alice_s_sbb").job_id is not None
    rows = poll_until(lambda: world.store.query(
        "SELECT job_id FROM service_job WHERE job_id IS NOT NULL"),
        "the job id committed without anyone waiting", timeout=5, interval=0.02)
    assert rows[0]["job_id"] == world.sm.job("alice_s_sbb").job_id


def test_without_the_flush_the_write_would_stay_queued(world, make_config):
    """The check above could fail: a Follower without the store's flush leaves it queued."""
    from wfm_orchestrator.follower import Follower

    bare = Follower(world.slurm, interval=1.0, stop_timeout=1.0)
    world.reserve()
    bare.cycle([world.sm])
    assert world.sm.job("alice_s_sbb").job_id is not None
    assert world.store.query("SELECT job_id FROM service_job")[0]["job_id"] is None


def test_a_reader_sees_every_job_list_read_before_the_trackers_move():
    seen: list[tuple[str, object]] = []
    f = follower()
    f.add_reader(lambda jobs: seen.append(("reader", jobs)))
    t = Tracker(("a", None))
    t._advance = lambda name, err, jobs: seen.append(("advance", jobs))  # type: ignore
    f.add(t)
    f.cycle()
    assert [what for what, _ in seen] == ["reader", "advance"] and seen[0][1] is seen[1][1]
