"""The limits file: what the burst-buffer plugin may know at submission without asking (#18).

``slurm_bb_job_process`` runs inside slurmctld with its locks held and makes no network
call; to refuse a ``#BB_LUA wfm_job`` that can never fit, it reads this file, which the
orchestrator writes (``plugin_limits_file``) at start-up and at every reload: the service
types, the flavors, the locations with their neighbours and every datanode's capacity.
Nothing in it is secret (``server/resources`` shows the same), so it is world-readable.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import ujson

from .config import SERVICE_TYPES, Config

log = logging.getLogger(__name__)

VERSION = 1  # the plugin refuses a file of another version (and checks syntax only)


def build_limits(config: Config) -> dict[str, Any]:
    """The file's content for ``config`` (pure)."""
    return {
        "version": VERSION,
        "types": sorted(SERVICE_TYPES),
        "flavors": {f.name: {"cores": f.cores, "msize": f.msize, "ssize": f.ssize}
                    for f in config.flavors.values()},
        "locations": {loc.name: list(loc.neighbours) for loc in config.locations.values()},
        "datanodes": [{"name": d.name, "location": d.location, "cores": len(d.core_list),
                       "msize": d.msize, "ssize": d.ssize} for d in config.datanodes.values()],
    }


def write_limits(config: Config) -> str | None:
    """Write the file of ``config`` if ``plugin_limits_file`` names one; its path.

    Written to a temporary file in the same directory, then renamed: the plugin never
    reads half a file. An OSError is the caller's (start-up refuses, a reload logs it).
    """
    path = config.plugin_limits_file
    if not path:
        return None
    text = ujson.dumps(build_limits(config), sort_keys=True) + "\n"
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".limits.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    log.info("plugin limits written to %s (%d datanodes, %d flavors)", path,
             len(config.datanodes), len(config.flavors))
    return path


__all__ = ["VERSION", "build_limits", "write_limits"]
