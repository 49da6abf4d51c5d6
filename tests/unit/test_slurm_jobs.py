"""Builders of job scripts and submit bodies: golden files and the bad-input corpus."""

import json
import os
import re

import pytest

from wfm_orchestrator.errors import InvalidRequest
from wfm_orchestrator.slurm.jobs import (
    BBDirective,
    Dependency,
    JobSpec,
    build_job_script,
    format_bb,
    service_directive,
    use_directive,
    validate_spec,
)
from wfm_orchestrator.slurm.versions import SUPPORTED
from wfm_orchestrator.slurm.versions import build_submit_body as submit_body

from ..golden import assert_golden

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")

SERVICE = JobSpec(
    name="alice_s1_nfs",
    command=["/usr/bin/ganesha.nfsd", "-F", "-L", "/dev/stderr"],
    partition="data",
    nodes=["dn1", "dn2"],
    cpus_per_node=4,
    memory_per_node=10240,
    environment={"WFM_SERVICE": "alice_s1_nfs"},
    cwd="/home/alice",
    comment="wfm:service:alice_s1_nfs",
    stdout="/home/alice/.wfm/alice_s1_nfs-%j.out",
    bb=[service_directive("alice_s1_nfs")],
    launcher=["srun", "--ntasks-per-node=1"],
)
STEP = JobSpec(
    name="alice_s1_step1_0",
    command=["/home/alice/run.sh", "--input", "a b;$(c)"],
    partition="compute",
    node_count=2,
    environment={"OMP_NUM_THREADS": "4", "MESSAGE": "x\ny"},
    comment="wfm:step:alice_s1_step1_0",
    dependencies=[Dependency("afterok", (41, 42))],
    stdout="/home/alice/step-%j.out",
    stderr="/home/alice/step-%j.err",
    time_limit=60,
    bb=[use_directive("alice_s1_nfs", "RO"), use_directive("alice_s1_sbb")],
)
MINIMAL = JobSpec(name="mover", command=["wfm-datamover"], partition="compute")


def build_submit_body(spec, version="v0.0.38"):
    """Slurm 22.05's body (the version-independent checks below run on it; the
    golden files and the 24.11 shape are checked for every version)."""
    return submit_body(spec, version)


@pytest.mark.parametrize("version", SUPPORTED)
@pytest.mark.parametrize("name,spec", [("service", SERVICE), ("step", STEP), ("minimal", MINIMAL)])
def test_submit_body_matches_golden_files(name, spec, version):
    """The script and the job description of each kind of job are exactly the golden ones:
    22.05's (v0.0.38) in golden/, 24.11's (the same for v0.0.40, v0.0.41, v0.0.42) in
    golden/v0.0.4x/ (fields checked on the real daemons: tests/unit/captured/v0.0.4*/)."""
    body = submit_body(spec, version)
    if version == "v0.0.38":
        script, job, where = body["script"], body["job"], GOLDEN
    else:
        assert set(body) == {"job"}
        job = dict(body["job"])
        script, where = job.pop("script"), os.path.join(GOLDEN, "v0.0.4x")
    assert_golden(os.path.join(GOLDEN, f"{name}.sh"), script)
    assert_golden(os.path.join(where, f"{name}.job.json"),
                  json.dumps(job, indent=1, sort_keys=True) + "\n")


def test_v004x_writes_lists_and_set_numbers():
    """24.11: environment as K=V, exact and excluded nodes as lists, numbers as
    {set, number}, exclusive as shared=none (what sbatch --exclusive sets)."""
    spec = JobSpec(name="j", command=["/bin/true"], partition="compute", nodes=["cn1"],
                   memory_per_node=100, time_limit=5, exclusive=True, exclude=["cn2"])
    job = submit_body(spec, "v0.0.42")["job"]
    assert job["environment"][-2:] == ["WFM_ARGC=1", "WFM_ARGV_0=/bin/true"]
    assert job["required_nodes"] == ["cn1"] and job["excluded_nodes"] == ["cn2"]
    assert job["memory_per_node"] == {"set": True, "number": 100}
    assert job["time_limit"] == {"set": True, "number": 5} and job["shared"] == ["none"]
    assert "nodelist" not in job and "exclusive" not in job


