"""deploy/hacluster's fixed facts: ports apart from the Slurm mini-cluster's, Patroni's
timing rule, synchronous mode, the connection string; and its refusals. Nothing is
started here (tests/ha starts the cluster)."""

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

import pytest

from ..conftest import ROOT

HACLUSTER = os.path.join(ROOT, "deploy", "hacluster")


def load():
    """deploy/hacluster as a module (it has no .py suffix: it is a command)."""
    loader = importlib.machinery.SourceFileLoader("hacluster", HACLUSTER)
    spec = importlib.util.spec_from_loader("hacluster", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["hacluster"] = module  # its dataclasses look their module up there
    try:
        loader.exec_module(module)
    finally:
        del sys.modules["hacluster"]
    return module


def test_ports_are_distinct_loopback_ports_apart_from_the_other_servers():
    """Every port once, none of the mini-cluster's (slurmctld 6817, slurmrestd 6820, the
    slurmd 17001+), nor 8080, nor the ephemeral range the tests' servers draw from."""
    h = load()
    ports = [p for e in h.ETCDS for p in (e.client_port, e.peer_port)] + \
        [p for n in h.NODES for p in (n.pg_port, n.rest_port)] + \
        [o.port for o in h.ORCHESTRATORS]
    assert len(set(ports)) == len(ports) == 12
    taken = {6817, 6820, 8080, *range(17001, 17100)}
    assert not set(ports) & taken
    assert all(1024 < p < 32768 for p in ports)


def test_patroni_runs_in_synchronous_mode_within_its_timing_rule():
    """synchronous_mode on; loop_wait + 2 * retry_timeout <= ttl (else Patroni demotes a
    healthy primary), and a ttl that lets a failover end well within 30 s."""
    h = load()
    config = h.patroni_config(h.NODES[0], {"superuser": "s", "replication": "r", "wfm": "w"})
    dcs = config["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"] <= 20
    assert config["etcd3"]["hosts"] == [f"{h.BRIDGE_ADDRESS}:{e.client_port}" for e in h.ETCDS]
    assert config["postgresql"]["data_dir"].startswith(h.STATE_DIR + "/")


def test_the_connection_string_names_both_nodes_and_asks_for_the_writable_one():
    h = load()
    url = urlsplit(h.dsn({"superuser": "s", "replication": "r", "wfm": "secret"}))
    assert url.username == "wfm" and url.password == "secret"  # noqa: S105
    assert url.netloc.split("@")[1] == ",".join(f"{n.address}:{n.pg_port}" for n in h.NODES)
    assert url.path == "/wfm"
    assert parse_qs(url.query)["target_session_attrs"] == ["read-write"]


@pytest.mark.parametrize("argv", [[], ["bogus"], ["up", "--now"], ["status", "--xml"],
                                  ["down", "--all"]])
def test_unknown_commands_print_the_usage(argv):
    out = subprocess.run([sys.executable, HACLUSTER, *argv], capture_output=True, text=True,
                         timeout=30, check=False)
    assert out.returncode == 2
    assert "usage:" in out.stderr


def test_each_node_has_a_namespace_and_an_address_of_its_own_on_the_bridge():
    """The nodes listen on their own addresses in their own namespaces (what `partition`
    cuts); the bridge's subnet is private and pg_hba lets only it in, with a password;
    every interface name fits the kernel's 15 characters."""
    import ipaddress

    h = load()
    subnet = ipaddress.ip_network(h.SUBNET)
    assert subnet.is_private
    addresses = [h.BRIDGE_ADDRESS, *(n.address for n in h.NODES)]
    assert len(set(addresses)) == len(addresses)
    assert all(ipaddress.ip_address(a) in subnet for a in addresses)
    assert len({n.netns for n in h.NODES}) == len(h.NODES)
    assert all(n.netns.startswith("wfm-hacluster-") for n in h.NODES)
    names = [h.BRIDGE, *(x for n in h.NODES for x in (n.link, n.inner_link))]
    assert all(len(x) <= 15 for x in names), names
    config = h.patroni_config(h.NODES[0], {"superuser": "s", "replication": "r", "wfm": "w"})
    assert config["postgresql"]["listen"] == f"{h.NODES[0].address}:{h.NODES[0].pg_port}"
    hba = config["postgresql"]["pg_hba"]
    assert not [line for line in hba if "trust" in line]
    assert [line.split()[-1] for line in hba if line.startswith("host")] == \
        ["scram-sha-256", "scram-sha-256"]
    assert all(line.split()[3] == h.SUBNET for line in hba if line.startswith("host"))


@pytest.mark.parametrize("argv", [["partition"], ["partition", "pg1", "pg2"], ["heal"]])
def test_partition_and_heal_take_one_node(argv):
    out = subprocess.run([sys.executable, HACLUSTER, *argv], capture_output=True, text=True,
                         timeout=30, check=False)
    assert out.returncode == 2
    assert "partition NODE" in out.stderr


PASSWORDS = {"superuser": "s", "replication": "r", "wfm": "secret"}
MINICLUSTER = {"WFM_RESTD_URL": "http://127.0.0.1:6820", "WFM_TOKEN_FILE": "/x/var/slurm.jwt",
               "WFM_DATA_PARTITION": "data", "WFM_COMPUTE_PARTITION": "compute"}


def test_without_the_minicluster_the_orchestrators_are_resource_managers_only(tmp_path):
    from wfm_orchestrator.config import parse_config

    h = load()
    o = h.ORCHESTRATORS[1]
    config = parse_config(h.orchestrator_config(o, PASSWORDS, None), str(tmp_path / "o.conf"))
    assert config.slurmrestd_url == "" and not config.service_types
    assert config.listen == f"127.0.0.1:{o.port}"


def test_bound_to_the_minicluster_they_run_wfm_conf_with_their_own_settings(tmp_path):
    """The mini-cluster's slurmrestd, token and partitions (its env file), wfm.conf's
    layout and service types, their own listener and database, and no limits file (the
    plugin reads the integration orchestrator's)."""
    from wfm_orchestrator.config import load_config, parse_config

    h = load()
    o = h.ORCHESTRATORS[0]
    text = h.orchestrator_config(o, PASSWORDS, MINICLUSTER)
    config = parse_config(text, str(tmp_path / "o.conf"))
    wfm = load_config(os.path.join(ROOT, "wfm.conf"))
    assert config.listen == f"127.0.0.1:{o.port}"
    assert config.state_db.startswith("postgresql://wfm:secret@")
    assert config.slurmrestd_url == "http://127.0.0.1:6820"
    assert config.slurm_token_file == MINICLUSTER["WFM_TOKEN_FILE"]
    assert config.plugin_limits_file == ""
    assert set(config.service_types) == set(wfm.service_types) != set()
    assert config.locations.keys() == wfm.locations.keys()
    assert config.datanodes.keys() == wfm.datanodes.keys()
    assert config.impersonate_users == wfm.impersonate_users
    assert [line.split("=")[0].strip() for line in text.splitlines()].count("listen") == 1


def test_the_minicluster_is_seen_only_while_its_slurmctld_runs(tmp_path, monkeypatch):
    h = load()
    (tmp_path / "env").write_text("WFM_RESTD_URL=http://127.0.0.1:6820\n"
                                  "WFM_TOKEN_FILE='/a b/slurm.jwt'\n")
    monkeypatch.setattr(h, "DEVCLUSTER_RUN_DIR", str(tmp_path))
    assert h.minicluster() is None  # no slurmctld.pid
    (tmp_path / "slurmctld.pid").write_text(f"{os.getpid()}\n")  # a live pid, not slurmctld
    assert h.minicluster() is None
    monkeypatch.setattr(h, "live_pid", lambda pid, comm: pid)
    assert h.minicluster() == {"WFM_RESTD_URL": "http://127.0.0.1:6820",
                               "WFM_TOKEN_FILE": "/a b/slurm.jwt"}
    for mode, bound in (("auto", True), ("no", False), ("yes", True)):
        monkeypatch.setattr(h, "SLURM_MODE", mode)
        assert (h.slurm_facts() is not None) == bound
    monkeypatch.setattr(h, "DEVCLUSTER_RUN_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(h, "SLURM_MODE", "yes")
    with pytest.raises(h.Failure, match="does not run"):
        h.slurm_facts()
    monkeypatch.setattr(h, "SLURM_MODE", "maybe")
    with pytest.raises(h.Failure, match="auto, yes or no"):
        h.slurm_facts()
