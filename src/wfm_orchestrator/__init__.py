"""WFM Orchestrator: the IO-SEA Workflow Manager's Resource Manager and Slurm orchestrator."""

__version__ = "0.1.0"