def test_command_travels_as_environment_data_not_script_text():
    """argv is in WFM_ARGV_<i>; the script only knows the count."""
    body = build_submit_body(STEP)
    env = body["job"]["environment"]
    assert [env[f"WFM_ARGV_{i}"] for i in range(3)] == list(STEP.command)
    assert env["WFM_ARGC"] == "3"
    assert "run.sh" not in body["script"] and "$(c)" not in body["script"]


def test_nodes_pin_the_job_with_nodelist_and_count():
    """Exact nodes -> nodelist + node count; cpus per node -> one task per node."""
    job = build_submit_body(SERVICE)["job"]
    assert job["nodelist"] == "dn1,dn2" and job["nodes"] == "2"
    assert job["tasks_per_node"] == 1 and job["cpus_per_task"] == 4
    assert job["memory_per_node"] == 10240


def test_dependency_is_rendered_in_slurm_syntax():
    """Dependency records become afterok:41:42."""
    assert build_submit_body(STEP)["job"]["dependency"] == "afterok:41:42"


# --- the bad-input corpus ------------------------------------------------------

NASTY = [
    ";", "$(id)", "`id`", "|", "&", ">", "<", "a\nb", "a\rb", "a\0b", "\n#SBATCH --uid=0",
    "\n#BB_LUA wfm_service name=root", "#SBATCH", "#BB_LUA", "-rf", "--help", "x" * (1 << 20),
    "\udcff\udcfe",  # non-UTF-8 bytes decoded with surrogateescape
    b"bytes".decode() + "\udc80", "a b", "$HOME", "${IFS}", "\\", "'", '"',
]
NON_TEXT = [b"\xff\xfe", None, 3, ("a",)]


def body_text(spec: JobSpec) -> tuple[str, dict]:
    body = build_submit_body(spec)
    return body["script"], body["job"]


def assert_refused_or_inert(spec: JobSpec, value) -> None:
    """Either a typed refusal, or the script is the fixed template (the value is not in it)."""
    try:
        script, job = body_text(spec)
    except InvalidRequest:
        return
    # Accepted: the script must be byte-for-byte the template for that argc and
    # the (validated) directives, so the value cannot be anywhere in it.
    assert script == build_job_script(len(spec.command), spec.bb, spec.launcher)
    for line in script.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"#!/bin/bash|#BB_LUA [a-z0-9_]+( [a-z0-9_]+=[A-Za-z0-9_.:,-]+)*"
                                r"|# Generated by wfm-orchestrator.*", line), line
    if isinstance(value, str) and (spec.bb or spec.launcher):
        assert value not in script.split("\n", 1)[1]
    json.dumps(job, ensure_ascii=True)  # always serialisable


FIELDS = {
    "name": lambda v: JobSpec(name=v, command=["/bin/true"], partition="compute"),
    "partition": lambda v: JobSpec(name="j", command=["/bin/true"], partition=v),
    "node": lambda v: JobSpec(name="j", command=["/bin/true"], partition="data", nodes=[v]),
    "comment": lambda v: JobSpec(name="j", command=["/bin/true"], partition="c", comment=v),
    "cwd": lambda v: JobSpec(name="j", command=["/bin/true"], partition="c", cwd=v),
    "stdout": lambda v: JobSpec(name="j", command=["/bin/true"], partition="c", stdout=v),
    "env_name": lambda v: JobSpec(name="j", command=["/bin/true"], partition="c",
                                  environment={v: "1"}),
    "env_value": lambda v: JobSpec(name="j", command=["/bin/true"], partition="c",
                                   environment={"X": v}),
    "argv0": lambda v: JobSpec(name="j", command=[v], partition="c"),
    "argv1": lambda v: JobSpec(name="j", command=["/bin/echo", v], partition="c"),
    "bb_verb": lambda v: JobSpec(name="j", command=["/bin/true"], partition="c",
                                 bb=[BBDirective(v)]),
    "bb_key": lambda v: JobSpec(name="j", command=["/bin/true"], partition="c",
                                bb=[BBDirective("wfm_step", ((v, "x"),))]),
    "bb_value": lambda v: JobSpec(name="j", command=["/bin/true"], partition="c",
                                  bb=[service_directive(v)]),
    "launcher": lambda v: JobSpec(name="j", command=["/bin/true"], partition="c",
                                  launcher=[v]),
}


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize("value", NASTY + NON_TEXT, ids=lambda v: repr(v)[:20])
def test_every_builder_refuses_or_carries_inert_the_corpus(field, value):
    """Shell/directive metacharacters, 1 MiB, NUL and non-UTF-8 never reach the script header."""
    assert_refused_or_inert(FIELDS[field](value), value)


