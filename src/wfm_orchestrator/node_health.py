"""The datanodes' health as Slurm reports it, read every ``node_poll_interval`` seconds.

:class:`NodeHealth` runs on the follower's thread (``Follower.add_poll``: the one
thread doing Slurm I/O): one ``GET /nodes`` when due, its answer turned by
:func:`datanode_reports` (pure) into what the resource manager takes
(``set_slurm_states``): each configured datanode Slurm keeps from new jobs, with
Slurm's words. Which Slurm states count is :mod:`wfm_orchestrator.slurm.nodes`'
rule. A read that fails is logged once per distinct error and the states last read
are kept (the datanodes are neither all fenced nor all freed by an outage); the
recovery is logged once. A configured datanode Slurm does not list (or lists
outside ``datanode_partition``) is not followed, and said so once: that is a
configuration mismatch, not a node's health, and fencing it would stop every
placement there (docs/operations.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from .errors import WfmError
from .follower import Outage
from .model import NodeReport
from .resource_manager import ResourceManager
from .slurm.api import SlurmNodes
from .slurm.nodes import NodeState

log = logging.getLogger(__name__)


def datanode_reports(nodes: Iterable[NodeState], datanodes: Iterable[str], partition: str
                     ) -> tuple[dict[str, NodeReport], dict[str, str]]:
    """(reports, unfollowed): a report for each of ``datanodes`` that Slurm keeps from new
    jobs, and why each one Slurm does not list in ``partition`` is not followed."""
    by_name = {n.name: n for n in nodes}
    reports: dict[str, NodeReport] = {}
    unfollowed: dict[str, str] = {}
    for name in datanodes:
        node = by_name.get(name)
        if node is None:
            unfollowed[name] = "Slurm has no node of that name"
        elif node.partitions and partition not in node.partitions:
            unfollowed[name] = (f"the Slurm node is in partition(s) {', '.join(node.partitions)}"
                                f", not in datanode_partition = {partition}")
        elif not node.available:
            reports[name] = NodeReport(node.describe(), down=node.down)
    return reports, unfollowed


class NodeHealth:
    """Reads Slurm's nodes when due and tells the resource manager (see the module's text)."""

    def __init__(self, slurm: SlurmNodes, rm: ResourceManager, interval: float,
                 clock: Callable[[], float] = time.monotonic):
        self.slurm = slurm
        self.rm = rm
        self.interval = interval
        self.clock = clock
        self.outage = Outage(failed="cannot read Slurm's nodes (%s): %s",
                             back="Slurm's nodes are readable again")
        self._next = 0.0  # the first cycle reads them: a start knows them within a cycle
        self._unfollowed: dict[str, str] = {}

    def poll(self) -> None:
        """Read Slurm's nodes if ``interval`` has passed since the last read."""
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.interval
        try:
            nodes = self.slurm.nodes()
        except WfmError as e:
            self.outage.read_failed(e, "the datanodes keep the states last read")
            return
        self.outage.reached()
        config = self.rm.config
        reports, unfollowed = datanode_reports(nodes, config.datanodes,
                                               config.datanode_partition)
        for name, why in unfollowed.items():
            if self._unfollowed.get(name) != why:
                log.warning("datanode %s: its state in Slurm is not followed: %s (make the "
                            "Datanode records of %s match slurm.conf)", name, why,
                            config.path)
        self._unfollowed = unfollowed
        self.rm.set_slurm_states(reports)
