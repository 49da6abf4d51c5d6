"""Golden files: a test compares what it produced with a file committed beside it.

A test run never writes one: a missing golden file fails like a different one, with how
to write it deliberately (``WFM_UPDATE_GOLDEN=1``), so that a new or changed file is
looked at and committed, not made up by the run that should have checked it.
"""

from __future__ import annotations

import os

UPDATE_ENV = "WFM_UPDATE_GOLDEN"


def updating() -> bool:
    """True when this run was asked to (re)write the golden files."""
    return os.environ.get(UPDATE_ENV) == "1"


def assert_golden(path: str, text: str) -> None:
    """``text`` is exactly the content of the golden file ``path``.

    With ``WFM_UPDATE_GOLDEN=1`` in the environment the file is written first (and the
    check passes); without it, a missing file is a failure, like a different one.
    """
    if updating():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    name = os.path.basename(path)
    how = (f"run the test with {UPDATE_ENV}=1 to write it from the code, then review and "
           "commit it")
    if not os.path.exists(path):
        raise AssertionError(f"golden file {path} is missing: {how}")
    with open(path, encoding="utf-8") as fh:
        assert text == fh.read(), f"{name} differs from the golden file ({how})"