@pytest.mark.parametrize("field", ["name", "partition", "node", "bb_verb", "bb_key", "bb_value",
                                   "launcher", "env_name"])
@pytest.mark.parametrize("value", NASTY, ids=lambda v: repr(v)[:20])
def test_names_with_metacharacters_are_refused(field, value):
    """Validated names refuse every corpus entry with InvalidRequest (a ValueError)."""
    with pytest.raises(InvalidRequest) as e:
        build_submit_body(FIELDS[field](value))
    assert isinstance(e.value, ValueError) and e.value.field


@pytest.mark.parametrize("value", ["a\0b", "x" * (1 << 20), "\udcff"])
def test_env_values_refuse_nul_huge_and_non_utf8(value):
    """NUL, > 128 KiB and lone surrogates cannot be an environment string."""
    with pytest.raises(InvalidRequest):
        build_submit_body(FIELDS["env_value"](value))


@pytest.mark.parametrize("value", [";", "$(id)", "`id`", "a\nb", "#SBATCH", "-rf", "'",
                                   "\n#BB_LUA x"])
def test_env_values_and_arguments_are_carried_verbatim(value):
    """Metacharacters in values and arguments are data: passed unchanged in the environment."""
    _, job = body_text(FIELDS["env_value"](value))
    assert job["environment"]["X"] == value
    _, job = body_text(FIELDS["argv1"](value))
    assert job["environment"]["WFM_ARGV_1"] == value


def test_reserved_environment_names_are_refused():
    """SLURM_*, WFM_ARGV_* and BASH_FUNC_* cannot be set by a caller."""
    for name in ("SLURM_JOB_NAME", "WFM_ARGV_0", "WFM_ARGC", "BASH_FUNC_x", "SBATCH_X"):
        with pytest.raises(InvalidRequest):
            build_submit_body(FIELDS["env_name"](name))


def test_command_must_be_a_list_not_a_string():
    """A command string would need a shell: refused."""
    with pytest.raises(InvalidRequest):
        validate_spec(JobSpec(name="j", command="rm -rf /", partition="c"))
    with pytest.raises(InvalidRequest):
        validate_spec(JobSpec(name="j", command=[], partition="c"))


def test_numbers_are_checked():
    """Counts and sizes are positive ints (bool is not an int here)."""
    for kw in ({"cpus_per_node": 0}, {"memory_per_node": -1}, {"node_count": True},
               {"time_limit": "5"}, {"nodes": ["dn1", "dn1"]}, {"nodes": "dn1"},
               {"nodes": ["dn1"], "node_count": 2},
               {"dependencies": [Dependency("before", (1,))]},
               {"dependencies": [Dependency("afterok", ())]},
               {"dependencies": [Dependency("afterok", (0,))]}):
        with pytest.raises(InvalidRequest):
            validate_spec(JobSpec(name="j", command=["/bin/true"], partition="c", **kw))


def test_directive_line_format():
    """format_bb renders '#BB_LUA verb k=v'."""
    assert format_bb(BBDirective.of("wfm_step", name="s", services="a:RO,b:RW")) == \
        "#BB_LUA wfm_step name=s services=a:RO,b:RW"


def test_script_argc_must_be_a_positive_int():
    """build_job_script refuses a non-int count."""
    for bad in (0, "3; rm", True, 10**6):
        with pytest.raises(InvalidRequest):
            build_job_script(bad)


def test_unknown_api_version_is_refused():
    """Only versions with a builder are accepted."""
    with pytest.raises(InvalidRequest):
        build_submit_body(MINIMAL, "v0.0.99")


def test_use_directive_refuses_unknown_hints():
    """hint is RO, RW or WO, upper case, as the plugin requires."""
    assert format_bb(use_directive("a_s_x", "WO")) == "#BB_LUA wfm_use name=a_s_x hint=WO"
    with pytest.raises(InvalidRequest):
        use_directive("a_s_x", "rw")
