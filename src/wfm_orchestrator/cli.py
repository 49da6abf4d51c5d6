"""wfm-orchestrator: the IO-SEA Workflow Manager's orchestrator, and its administrator's
command line.

`serve` runs the service; `check-config` validates a wfm.conf. The other commands act on
the service that --config describes: they talk to its API at its `listen` address
(`status`, `datanodes`, `reservations`, `show`, `steps`, `abort`, `drain`, `resume`,
`reload`; `leads`, a virtual IP's health check, asks only whether it leads), or
open its state database under the service's lock (`db check`, `db backup`; `release` too
when the service is stopped).
"""
# This module is the one edge that turns errors into exit codes (admin.py does the rest).

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from ClusterShell.RangeSet import RangeSet

from . import __version__, state_db
from .config import Config, describe, load_config
from .errors import ApiFailed, ConfigError, ServiceUnreachable, StoreError

log = logging.getLogger("wfm_orchestrator")

EXIT_FAILED = 1  # the orchestrator refused the request, or db check found a problem
EXIT_CONFIG = 2  # a wrong command line, an invalid wfm.conf, an unreadable token file
EXIT_STORE = 3  # the state database is unusable, or in use where it must not be
EXIT_UNREACHABLE = 4  # no orchestrator answers at the configuration's listen address
EXIT_LEASE_LOST = 5  # serve: this leader lost its lease (another one leads): restart it
DEFAULT_CONFIG = "/etc/wfm/wfm.conf"


def _cpus_wanted(setting: str) -> list[int] | None:
    """The configured CPUs the process will be confined to (``auto`` = one CPU); None:
    all of them."""
    if setting == "all" or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if setting == "auto":
        # waitress' threads fight over the GIL across cores (measured: 120-2,100
        # req/s on two cores against 6,000-7,000 on one), so one core is the default.
        return allowed[:1]
    wanted = [int(c) for c in RangeSet(setting) if int(c) in allowed]
    if not wanted:
        raise ConfigError([])  # replaced below with a readable message
    return wanted


def _pin_cpus(wanted: list[int] | None) -> None:
    """Confine every thread of the process to ``wanted``, once its start is done: the
    start's reader process and SQLite's check run on the other CPUs meanwhile
    (store_preload.py), and threads started then (the store's) keep the mask they had."""
    if wanted is None:
        return
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(tid), wanted)


def build(config: Config):
    """The application and what it owns (kept separate for tests and benchmarks)."""
    app, _nonblocking, rm, services, _steps, store = build_all(config)
    return app, rm, services, store


def build_all(config: Config, lease=None):
    """(app, nonblocking, rm, services, steps, store): build() plus the step manager and
    which requests the server may serve on its event loop. ``lease``: the leader lease
    (PostgreSQL) that fences the store's writes and the Slurm submissions."""
    from .repositories import reservations
    from .store import Store

    # SQLite's check of the file runs on a thread of its own, and a process of its own
    # reads and decodes the reservations, while this one imports what serving needs and
    # makes the records (a restart's longest parts, on two CPUs): the check's verdict
    # comes before any answer.
    store = Store(config.state_db, lease=lease, verify_later=True,
                  preload=reservations.PRELOAD)
    try:
        try:
            from .api import build_api
            from .http import server  # noqa: F401 - cmd_serve's, imported meanwhile too

            rm, services, steps = _use_cases(config, store, lease)
        except Exception:
            store.verified()  # a corrupt file's verdict first: what broke the reading
            raise
        store.verified()
    except BaseException:
        store.close()
        raise
    role = None if lease is None else (lambda: ("leader", lease.url, lease.epoch))
    return (*build_api(config, rm, services, steps, role), rm, services, steps, store)


