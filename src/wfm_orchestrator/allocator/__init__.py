"""The datanode allocator: reserves cores, memory and storage on datanodes.

The implementation is picked once, at import: the compiled one
(``_compiled``, Cython over ``csrc/``) by default, the pure-Python
``reference`` one when the environment sets ``WFM_ALLOCATOR=reference``.
There is deliberately no silent fallback: if the compiled module cannot be
imported and ``WFM_ALLOCATOR`` is not ``reference``, importing this package
fails. ``IMPLEMENTATION`` says which one is in use.

See docs/allocator.md for the API, the placement rules and the data structures.
"""

from __future__ import annotations

import os

from ..errors import (
    AllocatorError,
    DuplicateReservation,
    InvalidDemand,
    NoCapacity,
    UnknownDatanode,
    UnknownReservation,
)
from .reference import POLICIES, Datanode, Free, Placement

_CHOICES = ("compiled", "reference")
_wanted = os.environ.get("WFM_ALLOCATOR", "compiled").strip().lower() or "compiled"
if _wanted not in _CHOICES:
    raise ImportError(
        f"WFM_ALLOCATOR={_wanted!r} is invalid: expected 'compiled' (the default) or 'reference'"
    )

if _wanted == "reference":
    from .reference import Allocator
else:
    try:
        from ._compiled import Allocator  # type: ignore[no-redef]
    except ImportError as e:  # pragma: no cover - an install problem, reported loudly
        raise ImportError(
            "the compiled allocator (wfm_orchestrator.allocator._compiled) failed to import: "
            f"{e}. Rebuild it (pip install -e . --no-build-isolation, or "
            "python3 setup.py build_ext --inplace), or set WFM_ALLOCATOR=reference "
            "to run the pure-Python reference implementation deliberately."
        ) from e

IMPLEMENTATION: str = _wanted

__all__ = [
    "IMPLEMENTATION",
    "POLICIES",
    "Allocator",
    "AllocatorError",
    "Datanode",
    "DuplicateReservation",
    "Free",
    "InvalidDemand",
    "NoCapacity",
    "Placement",
    "UnknownDatanode",
    "UnknownReservation",
]
