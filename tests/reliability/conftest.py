"""The mini-cluster fixtures of tests/integration, for the reliability suites that use Slurm."""

from tests.integration.conftest import client, slurm_cluster, wfm_config  # noqa: F401
from tests.integration.orchestrator import orchestrator  # noqa: F401
