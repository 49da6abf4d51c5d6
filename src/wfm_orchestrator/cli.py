"""``wfm-orchestrator serve | check-config``: the one edge that turns errors into exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from ClusterShell.RangeSet import RangeSet

from .config import Config, describe, load_config
from .errors import ConfigError, StoreError

log = logging.getLogger("wfm_orchestrator")

EXIT_CONFIG = 2
EXIT_STORE = 3


def _pin_cpus(setting: str) -> list[int] | None:
    """Confine the process to the configured CPUs (``auto`` = one CPU)."""
    if setting == "all" or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if setting == "auto":
        # waitress' threads fight over the GIL across cores (measured: 120-2,100
        # req/s on two cores against 6,000-7,000 on one), so one core is the default.
        wanted = allowed[:1]
    else:
        wanted = [int(c) for c in RangeSet(setting) if int(c) in allowed]
        if not wanted:
            raise ConfigError([])  # replaced below with a readable message
    os.sched_setaffinity(0, wanted)
    return wanted


def build(config: Config):
    """The application and what it owns (kept separate for tests and benchmarks)."""
    app, _nonblocking, rm, services, _steps, store = build_all(config)
    return app, rm, services, store


def build_all(config: Config):
    """(app, nonblocking, rm, services, steps, store): build() plus the step manager and
    which requests the server may serve on its event loop."""
    from .api import build_api
    from .follower import Follower
    from .resource_manager import ResourceManager
    from .services import ServiceManager
    from .slurm import SlurmClient
    from .steps import StepManager
    from .store import Store

    store = Store(config.state_db)
    try:
        rm = ResourceManager(config, store)
        slurm = SlurmClient.from_config(config) if config.slurmrestd_url else None
        # One follower for both: one read of Slurm's jobs per cycle, services first.
        follower = Follower(slurm, config.reconcile_interval, config.slurm_timeout * 3,
                            flush=store.flush)
        services = ServiceManager(config, rm, store, slurm, follower=follower)
        steps = StepManager(config, store, services, slurm, follower=follower)
    except BaseException:
        store.close()
        raise
    return (*build_api(config, rm, services, steps), rm, services, steps, store)


def cmd_serve(args: argparse.Namespace) -> int:
    from .http.server import create_server

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"wfm-orchestrator: invalid configuration, not starting:\n{e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        cpus = _pin_cpus(config.cpus)
    except (ConfigError, OSError):
        print(f"wfm-orchestrator: cpus = {config.cpus} names no CPU this process may use "
              f"(allowed: {sorted(os.sched_getaffinity(0))})", file=sys.stderr)
        return EXIT_CONFIG
    try:
        app, nonblocking, rm, services, steps, store = build_all(config)
    except StoreError as e:
        print(f"wfm-orchestrator: state database unusable, not starting: {e}", file=sys.stderr)
        return EXIT_STORE

    host, _, port = config.listen.rpartition(":")
    server = create_server(app, host.strip("[]"), int(port), config.threads, nonblocking,
                           fast_path=config.fast_path == "on", turn_end=(store.flush,))

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    log.info("wfm-orchestrator listening on http://%s (cpus %s, %d threads, state %s, %s)",
             config.listen, cpus or "all", config.threads, config.state_db,
             f"slurmrestd {config.slurmrestd_url}" if config.slurmrestd_url
             else "no Slurm: Resource Manager only")
    if services.slurm is not None:
        _choose_slurm_api(services.slurm)
    services.start()
    steps.start()
    try:
        server.run()
    except (SystemExit, KeyboardInterrupt):
        log.info("stopping")
    finally:
        server.close()
        steps.stop()
        services.stop()
        store.close()
        log.info("stopped")
    return 0


def _choose_slurm_api(slurm) -> None:
    """Choose slurmrestd's API version now (``auto``), so the log says which at start-up.

    Unreachable, or serving none of our versions: the service starts all the same
    (degraded: reservations work, services and steps wait), says so here and in every
    status of a live service or step, and the next Slurm call tries again.
    """
    from .errors import WfmError

    try:
        version = slurm.negotiate()
    except WfmError as e:
        log.warning("Slurm not usable yet, starting degraded (services and steps wait; "
                    "retried at every Slurm call): %s", e)
        return
    log.info("slurmrestd API %s (slurm_api_version = %s)", version, slurm.configured_version)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as e:
        print(f"{len(e.problems)} error(s) in {args.file}:", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print(describe(config))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wfm-orchestrator", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("WFM_LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the orchestrator")
    p.add_argument("--config", "-c", default=os.environ.get("WFM_CONFIG", "/etc/wfm/wfm.conf"))
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("check-config", help="validate a wfm.conf and print a summary")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # waitress warns "Task queue depth is N" for every request queued behind a
    # busy thread: normal under load, and one line per request would drown the log.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
