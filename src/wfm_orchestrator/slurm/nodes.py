"""What Slurm says of a node, and whether a datanode in that state takes new placements.

Pure. The per-version readers (``GET /slurm/<v>/nodes``) are in :mod:`.versions`;
both give a :class:`NodeState` with Slurm's base state and flags in upper case,
as ``scontrol show node`` writes them (``IDLE+DRAIN``, ``DOWN+NOT_RESPONDING``).

Which states keep a datanode from new placements (the orchestrator's rule,
docs/operations.md "A datanode goes down"):

* base state DOWN, FUTURE or UNKNOWN (not registered yet): Slurm starts no job there;
* flag DRAIN (what sinfo shows as DRAINING and DRAINED), FAIL (FAILING),
  NOT_RESPONDING (Slurm itself starts no job on a node that stopped answering,
  and sets it DOWN after SlurmdTimeout), INVALID_REG (registered with less than
  slurm.conf says), REBOOT_ISSUED (rebooting now);
* anything else (IDLE, MIXED, ALLOCATED, COMPLETING, POWERED_DOWN, which Slurm
  powers up for a job, RESERVED, ...) is up.

Of those, the ones whose *running* jobs are lost or stalled are :attr:`NodeState.down`:
base state DOWN, or NOT_RESPONDING. A drain keeps running jobs running.
"""

from __future__ import annotations

from dataclasses import dataclass

UNAVAILABLE_STATES = frozenset({"DOWN", "FUTURE", "UNKNOWN"})
UNAVAILABLE_FLAGS = frozenset({"DRAIN", "FAIL", "NOT_RESPONDING", "INVALID_REG",
                               "REBOOT_ISSUED"})
# Slurm keeps a node's last reason after a resume (both versions): it is the reason of the
# state only where sinfo -R shows it, DOWN, DRAIN and FAIL.
REASONED_FLAGS = frozenset({"DRAIN", "FAIL"})


@dataclass(frozen=True)
class NodeState:
    """One node as slurmctld reports it.

    state       Slurm's base state (IDLE, MIXED, ALLOCATED, DOWN, ...)
    flags       Slurm's state flags in its order (DRAIN, NOT_RESPONDING, ...)
    reason      why an administrator or Slurm took it out ("" when none)
    partitions  the partitions it belongs to
    """

    name: str
    state: str
    flags: tuple[str, ...] = ()
    reason: str = ""
    partitions: tuple[str, ...] = ()

    @property
    def words(self) -> str:
        """``IDLE+DRAIN``: the state as ``scontrol show node`` writes it."""
        return "+".join((self.state, *self.flags))

    @property
    def available(self) -> bool:
        """Does Slurm let new jobs start here (so may the orchestrator place there)?"""
        return self.state not in UNAVAILABLE_STATES and not UNAVAILABLE_FLAGS.intersection(
            self.flags)

    @property
    def down(self) -> bool:
        """Are the jobs running here lost or stalled (DOWN, or not responding)?"""
        return self.state == "DOWN" or "NOT_RESPONDING" in self.flags

    def describe(self) -> str:
        """``IDLE+DRAIN (disk swap)``: Slurm's words and its reason, where the reason is the
        state's (a reason left from an earlier drain is not)."""
        current = self.state == "DOWN" or REASONED_FLAGS.intersection(self.flags)
        return f"{self.words} ({self.reason})" if self.reason and current else self.words