def _use_cases(config: Config, store, lease):
    """(rm, services, steps) on ``store``: each loads its records."""
    from .follower import Follower
    from .node_health import NodeHealth
    from .resource_manager import ResourceManager
    from .services import ServiceManager
    from .slurm import SlurmClient
    from .stage_in_nudge import StageInNudge
    from .steps import StepManager

    rm = ResourceManager(config, store)
    slurm = SlurmClient.from_config(config) if config.slurmrestd_url else None
    guard = None
    if slurm is not None and lease is not None:
        # A submission leaves only once its record is durable under our lease, with a
        # third of the ttl still surely ours (docs/ha.md).
        from .lease import submission_guard

        guard = submission_guard(lease, lambda: store.write([]).wait())
        slurm.before_submit = guard
    # One follower for both: one read of Slurm's jobs per cycle, services first.
    follower = Follower(slurm, config.reconcile_interval, config.slurm_timeout * 3,
                        flush=store.flush)
    if slurm is not None and config.node_poll_interval:
        follower.add_poll(NodeHealth(slurm, rm, config.node_poll_interval).poll)
    if slurm is not None:
        follower.add_reader(StageInNudge(slurm))
    services = ServiceManager(config, rm, store, slurm, follower=follower)
    if guard is not None:
        services.still_leading = guard  # the cancel of a second job: the same proof
    steps = StepManager(config, store, services, slurm, follower=follower)
    return rm, services, steps


def cmd_serve(args: argparse.Namespace) -> int:  # noqa: C901 - the start's steps, in order
    from .plugin_limits import write_limits

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"wfm-orchestrator: invalid configuration, not starting:\n{e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        cpus = _cpus_wanted(config.cpus)
    except (ConfigError, OSError):
        print(f"wfm-orchestrator: cpus = {config.cpus} names no CPU this process may use "
              f"(allowed: {sorted(os.sched_getaffinity(0))})", file=sys.stderr)
        return EXIT_CONFIG
    exit_code = [0]

    def lost(reason: str) -> None:
        """The lease is no longer ours (any thread): stop, as SIGTERM does."""
        if exit_code[0] == EXIT_LEASE_LOST:
            return
        exit_code[0] = EXIT_LEASE_LOST
        if lease is not None:
            lease.drop()  # no Slurm submission from now on
        log.critical("%s: this orchestrator no longer leads, stopping (exit %d; started "
                     "again, it serves as a standby)", reason, EXIT_LEASE_LOST)
        os.kill(os.getpid(), signal.SIGTERM)

    def stop(signum, frame):
        # Before the build: a lease lost while loading stops the start with exit 5 too.
        raise SystemExit(exit_code[0])

    signal.signal(signal.SIGTERM, stop)
    lease = keeper = standby = None
    leading = True
    if state_db.is_postgresql(config.state_db):
        from .lease import Keeper, Lease, default_advertise_url
        from .store import MIGRATIONS
        from .takeover import Standby

        lease = Lease(config.state_db, config.advertise_url or
                      default_advertise_url(config.listen), config.lease_ttl,
                      known_schema=len(MIGRATIONS))
        keeper = Keeper(lease, lost)
        try:
            lease.setup()
            leading = lease.acquire()
        except StoreError as e:
            print(f"wfm-orchestrator: state database unusable, not starting: {e}",
                  file=sys.stderr)
            return EXIT_STORE
    parts: list = []  # (app, nonblocking, rm, services, steps, store) once leading
    if leading:
        if keeper is not None:
            keeper.start()
        try:
            parts[:] = build_all(config, lease)
        except StoreError as e:
            _step_down(keeper, lease)
            print(f"wfm-orchestrator: state database unusable, not starting: {e}",
                  file=sys.stderr)
            return EXIT_STORE

    try:
        write_limits(config)
    except OSError as e:
        if parts:
            parts[5].close()
        _step_down(keeper, lease)
        print(f"wfm-orchestrator: cannot write plugin_limits_file {config.plugin_limits_file}, "
              f"not starting: {e}", file=sys.stderr)
        return EXIT_CONFIG

    _pin_cpus(cpus)
    from .http.server import create_server  # imported already while the start read

    host, _, port = config.listen.rpartition(":")
    if parts:
        app, nonblocking, store = parts[0], parts[1], parts[5]
        server = create_server(app, host.strip("[]"), int(port), config.threads, nonblocking,
                               fast_path=config.fast_path == "on", turn_end=(store.flush,))
    else:
        from .api.leadership import standby_app

        assert lease is not None and keeper is not None

        def take_over() -> None:
            built = build_all(config, lease)
            built[5].on_deposed = lambda error: lost(str(error))
            _start(built[3], built[4])
            parts[:] = built
            server.swap(built[0], built[1], (built[5].flush,))
            log.info("leading: serving the API (epoch %d)", lease.epoch)

        standby = Standby(lease, keeper, take_over, lost)
        try:
            standby.read()
        except StoreError as e:
            log.warning("standby: the leader lease cannot be read: %s", e)
        server = create_server(standby_app(standby.leader_url, standby.leader_epoch),
                               host.strip("[]"), int(port), config.threads,
                               fast_path=config.fast_path == "on")

    def reload_later(signum, frame):
        if not parts:
            log.info("reload: a standby reads wfm.conf when it takes over")
            return
        # Not here: the event loop may hold the resource manager's lock right now.
        threading.Thread(target=_reload_on_signal, args=(config, parts[2]), name="reload",
                         daemon=True).start()

    signal.signal(signal.SIGHUP, reload_later)
    log.info("wfm-orchestrator listening on http://%s (cpus %s, %d threads, state %s, %s)%s",
             config.listen, cpus or "all", config.threads, state_db.redact(config.state_db),
             f"slurmrestd {config.slurmrestd_url}" if config.slurmrestd_url
             else "no Slurm: Resource Manager only",
             "" if lease is None else
             f": leading (epoch {lease.epoch})" if parts else
             f": standby (leader {standby.leader_url() if standby else None})")
    if parts:
        parts[5].on_deposed = lambda error: lost(str(error))
        _start(parts[3], parts[4])
    else:
        assert standby is not None
        standby.start()
    try:
        server.run()
    except (SystemExit, KeyboardInterrupt):
        log.info("stopping")
    finally:
        server.close()
        if standby is not None:
            standby.stop()
        if parts:
            parts[4].stop()
            parts[3].stop()
            parts[5].close()
        # Released after the last write: a standby takes over at once.
        _step_down(keeper, lease, release=exit_code[0] == 0)
        log.info("stopped")
    return exit_code[0]


