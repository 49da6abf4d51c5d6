import os

import pytest

from wfm_orchestrator.cli import main
from wfm_orchestrator.config import load_config, parse_config
from wfm_orchestrator.errors import ConfigError

from ..conftest import ROOT

BASE = """auth = none
Location=loc1 ComputeNodes=cn[1-2] Datanodes=dn1 NeighborLocation=loc2
Location=loc2 ComputeNodes=cn3 Datanodes=dn2
Datanode=dn[1-2] Cores=16 MemorySize=64GB StorageSize=2TB
Flavor=small MemorySize=5GB Cores=2
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "/etc/wfm.conf")
    return [str(p) for p in e.value.problems]


def test_repository_wfm_conf_describes_the_dev_cluster():
    """The shipped wfm.conf: two locations, cn[1-2], dn[1-2], the spec's flavors."""
    config = load_config(os.path.join(ROOT, "wfm.conf"))
    assert list(config.locations) == ["loc1", "loc2"]
    assert config.locations["loc1"].compute_nodes == ("cn1",)
    assert config.locations["loc1"].neighbours == ("loc2",)
    assert list(config.datanodes) == ["dn1", "dn2"]
    assert config.datanodes["dn2"].location == "loc2"
    assert {f.name: (f.cores, f.msize, f.ssize) for f in config.flavors.values()} == {
        "small": (2, 5120, 0),
        "medium": (4, 10240, 512000),
        "large": (16, 51200, 2 * 1024 * 1024),
    }


def test_nodesets_and_sizes_are_expanded():
    """Nodesets expand with ClusterShell; sizes convert to MB."""
    config = parse_config(BASE)
    assert config.locations["loc1"].compute_nodes == ("cn1", "cn2")
    dn = config.datanodes["dn1"]
    assert (len(dn.core_list), dn.msize, dn.ssize, dn.location) == (16, 65536, 2097152, "loc1")


def test_core_list_replaces_cores():
    """CoreList= gives explicit core ids."""
    config = parse_config(BASE.replace("Cores=16", "CoreList=0-3,8-11"))
    assert config.datanodes["dn1"].core_list == (0, 1, 2, 3, 8, 9, 10, 11)


def test_settings_have_documented_defaults_and_attribute_access():
    """Unset settings take their defaults; settings read as attributes."""
    config = parse_config(BASE)
    assert config.listen == "127.0.0.1:8080"
    assert config.placement_policy == "pack"
    assert config.target_tier_list == ("NVMe", "SSD", "HDD", "tape")
    assert config.slurmrestd_url == ""


def test_relative_state_db_is_relative_to_the_file():
    """state_db = var/x.db lands beside the configuration file."""
    config = parse_config(BASE + "state_db = var/x.db\n", "/etc/wfm/wfm.conf")
    assert config.state_db == "/etc/wfm/var/x.db"


@pytest.mark.parametrize(("value", "expected"), [
    ("sqlite:var/x.db", "/etc/wfm/var/x.db"),
    ("sqlite:/srv/x.db", "/srv/x.db"),
    ("postgresql://wfm@db1:5432,db2:5432/wfm?target_session_attrs=read-write",
     "postgresql://wfm@db1:5432,db2:5432/wfm?target_session_attrs=read-write"),
    ("postgres://db1/wfm", "postgres://db1/wfm"),
    ("postgresql:///wfm?host=/run/postgresql", "postgresql:///wfm?host=/run/postgresql"),
])
def test_state_db_forms(value, expected):
    """A path or sqlite:PATH (relative to the file), or a PostgreSQL URL as given."""
    config = parse_config(BASE + f"state_db = {value}\n", "/etc/wfm/wfm.conf")
    assert config.state_db == expected


@pytest.mark.parametrize(("value", "says"), [
    ("mysql://u:Sekr3t@db/wfm", "unsupported database 'mysql'"),
    ("postgresql://u:Sekr3t@db1,,db2/wfm", "must name its host"),
    ("sqlite:", "no database named"),
])
def test_a_bad_state_db_names_the_field_and_the_forms_never_the_password(value, says):
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + f"state_db = {value}\n", "/etc/wfm/wfm.conf")
    text = str(e.value)
    assert "state_db: invalid value" in text and says in text
    assert "postgresql://[user[:password]@]host" in text  # the fix: the accepted forms
    assert "Sekr3t" not in text


