"""The Slurm jobs of a step (pure): the step's own job and its data movers' jobs."""

from __future__ import annotations

import posixpath
import shlex

from ..config import Config
from ..sbatch import StepCommand
from ..slurm import Dependency, JobSpec, use_directive
from ..slurm.jobs import NAME_RE as JOB_NAME_RE
from .request import DataMover, StepRequest

TAG_PREFIX = "wfm-orchestrator:step:"
MOVER_MEMORY_MB = 256


def job_tag(launch_id: str, key: str) -> str:
    """The comment that identifies one job of a step, also after a restart."""
    return f"{TAG_PREFIX}{launch_id}:{key}"


def job_partition(config: Config, key: str) -> str:
    """The partition a step's job runs on: ``main`` on the compute nodes, movers on the
    datanodes (what adoption and the follower check a job against)."""
    return config.compute_partition if key == "main" else config.datanode_partition


def _job_name(text: str) -> str:
    text = text[:200]
    return text if JOB_NAME_RE.match(text) else ("s" + text)[:200]


def progress_url(config: Config) -> str:
    host, _, port = config.listen.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - read, not bound
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1.0.0/step/progress"


def location_exclude(config: Config, locations: tuple[str, ...]) -> list[str]:
    """Compute nodes outside the step's locations (sbatch -x)."""
    if not locations:
        return []
    every = {n for loc in config.locations.values() for n in loc.compute_nodes}
    allowed = {n for loc in locations for n in config.locations[loc].compute_nodes}
    return sorted(every - allowed)


def build_step_job(config: Config, req: StepRequest, cmd: StepCommand, launch_id: str,
                   after: tuple[int, ...]) -> JobSpec:
    cwd = cmd.cwd or req.home
    env = {"HOME": req.home, "USER": req.user, "LOGNAME": req.user}
    env.update(req.command_env)
    env["WFM_STEP_NAME"] = req.name
    return JobSpec(
        name=_job_name(req.name),
        command=cmd.argv,
        partition=job_partition(config, "main"),
        node_count=cmd.nodes,
        memory_per_node=cmd.memory_per_node,
        environment=env,
        cwd=cwd,
        comment=job_tag(launch_id, "main"),
        dependencies=[Dependency("afterok", after)] if after else (),
        stdout=cmd.stdout or posixpath.join(cwd, "slurm-%j.out"),
        stderr=cmd.stderr,
        time_limit=cmd.time_limit,
        bb=[use_directive(s.name, s.hint) for s in req.services],
        tasks=cmd.tasks,
        tasks_per_node=cmd.tasks_per_node,
        cpus_per_task=cmd.cpus_per_task,
        memory_per_cpu=cmd.memory_per_cpu,
        exclusive=cmd.exclusive,
        account=cmd.account,
        qos=cmd.qos,
        exclude=location_exclude(config, req.locations),
    )


def build_mover_job(config: Config, req: StepRequest, dm: DataMover, launch_id: str,
                    after: tuple[int, ...], secret: str) -> JobSpec:
    """A data mover's job: ``datamover_command OP SOURCE TARGET -- PATTERN...`` as the user.

    ``secret``, the step's mover secret, goes in the environment only: squeue
    shows a job's name, comment and command line to every user.
    """
    source = config.tiers.get(dm.source)
    target = config.tiers.get(dm.target)
    env = {
        "HOME": req.home, "USER": req.user, "LOGNAME": req.user,
        "WFM_STEP_NAME": req.name,
        "WFM_DATAMOVER_NAME": dm.name,
        "WFM_DATAMOVER_OPERATION": dm.operation,
        "WFM_DATAMOVER_TRIGGER": dm.trigger,
        "WFM_SERVICE_NAME": dm.service,
        "WFM_SOURCE_TIER": dm.source,
        "WFM_SOURCE_ROOT": source.root if source else "",
        "WFM_TARGET_TIER": dm.target,
        "WFM_TARGET_ROOT": target.root if target else "",
        "WFM_PROGRESS_URL": progress_url(config),
        "WFM_TOKEN_FILE": config.datamover_token_file,
        "WFM_STEP_SECRET": secret,
    }
    argv = [*shlex.split(config.datamover_command), dm.operation, dm.source, dm.target, "--",
            *dm.elements]
    return JobSpec(
        name=_job_name(f"{req.name}.{dm.name}"),
        command=argv,
        partition=job_partition(config, dm.key),
        node_count=1,
        cpus_per_node=1,
        memory_per_node=MOVER_MEMORY_MB,
        environment=env,
        cwd="/tmp",  # noqa: S108 - a job's working directory
        comment=job_tag(launch_id, dm.key),
        dependencies=[Dependency("afterany", after)] if after else (),
        stdout=config.service_output,
    )