def _start(services, steps) -> None:
    if services.slurm is not None:
        _choose_slurm_api(services.slurm)
    services.start()
    steps.start()


def _step_down(keeper, lease, release: bool = True) -> None:
    if keeper is not None:
        keeper.stop()
    if lease is not None:
        if release:
            lease.release()
        lease.close()


def _reload_on_signal(config: Config, rm) -> None:
    """SIGHUP: reload wfm.conf; a refused file is logged with its file:line problems."""
    from .errors import ReloadRefused
    from .reloading import reload

    try:
        reload(config, rm)[1].wait()
    except ConfigError as e:
        log.error("reload refused, the running configuration is kept: %d error(s) in %s:\n%s",
                  len(e.problems), config.path, e)
    except ReloadRefused as e:
        log.error("reload refused, the running configuration is kept: %s", e)
    except Exception:  # noqa: BLE001 - a reload must never stop the service
        log.exception("reload failed; the running configuration is kept")


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


# --- the administrator's commands ---------------------------------------------------------


def _admin(command: Callable[[argparse.Namespace, Config], int]):
    """Run ``command(args, config)``, turning its errors into a message and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            config = load_config(args.config)
        except ConfigError as e:
            kept = (" (not reloaded: the running service keeps its configuration)"
                    if args.command == "reload" else "")
            print(f"wfm-orchestrator: {args.config} is invalid{kept}:\n{e}", file=sys.stderr)
            return EXIT_CONFIG
        try:
            return command(args, config)
        except ServiceUnreachable as e:
            print(f"wfm-orchestrator: {e}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except ApiFailed as e:
            print(f"wfm-orchestrator: {e.description or e.title} ({e.status})", file=sys.stderr)
            return EXIT_FAILED
        except StoreError as e:
            print(f"wfm-orchestrator: {e}", file=sys.stderr)
            return EXIT_STORE
        except OSError as e:  # the token file, the backup's target
            print(f"wfm-orchestrator: {e}", file=sys.stderr)
            return EXIT_CONFIG

    return run


def _api(args: argparse.Namespace, config: Config):
    from .admin import Api, read_token

    token = read_token(args.token_file)
    if args.url:
        return Api(args.url, token, retry_for=args.retry_for)
    return Api.for_config(config, token)


def _urls(text: str) -> list[str]:
    """``--url``: one orchestrator URL or several, comma-separated (docs/ha.md)."""
    urls = [u.strip().rstrip("/") for u in text.split(",")]
    for url in urls:
        if not url.startswith(("http://", "https://")) or any(c in url for c in " ?#"):
            raise argparse.ArgumentTypeError(
                f"{url!r} is not an http(s)://host[:port] URL (several: separated by commas)")
    return urls


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to 3600")
    return value


def _timeout(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a timeout is more than 0 seconds")
    return value


def _show(args: argparse.Namespace, doc, lines: Callable[[], list[str]]) -> int:
    print(json.dumps(doc, indent=2) if args.json else "\n".join(lines()))
    return 0


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    from .admin import render_status

    doc = _api(args, config).call("GET", "/ui/overview")
    return _show(args, doc, lambda: render_status(doc, __version__))


def cmd_datanodes(args: argparse.Namespace, config: Config) -> int:
    from .admin import render_datanodes

    doc = _api(args, config).every("/admin/datanodes")
    return _show(args, doc, lambda: render_datanodes(doc))


def cmd_reservations(args: argparse.Namespace, config: Config) -> int:
    from .admin import render_reservations

    doc = _api(args, config).every("/admin/reservations",
                                   params={"user": args.user, "state": args.state})
    return _show(args, doc, lambda: render_reservations(doc))


def cmd_show(args: argparse.Namespace, config: Config) -> int:
    from .admin import V, render_show

    api = _api(args, config)
    res = api.call("GET", f"/admin/reservations/{args.name}")
    try:
        status = api.call("GET", f"{V}/ephemeralservice/status/{args.name}")
    except ApiFailed:
        status = None
    status = status if isinstance(status, dict) else None
    return _show(args, {"reservation": res, "service": status},
                 lambda: render_show(res, status))


def cmd_release(args: argparse.Namespace, config: Config) -> int:
    from .admin import release, release_offline

    try:
        doc = release(_api(args, config), args.name)
    except ServiceUnreachable:
        try:
            said = release_offline(config, args.name)
        except KeyError:
            print(f"wfm-orchestrator: no live reservation {args.name!r} in "
                  f"{state_db.redact(config.state_db)}",
                  file=sys.stderr)
            return EXIT_FAILED
        return _show(args, {"name": args.name, "message": said}, lambda: [said])
    said = " ".join(str(doc[k]) for k in ("status", "detail", "message") if doc.get(k))
    return _show(args, doc, lambda: [f"{args.name}: {said}"])


def cmd_steps(args: argparse.Namespace, config: Config) -> int:
    from .admin import V, render_steps

    doc = _api(args, config).every(f"{V}/step/status")
    if args.user:
        doc = [s for s in doc if s.get("user") == args.user]
    return _show(args, doc, lambda: render_steps(doc))


def cmd_abort(args: argparse.Namespace, config: Config) -> int:
    from .admin import V

    doc = _api(args, config).call("DELETE", f"{V}/step/abort/{args.step}")
    return _show(args, doc, lambda: [f"{args.step}: {doc.get('message', 'abort accepted')}"])


def cmd_drain(args: argparse.Namespace, config: Config) -> int:
    from .admin import render_datanodes

    doc = _api(args, config).call("POST", f"/admin/datanodes/{args.datanode}/drain",
                                  {"reason": args.reason})
    return _show(args, doc, lambda: render_datanodes([doc])[:-1])


def cmd_resume(args: argparse.Namespace, config: Config) -> int:
    from .admin import render_datanodes

    doc = _api(args, config).call("POST", f"/admin/datanodes/{args.datanode}/resume")
    return _show(args, doc, lambda: render_datanodes([doc])[:-1])


def cmd_reload(args: argparse.Namespace, config: Config) -> int:
    doc = _api(args, config).call("POST", "/admin/reload")

    def lines() -> list[str]:
        out = [f"{doc['file']} reloaded: " + (f"{len(doc['changes'])} change(s)"
                                             if doc["changes"] else "nothing changed")]
        out += [f"  {c}" for c in doc["changes"]]
        out += [f"  datanode {n} is removed but holds reservations: drained until they end"
                for n in doc["drained_until_released"]]
        if doc["restart_needed"]:
            out.append(f"  a restart applies: {', '.join(doc['restart_needed'])}")
        return out

    return _show(args, doc, lines)


def cmd_leads(args: argparse.Namespace) -> int:
    """Exit 0 only when the one orchestrator asked leads: a virtual IP's health check.

    With --url no configuration is read (the check may run as a user that cannot read
    wfm.conf) and no token is sent (GET /v1.0.0/leader is public)."""
    from .admin import service_url

    if args.url and len(args.url) != 1:
        print("wfm-orchestrator: leads asks one orchestrator: give one --url",
              file=sys.stderr)
        return EXIT_CONFIG
    if args.url:
        return _ask_leads(args, args.url[0])
    return _admin(lambda args, config: _ask_leads(args, service_url(config.listen)))(args)


def _ask_leads(args: argparse.Namespace, url: str) -> int:
    from .admin import Api, leadership

    try:
        leads, said = leadership(Api(url, timeout=args.timeout))
    except ServiceUnreachable as e:
        print(f"wfm-orchestrator: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (ApiFailed, ValueError) as e:  # an error status, or a body that is not JSON
        print(f"wfm-orchestrator: {url}: {e}", file=sys.stderr)
        return EXIT_FAILED
    if not args.quiet:
        print(said)
    return 0 if leads else EXIT_FAILED


def cmd_db_check(args: argparse.Namespace, config: Config) -> int:
    from .admin import check_database

    facts, problems = check_database(config)
    shown = state_db.redact(config.state_db)
    _show(args, {"database": shown, "facts": facts, "problems": problems},
          lambda: [f"{shown}:", *(f"  {f}" for f in facts),
                   *(f"  PROBLEM: {p}" for p in problems)])
    return EXIT_FAILED if problems else 0


def cmd_db_backup(args: argparse.Namespace, config: Config) -> int:
    from .admin import backup_database

    size = backup_database(config, args.file)
    return _show(args, {"database": config.state_db, "backup": args.file, "bytes": size},
                 lambda: [f"{config.state_db} copied to {args.file} ({size} bytes)"])


ADMIN_HELP = f"""\
The commands that act on a running service find it from --config (its `listen`; a
wildcard address is reached on loopback) and send an admin token when the service
asks for one (auth = keycloak): WFM_ADMIN_TOKEN, else the first line of --token-file.