def test_a_reload_lists_a_changed_state_db_without_its_password():
    from wfm_orchestrator.config import changes

    old = parse_config(BASE + "state_db = postgresql://wfm:Old-Pw@db1/wfm\n", "/e/wfm.conf")
    new = parse_config(BASE + "state_db = postgresql://wfm:New-Pw@db2/wfm\n", "/e/wfm.conf")
    said = " ".join(changes(old, new))
    assert "db2" in said and "Old-Pw" not in said and "New-Pw" not in said


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("colour = blue", "unknown key 'colour'"),
        ("Flavor=big MemorySize=5XB Cores=2", "invalid size '5XB'"),
        ("Flavor=small MemorySize=1GB Cores=1", "duplicate Flavor 'small'"),
        ("Flavor=none MemorySize=1GB Cores=0", "needs Cores > 0 and MemorySize > 0"),
        ("Flavor=nomem MemorySize=0 Cores=1", "needs Cores > 0 and MemorySize > 0"),
        ("Location=loc3 Datanodes=dn1", "datanode dn1 is in two locations"),
        ("Location=loc3 Datanodes=dn9", "datanode dn9 has no inventory"),
        ("Location=loc3 NeighborLocation=nowhere", "NeighborLocation 'nowhere' is not"),
        ("Flavor=x Cores=1", "needs MemorySize="),
        ("Datanode=dn7 Cores=2 CoreList=0-1 MemorySize=1G StorageSize=1G", "exactly one of"),
        ("Datanode=dn1 Cores=2 MemorySize=1G StorageSize=1G", "datanode dn1 described twice"),
        ("Datanode=dn8 Cores=2 MemorySize=1G StorageSize=1G Colour=red", "unknown key Colour"),
        ("Datanode=dn8 CoreList=0-2000 MemorySize=1G StorageSize=1G", "core ids from 0 to 1023"),
        ("placement_policy = random", "expected one of pack, spread"),
        ("listen = nowhere", "expected host:port"),
        ("EphemeralService=XYZ Command=/bin/true", "unknown service type 'XYZ'"),
        ("Tier=NVMe Root=relative/path", "Root=<absolute path>"),
        ("this is not a line", "expected 'key = value'"),
    ],
)
def test_each_error_names_file_line_and_text(line, expected):
    """Every error carries file:line, the reason and the offending text."""
    found = problems(BASE + line + "\n")
    assert len(found) == 1, found
    assert found[0].startswith("/etc/wfm.conf:6: ")
    assert expected in found[0]
    assert repr(line.strip()) in found[0]


def test_all_errors_are_reported_at_once():
    """Several problems are all listed, in file order."""
    found = problems(BASE + "colour = blue\nFlavor=small MemorySize=1GB Cores=1\nlisten = x\n")
    assert [p.split(":")[1] for p in found] == ["6", "7", "8"]


def test_auth_none_needs_a_loopback_listener():
    """auth = none on a public address is refused."""
    found = problems(BASE + "listen = 0.0.0.0:8080\n")
    assert "only on a loopback listener" in found[0]


SLURM = "slurm_token_file = /etc/wfm/slurm.jwt\n"


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:6820", "http://127.0.0.1", "http://[::1]:6820", "http://localhost:6820",
    "http://LOCALHOST:6820/", "http://127.0.0.2:6820/slurm",
])
def test_http_slurmrestd_on_loopback_is_accepted(url):
    """http:// to slurmrestd on this host: the SlurmUser token never leaves it."""
    config = parse_config(BASE + SLURM + f"slurmrestd_url = {url}\n")
    assert config.slurmrestd_url == url.rstrip("/")
    assert config.slurmrestd_insecure == "no"


@pytest.mark.parametrize("url", [
    "http://10.0.0.5:6820", "http://slurmctld:6820", "http://192.168.1.20",
    "http://[fe80::1]:6820", "http://0.0.0.0:6820", "http://localhost.example.org:6820",
    "http://127.0.0.1.nip.io:6820", "http://[::1:6820",
])
def test_http_slurmrestd_on_a_cluster_address_is_refused(url):
    """The SlurmUser token travels in every request: not in clear over the network."""
    text = BASE + SLURM + f"slurmrestd_url = {url}\n"
    [found] = problems(text)
    line = text.splitlines().index(f"slurmrestd_url = {url}") + 1
    assert found.startswith(f"/etc/wfm.conf:{line}: slurmrestd_url {url} ")
    assert "use https://" in found and "slurmrestd_insecure = yes" in found


@pytest.mark.parametrize("url", ["https://10.0.0.5:6820", "https://slurmctld", "https://[::1]"])
def test_https_slurmrestd_is_accepted_anywhere(url):
    assert parse_config(BASE + SLURM + f"slurmrestd_url = {url}\n").slurmrestd_url == url


def test_slurmrestd_insecure_accepts_http_on_a_cluster_address():
    """slurmrestd_insecure = yes: the operator accepts the clear-text token knowingly."""
    config = parse_config(BASE + SLURM + "slurmrestd_url = http://10.0.0.5:6820\n"
                          "slurmrestd_insecure = yes\n")
    assert (config.slurmrestd_url, config.slurmrestd_insecure) == ("http://10.0.0.5:6820", "yes")
    found = problems(BASE + SLURM + "slurmrestd_url = http://10.0.0.5:6820\n"
                     "slurmrestd_insecure = true\n")
    assert any("slurmrestd_insecure: invalid value 'true'" in p for p in found)


def test_released_retention_is_at_least_an_hour():
    """Forgetting released services must come well after their jobs stop being followed."""
    found = problems(BASE + "released_retention = 60\n")
    assert "released_retention" in found[0] and "from 3600" in found[0]
    assert parse_config(BASE + "released_retention = 3600\n").released_retention == 3600


def test_auth_keycloak_needs_server_and_realm():
    """The default auth = keycloak needs keycloak_server and keycloak_realm."""
    found = problems(BASE.replace("auth = none\n", ""))
    assert any("keycloak_server" in p for p in found)


def test_check_config_prints_a_summary(capsys):
    """check-config prints locations, datanodes and flavors in MB."""
    assert main(["check-config", os.path.join(ROOT, "wfm.conf")]) == 0
    out = capsys.readouterr().out
    assert "loc1: compute cn1, datanodes dn1, neighbours loc2" in out
    assert "dn1: 16 cores [0-15], memory 65536 MB" in out
    assert "medium: 4 cores, msize 10240 MB, ssize 512000 MB" in out


def test_check_config_exits_non_zero_with_every_error(tmp_path, capsys):
    """check-config lists every error and exits 2."""
    bad = tmp_path / "bad.conf"
    bad.write_text(BASE + "colour = blue\nFlavor=small MemorySize=1GB Cores=1\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "2 error(s)" in err and f"{bad}:6:" in err and f"{bad}:7:" in err

