"""The mini-cluster fixtures of tests/integration, for the reliability suites that use Slurm."""

import pytest

from tests.integration.conftest import client, slurm_cluster, wfm_config  # noqa: F401


@pytest.fixture
def created(orchestrator, client):  # noqa: F811 - the fixtures imported above
    """Services and steps a mini-cluster test creates ({"services": [], "steps": []}):
    released / aborted at the end even if the test failed, their jobs cancelled."""
    from .cluster import clean_up

    made: dict[str, list[str]] = {"services": [], "steps": []}
    yield made
    done = clean_up(orchestrator, client, made["services"], made["steps"])
    if done:
        print(f"[reliability] clean-up after the test: {'; '.join(done)}")