environment:
  WFM_CONFIG            the configuration file (default {DEFAULT_CONFIG})
  WFM_ADMIN_TOKEN       an access token with the admin role
  WFM_ADMIN_TOKEN_FILE  a file holding one (default: none)
  WFM_LOG_LEVEL         the log level (default INFO for serve, else WARNING)

exit codes:
  0  done
  {EXIT_FAILED}  the orchestrator refused the request (its reason is printed), or db check
     found a problem, or leads: the orchestrator asked does not lead
  {EXIT_CONFIG}  a wrong command line, an invalid wfm.conf or an unreadable token file
  {EXIT_STORE}  the state database is unusable, or in use by the running service
  {EXIT_UNREACHABLE}  no orchestrator answers at the configuration's listen address
  {EXIT_LEASE_LOST}  serve: this leader lost the leader lease (PostgreSQL): restarted, it
     serves as a standby
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wfm-orchestrator", description=__doc__,
                                     epilog=ADMIN_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"wfm-orchestrator {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("WFM_LOG_LEVEL"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="default: $WFM_LOG_LEVEL, else INFO for serve and WARNING for "
                             "the other commands")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=os.environ.get("WFM_CONFIG", DEFAULT_CONFIG),
                        help="the service's wfm.conf (default: $WFM_CONFIG, else "
                             f"{DEFAULT_CONFIG})")
    admin = argparse.ArgumentParser(add_help=False, parents=[common])
    admin.add_argument("--token-file", default=os.environ.get("WFM_ADMIN_TOKEN_FILE"),
                       help="a file whose first line is an admin token (default: "
                            "$WFM_ADMIN_TOKEN_FILE; $WFM_ADMIN_TOKEN wins)")
    admin.add_argument("--json", action="store_true", help="print JSON for scripts")
    admin.add_argument("--url", type=_urls, default=os.environ.get("WFM_ORCHESTRATOR_URL"),
                       help="the orchestrator(s) to ask, comma-separated, tried in order "
                            "(a standby answering 503 passes the request on; default: "
                            "$WFM_ORCHESTRATOR_URL, else the configuration's listen address)")
    admin.add_argument("--retry-for", type=_seconds,
                       default=os.environ.get("WFM_RETRY_FOR", "0"),
                       help="seconds to keep trying when no orchestrator answers as the "
                            "leader, e.g. during a failover (default: $WFM_RETRY_FOR, else 0)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help: str, parents=(admin,)) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=list(parents),
                           epilog=ADMIN_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    add("serve", cmd_serve, "run the orchestrator", parents=(common,))
    p = sub.add_parser("check-config", help="validate a wfm.conf and print a summary")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)
    add("status", _admin(cmd_status), "one screen: datanodes (free/total, state), "
        "reservations by state, the queue, services and steps")
    add("datanodes", _admin(cmd_datanodes), "every datanode: free/total cores, memory and "
        "storage, its state and why")
    p = add("reservations", _admin(cmd_reservations), "live reservations in arrival order")
    p.add_argument("--user", help="only this user's")
    p.add_argument("--state", help="only those in this state: QUEUED, FREE, ALLOCATED or "
                                   "RELEASED (released ones until released_retention)")
    p = add("show", _admin(cmd_show), "one reservation and its service's status")
    p.add_argument("name")
    p = add("release", _admin(cmd_release), "release a reservation (its service's Slurm job "
            "is cancelled); with the service stopped, marks it RELEASED in the state database "
            "under the service's lock")
    p.add_argument("name")
    p = add("steps", _admin(cmd_steps), "workflow steps and their status")
    p.add_argument("--user", help="only this user's")
    p = add("abort", _admin(cmd_abort), "abort a step: cancel every job of it")
    p.add_argument("step")
    p = add("drain", _admin(cmd_drain), "take a datanode out of placement: no new "
            "reservation there, its services stay (persisted until resume)")
    p.add_argument("datanode")
    p.add_argument("--reason", required=True, help="why (shown by status and server/resources)")
    p = add("resume", _admin(cmd_resume), "give a drained datanode back to placement")
    p.add_argument("datanode")
    add("reload", _admin(cmd_reload), "read wfm.conf again (as SIGHUP does): datanodes, "
        "flavors, locations and the queue's settings change; a file with errors is "
        "refused with file:line and the running configuration kept")
    p = add("leads", cmd_leads, "exit 0 only if this orchestrator leads (GET /v1.0.0/leader "
            "says leader), else 1 (a standby, or an error answer), 4 (no answer within "
            "--timeout): the health check that makes a virtual IP follow the leader "
            "(docs/ha.md)", parents=(common,))
    p.add_argument("--url", type=_urls, help="the one orchestrator to ask (default: the "
                   "configuration's listen address; given, no configuration is read)")
    p.add_argument("--timeout", type=_timeout, default=2.0,
                   help="seconds to wait to connect, and then for the answer (default 2)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    db = sub.add_parser("db", help="the state database: check, backup")
    dbsub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    p = dbsub.add_parser("check", parents=[admin], help="integrity, schema version, and "
                         "whether the stored reservations fit the configured datanodes "
                         "(read-only while the service runs)", epilog=ADMIN_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=_admin(cmd_db_check))
    p = dbsub.add_parser("backup", parents=[admin], help="copy the state database to FILE "
                         "(a consistent snapshot, also while the service runs; mode 0600)",
                         epilog=ADMIN_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")
    p.set_defaults(func=_admin(cmd_db_backup))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "serve" else "WARNING")
    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # waitress warns "Task queue depth is N" for every request queued behind a
    # busy thread: normal under load, and one line per request would drown the log.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
