"""Workflow steps on Slurm: data movers, the step's job, status, progress, abort.

``POST step/launch`` is validated (:func:`parse_launch`), recorded durably
(table ``step``) and answered 200 once committed. The Slurm job follower
(follower.py) then does all Slurm I/O on its worker thread, for services and
steps together: one ``GET /jobs`` per cycle.
For a step waiting for its services it checks each one through the service
manager (usable = ALLOCATED or STAGEDIN; unknown, another user's or stopped
= the step fails with that detail); once they are usable it submits, in
order, the ``step_start`` data movers, the step's job (``afterok`` on them,
``#BB_LUA wfm_use`` for each service) and the ``step_stop`` data movers
(``afterany`` on the step's job). Every job carries a tag (``comment``), so
after a restart a job submitted before the crash is adopted, not submitted
twice. A failed stage-in cancels the step's job (it never runs) and the
stage-out movers; ``step/abort`` cancels every job of the step.

The status (:func:`derive_status`, pure) is the Slurm state of the step's
job, PENDING before it is submitted, STAGE_OUT while stage-out movers run,
FAILED when the orchestrator or a data mover failed it, CANCELLED after an
abort. Records are kept after Slurm forgets the jobs.

The parts: ``request`` (parsing the launch body), ``jobs`` (the job
descriptions, pure), ``records`` (Step, StepJob), ``status`` (derive_status,
pure), ``manager`` (StepManager); their SQL is in repositories/steps.py.
"""

from .jobs import TAG_PREFIX, build_mover_job, build_step_job, job_tag
from .manager import StepManager
from .records import Step, StepJob
from .request import DataMover, ServiceUse, StepRequest, parse_launch
from .status import derive_status

__all__ = [
    "TAG_PREFIX",
    "DataMover",
    "ServiceUse",
    "Step",
    "StepJob",
    "StepManager",
    "StepRequest",
    "build_mover_job",
    "build_step_job",
    "derive_status",
    "job_tag",
    "parse_launch",
]
