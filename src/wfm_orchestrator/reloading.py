"""Reload without a restart (SIGHUP, ``POST /admin/reload``, ``wfm-orchestrator reload``).

The running service reads its wfm.conf again. A file with errors is refused with every
problem's file:line, and a valid one that held reservations would not fit is refused
naming the reservation: the running configuration is kept either way. Otherwise every
record and the settings of ``config.RELOADABLE`` take effect; the other settings keep
their running values until a restart (the answer names them).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .config import Config, changes, load_config, reloaded
from .plugin_limits import write_limits
from .resource_manager import ResourceManager
from .store import Ticket

log = logging.getLogger(__name__)

# One reload at a time: a SIGHUP during an API reload waits for it.
_ONE = threading.Lock()


def reload(config: Config, rm: ResourceManager) -> tuple[dict[str, Any], Ticket]:
    """Run with the file at ``config.path`` now; what changed, and the commit ticket of the
    reservations the queue admitted. Raises ConfigError or ReloadRefused (nothing changed).
    """
    with _ONE:
        new = load_config(config.path)
        effective, restart = reloaded(config, new)
        said = changes(config, effective)
        kept, ticket = rm.reload(effective)
        try:
            write_limits(effective)
        except OSError as e:
            # The reload itself is done; the plugin keeps judging by the file it has.
            log.error("reload: cannot write plugin_limits_file %s: %s (the plugin keeps "
                      "the previous one)", effective.plugin_limits_file, e)
    for line in said:
        log.warning("reload: %s", line)
    for name in kept:
        log.warning("reload: datanode %s is removed but still holds reservations: drained "
                    "until they end", name)
    if restart:
        log.warning("reload: %s changed: a restart applies %s", ", ".join(restart),
                    "it" if len(restart) == 1 else "them")
    log.info("reload of %s done (%d change(s))", config.path, len(said))
    return {"file": config.path, "changes": said, "restart_needed": restart,
            "drained_until_released": kept}, ticket
