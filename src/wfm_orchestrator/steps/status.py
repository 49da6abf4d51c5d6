"""A step's status from its records only (pure): the spec's status and its detail."""

from __future__ import annotations

from collections.abc import Mapping

from ..model import StepPhase
from ..slurm.states import GONE, exit_status_text
from .records import Step, StepJob
from .request import DataMover


def _mover_text(dm: DataMover, job: StepJob | None) -> str:
    if job is None or job.job_id is None:
        return f"{dm.stage} mover {dm.name} not submitted"
    prog = f": {job.progress}" if job.progress else ""
    if job.ended:
        if job.state == "COMPLETED":
            return f"{dm.stage} mover {dm.name} done{prog}"
        why = f" ({job.reason})" if job.reason else ""
        return (f"{dm.stage} mover {dm.name} failed: Slurm job {job.job_id} {job.state}{why}"
                f"{exit_status_text(job.exit_code)}{prog}")
    if job.state == "RUNNING":
        return f"{dm.stage} mover {dm.name} running{prog or ' (no progress posted yet)'}"
    why = f" ({job.reason})" if job.reason else ""
    return f"{dm.stage} mover {dm.name} {(job.state or 'submitted').lower()}{why}"


def last_change(step: Step, jobs: Mapping[str, StepJob]) -> float:
    """When a step's records last changed: its status' ``time``, and for an ended step the
    start of its retention (step_retention)."""
    return max([step.updated, *(j.updated for j in jobs.values()),
                *(j.progress_time for j in jobs.values() if j.progress_time)])


def derive_status(step: Step, jobs: Mapping[str, StepJob], waiting: str = ""
                  ) -> tuple[str, str, float]:
    """(status, detail, time of the last change) of a step, from its records only."""
    req = step.request
    when = last_change(step, jobs)
    main = jobs.get("main")
    start = [dm for dm in req.movers if dm.trigger == "step_start"]
    stop = [dm for dm in req.movers if dm.trigger == "step_stop"]
    active = [j for j in jobs.values() if j.job_id is not None and not j.ended]
    failed_start = [dm for dm in start if (j := jobs.get(dm.key)) and j.ended
                    and j.state != "COMPLETED"]
    failed_stop = [dm for dm in stop if (j := jobs.get(dm.key)) and j.ended
                   and j.state != "COMPLETED"]

    if step.abort_requested is not None:
        done_before = (main is not None and main.ended and main.state != "CANCELLED"
                       and main.updated <= step.abort_requested)
        if active:
            ids = ", ".join(str(j.job_id) for j in active)
            state = main.state if main is not None and main.state and not main.ended \
                else "PENDING"
            return state, f"abort requested: cancelling Slurm job(s) {ids}", when
        if done_before and main is not None:
            return main.state, (f"Slurm job {main.job_id} had ended {main.state} before the "
                                "abort request"), when
        return "CANCELLED", "aborted by request" + (
            f"; Slurm job {main.job_id} {main.state}" if main and main.job_id else
            " before the step's job was submitted"), when
    if step.phase == StepPhase.FAILED:
        detail = step.detail
        if active:
            detail += f" (cancelling Slurm job(s) {', '.join(str(j.job_id) for j in active)})"
        return "FAILED", detail, when
    if failed_start:
        dm = failed_start[0]
        extra = ""
        if main is not None and main.job_id is not None:
            extra = (f"; step job {main.job_id} not run" if main.state in ("", "PENDING",
                                                                          "CANCELLED")
                     else f"; step job {main.job_id} {main.state}")
        return "FAILED", _mover_text(dm, jobs.get(dm.key)) + extra, when
    if main is None or main.job_id is None:
        return "PENDING", waiting or "submitting the step's jobs", when
    if not main.ended:
        if main.state in ("", "PENDING"):
            running = [dm for dm in start if not jobs[dm.key].ended] if all(
                dm.key in jobs for dm in start) else start
            if running:
                return "PENDING", "; ".join(_mover_text(dm, jobs.get(dm.key))
                                            for dm in running), when
            why = f" ({main.reason})" if main.reason else ""
            return "PENDING", f"Slurm job {main.job_id} pending{why}", when
        on = f" on {main.nodes}" if main.nodes else ""
        return main.state, f"Slurm job {main.job_id} {main.state.lower()}{on}", when
    # The step's job ended: stage-out movers, then the outcome.
    why = f" ({main.reason})" if main.reason else ""
    ended = f"Slurm job {main.job_id} ended {main.state}{why}{exit_status_text(main.exit_code)}"
    if main.state == GONE:
        ended = f"Slurm job {main.job_id} was forgotten by Slurm before its end was seen"
    running_stop = [dm for dm in stop if (j := jobs.get(dm.key)) is None or not j.ended]
    if running_stop:
        return "STAGE_OUT", ended + "; " + "; ".join(
            _mover_text(dm, jobs.get(dm.key)) for dm in running_stop), when
    status = "FAILED" if main.state == GONE else main.state
    if failed_stop:
        return "FAILED", ended + "; " + _mover_text(failed_stop[0],
                                                    jobs.get(failed_stop[0].key)), when
    done = [_mover_text(dm, jobs.get(dm.key)) for dm in stop]
    return status, ended + ("; " + "; ".join(done) if done else ""), when
