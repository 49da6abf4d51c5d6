"""The administrator's command line below its edge: tables, the service's address, the
token, and the state database with the service stopped (admin.py)."""

from __future__ import annotations

import os

import pytest

from wfm_orchestrator import cli
from wfm_orchestrator.admin import (
    PAGE,
    Api,
    backup_database,
    check_database,
    read_token,
    release_offline,
    render_status,
    service_url,
    short_mb,
    table,
)
from wfm_orchestrator.errors import ApiFailed, ServiceUnreachable, StoreError
from wfm_orchestrator.model import parse_reserve
from wfm_orchestrator.resource_manager import ResourceManager
from wfm_orchestrator.store import MIGRATIONS, Store

from ..conftest import SBB, SMALL_CONF


@pytest.mark.parametrize(("mb", "shown"), [(0, "0M"), (512, "512M"), (1024, "1G"),
                                           (1536, "1.5G"), (16 * 1024, "16G"),
                                           (1024**2 - 1, "1023G"), (1024**2, "1T"),
                                           (3 * 1024**2 // 2, "1.5T"), (1024**3, "1P")])
def test_short_sizes_never_round_up(mb, shown):
    assert short_mb(mb) == shown


def test_table_aligns_numbers_right_and_words_left():
    lines = table(["NAME", "CORES", "WHEN"], [["dn1", "8/8", "2026"], ["dn10", "16/16", "-"]],
                  right=("CORES",))
    assert lines == ["NAME  CORES  WHEN", "dn1     8/8  2026", "dn10  16/16  -"]


@pytest.mark.parametrize(("listen", "url"), [("127.0.0.1:8080", "http://127.0.0.1:8080"),
                                             ("0.0.0.0:80", "http://127.0.0.1:80"),
                                             ("[::]:8080", "http://[::1]:8080"),
                                             ("[::1]:9", "http://[::1]:9"),
                                             ("wfm.example:8080", "http://wfm.example:8080")])
def test_commands_reach_the_service_at_its_listen_address(listen, url):
    """A wildcard listener is reached on loopback."""
    assert service_url(listen) == url


def test_list_commands_follow_the_next_cursor_page_by_page():
    """Api.every asks PAGE items at a time and follows X-Next-Cursor to the last page,
    keeping the command's own parameters."""
    pages = {None: ([1, 2], {"X-Next-Cursor": "r~2"}), "r~2": ([3], {})}
    asked = []

    class Recorded(Api):
        def _exchange(self, method, path, body, params):
            asked.append((method, path, dict(params)))
            return pages[params.get("after")]

    assert Recorded("http://x").every("/admin/reservations", {"user": "bob"}) == [1, 2, 3]
    assert asked == [("GET", "/admin/reservations", {"user": "bob", "limit": str(PAGE)}),
                     ("GET", "/admin/reservations", {"user": "bob", "limit": str(PAGE),
                                                     "after": "r~2"})]


def test_token_comes_from_the_environment_before_the_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("from-file\nignored\n")
    assert read_token(str(path), {}) == "from-file"
    assert read_token(str(path), {"WFM_ADMIN_TOKEN": "from-env"}) == "from-env"
    assert read_token(None, {}) is None


def test_status_screen_names_what_an_administrator_looks_at():
    doc = {"time": "2026-12-06T22:00:00Z", "slurm": {"configured": True, "problem": ""},
           "datanodes": [{"name": "dn1", "location": "loc1", "state": "drained",
                          "reason": "fan", "cores": 8, "free_cores": 2, "msize": 16384,
                          "free_msize": 1024, "ssize": 1048576, "free_ssize": 1048576}],
           "reservations": {"QUEUED": 3, "FREE": 1, "ALLOCATED": 2, "RELEASED": 0},
           "queue": {"length": 3, "oldest_wait": 4000.0, "items": []},
           "services": {"count": 2, "items": [{"status": "ALLOCATED"},
                                              {"status": "STAGINGIN"}]},
           "steps": {"count": 1, "items": [{"status": "RUNNING"}]}}
    text = "\n".join(render_status(doc, "9.9"))
    assert "wfm-orchestrator 9.9 at 2026-12-06T22:00:00Z; Slurm: ok" in text
    assert "DATANODE  LOCATION  STATE    CORES  MEMORY  STORAGE  REASON" in text
    assert "dn1       loc1      drained    2/8  1G/16G    1T/1T  fan" in text
    assert "1 datanodes, 0 up" in text
    assert "reservations: 3 QUEUED, 1 FREE, 2 ALLOCATED, 0 RELEASED" in text
    assert "queue: 3 waiting, the oldest for 66m" in text
    assert "services: 2 live (1 ALLOCATED, 1 STAGINGIN)" in text
    assert "steps: 1 (1 RUNNING)" in text


def held(make_config):
    """A stopped service's database holding SBB on dn1, its service job running."""
    config = make_config()
    store = Store(config.state_db)
    rm = ResourceManager(config, store)
    rec, ticket = rm.reserve(parse_reserve(dict(SBB), config))
    ticket.wait()
    store.write([("INSERT INTO service_job (name, seq, job_id, state, updated)"
                  " VALUES (?, ?, 42, 'RUNNING', 1.0)", (rec.name, rec.seq))]).wait()
    store.close()
    return config


def test_release_with_the_service_stopped_marks_it_and_its_job(make_config, state_db):
    """RELEASED in the database, the token dropped, the job to be cancelled at start."""
    config = held(make_config)
    said = release_offline(config, SBB["name"], now=100.0)
    assert said == (f"reservation {SBB['name']} released (was FREE); its Slurm job 42 is "
                    "cancelled when the service starts")
    store = Store(config.state_db)
    try:
        [row] = store.query("SELECT state, token, detail FROM reservation")
        [job] = store.query("SELECT release_requested FROM service_job")
        rm = ResourceManager(config, store)
        assert rm.get(SBB["name"]).state.value == "RELEASED"
    finally:
        store.close()
    assert (row["state"], row["token"]) == ("RELEASED", None)
    assert "released by the administrator" in row["detail"]
    assert job["release_requested"] == 100.0
    with pytest.raises(KeyError):
        release_offline(config, SBB["name"])


def test_offline_commands_refuse_a_database_in_use(make_config, state_db):
    """release takes the service's lock (SQLite) or the leader lease (PostgreSQL): refused
    while a running service holds it."""
    config = held(make_config)
    lease = None
    if state_db.startswith("postgresql"):
        from wfm_orchestrator.lease import Lease

        lease = Lease(config.state_db, "http://leader:8080", 30)
        lease.setup()
        assert lease.acquire()
    store = Store(config.state_db, lease=lease)
    try:
        refusal = "an orchestrator leads .*http://leader:8080" if lease else \
            "in use by another orchestrator"
        with pytest.raises(StoreError, match=refusal):
            release_offline(config, SBB["name"])
        facts, problems = check_database(config)  # read-only beside the holder
        assert problems == [] and "checked read-only" in facts[0]
    finally:
        store.close()
        if lease is not None:
            lease.release()
            assert release_offline(config, SBB["name"]).startswith("reservation")
            lease.close()


def test_db_check_finds_reservations_that_no_longer_fit(make_config, tmp_path, state_db):
    config = held(make_config)
    facts, problems = check_database(config)
    latest = len(MIGRATIONS)
    assert problems == [] and f"integrity: ok; schema version {latest} of {latest}" in facts
    text = open(config.path).read()
    small = make_config(text=text.replace("Datanode=dn[1-4]", "Datanode=dn[2-4]")
                        .replace("Datanodes=dn[1-2]", "Datanodes=dn2"))
    _, problems = check_database(small)
    assert len(problems) == 1 and "no longer fits" in problems[0]
    assert "release NAME works with the service stopped" in problems[0]


def test_db_backup_is_a_private_new_file(make_config, tmp_path):
    config = held(lambda: make_config(state_db=str(tmp_path / "state.db")))  # SQLite's
    target = tmp_path / "copy.db"
    assert backup_database(config, str(target)) > 0
    assert os.stat(target).st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        backup_database(config, str(target))


def test_db_check_and_backup_on_postgresql_say_what_they_do(make_config, pg_state_db,
                                                             capsys):
    """check connects and reads (nothing created before the first start); backup refuses,
    naming pg_dump; neither shows the password."""
    password = pg_state_db.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    config = make_config(state_db=pg_state_db)
    facts, problems = check_database(config)
    assert problems == [] and "no orchestrator schema yet" in facts[0]
    config = held(lambda: config)
    facts, problems = check_database(config)
    latest = len(MIGRATIONS)
    assert problems == [] and f"integrity: ok; schema version {latest} of {latest}" in facts
    assert "reservations: 1 FREE; steps: 0" in facts
    with pytest.raises(StoreError, match="pg_dump") as refused:
        backup_database(config, str(config.path) + ".copy")
    assert cli.main(["db", "check", "--config", config.path]) == 0
    out = capsys.readouterr().out
    assert "schema version" in out
    assert password not in " ".join([*facts, str(refused.value), out])


def test_an_invalid_configuration_is_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.conf"
    bad.write_text("listen = nowhere\n")
    assert cli.main(["status", "--config", str(bad)]) == cli.EXIT_CONFIG
    assert "is invalid" in capsys.readouterr().err


# --- several orchestrators (docs/ha.md) -------------------------------------------------


STANDBY_BODY = {"title": "Not the leader", "description": "a standby", "leader": "x"}


def closed_url() -> str:
    """A loopback URL nobody listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_commands_ask_the_next_orchestrator_when_one_is_down_or_a_standby(answering):
    """A closed port, then a standby's 503, then the leader: the leader's answer."""
    standby, leader = answering(503, STANDBY_BODY), answering(200, {"ok": 1})
    api = Api([closed_url(), standby.url, leader.url])
    assert api.call("GET", "/v1.0.0/location/list") == {"ok": 1}
    assert (standby.hits, leader.hits) == (1, 1)


def test_with_one_orchestrator_a_503_is_its_answer(answering):
    only = answering(503, STANDBY_BODY)
    with pytest.raises(ApiFailed) as e:
        Api(only.url).call("GET", "/v1.0.0/location/list")
    assert e.value.status == 503 and only.hits == 1


def test_commands_keep_trying_for_retry_for_seconds_then_name_the_last_answer(answering):
    """Rounds a second apart (on the command's clock) while nobody answers as leader."""
    standby = answering(503, STANDBY_BODY)
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    api = Api([closed_url(), standby.url], retry_for=3, clock=lambda: now[0], sleep=sleep)
    with pytest.raises(ApiFailed) as e:
        api.call("GET", "/v1.0.0/location/list")
    assert e.value.status == 503 and standby.hits == 4 and slept == [1.0, 1.0, 1.0]
    with pytest.raises(ServiceUnreachable) as down:
        Api([closed_url(), closed_url()], retry_for=0).call("GET", "/v1.0.0/location/list")
    assert "no orchestrator answers at http://127.0.0.1:" in str(down.value)


def test_url_option_takes_a_list_and_refuses_anything_but_http_urls(capsys):
    args = cli._parser().parse_args(["status", "--url", "http://a:8080/, https://b:8443",
                                          "--retry-for", "45"])
    assert args.url == ["http://a:8080", "https://b:8443"] and args.retry_for == 45
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["status", "--url", "ftp://a"])
    assert "'ftp://a' is not an http(s)://host[:port] URL" in capsys.readouterr().err


# --- leads: a virtual IP's health check (docs/ha.md) --------------------------------------


def leads(*argv: str) -> int:
    # --config names no file: with --url, leads reads no configuration.
    return cli.main(["leads", "--config", "/nonexistent/wfm.conf", *argv])


def test_leads_exits_0_only_on_the_leader_and_1_on_a_standby(wsgi_served, capsys):
    """The real documents: the leader's Role resource and the standby's application."""
    import falcon

    from wfm_orchestrator.api.leadership import ROLE_PATH, Role, standby_app

    leader = falcon.App()
    leader.add_route(ROLE_PATH, Role(lambda: ("leader", "http://admin1:8080", 4)))
    leader_url = wsgi_served(leader)
    standby_url = wsgi_served(standby_app(lambda: "http://admin1:8080", lambda: 4))
    assert leads("--url", leader_url) == 0
    assert capsys.readouterr().out == f"{leader_url} leads (epoch 4)\n"
    assert leads("--url", standby_url) == cli.EXIT_FAILED
    assert capsys.readouterr().out == \
        f"{standby_url} is standby: the leader is http://admin1:8080\n"
    assert leads("--url", standby_url, "--quiet") == cli.EXIT_FAILED
    assert capsys.readouterr().out == ""


def test_leads_fails_on_an_error_answer_or_no_answer(answering, capsys):
    assert leads("--url", answering(503, STANDBY_BODY).url) == cli.EXIT_FAILED
    assert leads("--url", answering(200, {"role": None, "leader": None}).url) == \
        cli.EXIT_FAILED
    assert leads("--url", answering(200, ["leader"]).url) == cli.EXIT_FAILED
    assert leads("--url", closed_url()) == cli.EXIT_UNREACHABLE
    assert "no orchestrator answers at" in capsys.readouterr().err


def test_leads_gives_up_after_its_timeout_on_a_paused_leader(capsys):
    """A SIGSTOPped leader's kernel still accepts connections; nothing answers them."""
    import socket

    with socket.socket() as paused:
        paused.bind(("127.0.0.1", 0))
        paused.listen(8)
        url = f"http://127.0.0.1:{paused.getsockname()[1]}"
        assert leads("--url", url, "--timeout", "0.2") == cli.EXIT_UNREACHABLE
    assert "timed out" in capsys.readouterr().err


def test_leads_asks_the_configured_listen_address_or_one_url(make_config, answering,
                                                             capsys):
    leader = answering(200, {"role": "leader", "leader": "http://x:1", "epoch": None})
    config = make_config(SMALL_CONF.replace("127.0.0.1:8080",
                                            leader.url.removeprefix("http://")))
    assert cli.main(["leads", "--config", config.path]) == 0
    assert leader.hits == 1 and capsys.readouterr().out == f"{leader.url} leads\n"
    assert leads("--url", f"{leader.url},{leader.url}") == cli.EXIT_CONFIG
    assert "give one --url" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        leads("--url", leader.url, "--timeout", "0")
    assert cli.main(["leads", "--config", "/nonexistent/wfm.conf"]) == cli.EXIT_CONFIG
