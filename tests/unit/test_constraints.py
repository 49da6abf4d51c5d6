"""The OpenAPI document's constraints against the server's own checks, on generated values:
the exact ones agree both ways, the stricter ones never allow what the server refuses.

Values are judged by jsonschema_rs (Schemathesis' validator: ECMA regular expressions, so
'$' ends the text, as a client reads the document), not by Python's re.
"""

from __future__ import annotations

import functools
import json
import re

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wfm_orchestrator.accounts import Accounts
from wfm_orchestrator.api import constraints
from wfm_orchestrator.api.paging import CURSOR_PATTERNS, requested
from wfm_orchestrator.config import Config, parse_config
from wfm_orchestrator.errors import InvalidRequest
from wfm_orchestrator.model import check_name, check_user, parse_reserve
from wfm_orchestrator.sbatch import parse_command_env, translate
from wfm_orchestrator.steps.request import parse_element

from ..conftest import SMALL_CONF, STEP_CONF

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
NAMEISH = st.text(alphabet="aZ09_.-/ \n~", max_size=12) | st.text(max_size=4)


@functools.cache
def config(text: str = SMALL_CONF) -> Config:
    return parse_config(text.format(state_db="/nonexistent/state.db", queue_policy="fifo"),
                        "/nonexistent/wfm.conf")


def valid(schema, value) -> bool:
    return _validator(json.dumps(schema, sort_keys=True)).is_valid(value)


@functools.cache
def _validator(schema: str):
    return jsonschema_rs.validator_for(json.loads(schema))


def accepted(check, *args, **kwargs) -> bool:
    try:
        check(*args, **kwargs)
    except InvalidRequest:
        return False
    return True


def reserve_accepts(attributes: dict, **fields) -> bool:
    body = {"name": "a", "user": "alice", "user_slurm_token": "t", "type": "NFS",
            "attributes": attributes, **fields}
    return accepted(parse_reserve, body, config())


@SETTINGS
@given(NAMEISH | st.sampled_from(["a" * 128, "a" * 129, "a" * 32, "a" * 33]))
def test_name_and_user_patterns_agree_with_the_server(value):
    """Exact: a name or user name the document allows is one the server accepts, and
    the other way round (no '..', no trailing newline, the lengths)."""
    assert valid(constraints.NAME, value) == accepted(check_name, value)
    assert valid(constraints.USER_NAME, value) == accepted(check_user, value)


class Query:
    """What api/paging.requested reads of a request."""

    def __init__(self, after: str):
        self.query_string = "after=..."
        self.after = after

    def get_param(self, name: str):
        return self.after if name == "after" else None


@pytest.mark.parametrize("kind", sorted(CURSOR_PATTERNS))
@SETTINGS
@given(value=st.text(alphabet="rsdlf~0123456789.e+-_aZ\n", max_size=14))
def test_cursor_patterns_agree_with_the_server(kind, value):
    """Exact: every cursor the document allows is a position the server reads, and it
    refuses every other text (400 naming after)."""
    schema = {"type": "string", "maxLength": 256, "pattern": CURSOR_PATTERNS[kind]}
    assert valid(schema, value) == accepted(requested, Query(value), kind)


def test_the_refused_accounts_are_excluded_by_name(account_table):
    """root, nobody and the slurm_user: excluded by the document, refused by the server;
    an ordinary account is allowed by both."""
    schema, accounts = constraints.user(config()), Accounts(config())
    for name in ("root", "nobody", config().slurm_user):
        assert not valid(schema, name)
        assert not accepted(accounts.check, name)
    assert valid(schema, "alice") and accepted(accounts.check, "alice")


@SETTINGS
@given(st.text(alphabet="0123456789. KMGTPkmgtpiB\t", max_size=12) | st.integers(-1, 2**60))
def test_a_size_the_document_allows_is_accepted(value):
    if valid(constraints.SIZE, value):
        assert reserve_accepts({"gssize": value, "msize": value, "mountpoint": "/m"}), value


@SETTINGS
@given(st.text(max_size=6) | st.text(alphabet=" \t\n\r\x00\x1c\u3000a/", max_size=6))
def test_text_mountpoint_and_targets_agree_with_the_server(value):
    """Exact for the three: no NUL; not blank where the server strips; an absolute path
    without line breaks."""
    nfs = {"gssize": 1, "mountpoint": "/m"}
    assert valid(constraints.text(16384), value) == reserve_accepts(nfs, user_slurm_token=value)
    assert valid(constraints.MOUNTPOINT, value) == reserve_accepts({**nfs, "mountpoint": value})
    for targets in (value, [value]):
        assert valid(constraints.TARGETS, targets) == reserve_accepts(
            {"flavor": "small", "targets": targets}, type="SBB")


@settings(SETTINGS, max_examples=100)
@given(st.from_regex(constraints.COMMAND, fullmatch=True))
def test_a_command_the_document_allows_is_translated(command):
    assert accepted(translate, command, {}, partition="compute")


@pytest.mark.parametrize("command", ["sbatch", "sbatch -N 1 -N 2 x.sh",
                                     "sbatch $X x.sh", "sbatch -x 1 x.sh", "sbatch --wrap",
                                     "sbatch 'a b", "sbatch -N 0 x.sh", "sbatch -p other x.sh"])
def test_commands_the_server_refuses_are_outside_the_document(command):
    assert not accepted(translate, command, {}, partition="compute")
    assert not valid({"type": "string", "pattern": constraints.COMMAND}, command)


@SETTINGS
@given(st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}=[a-z0-9./]{0,4}", fullmatch=True)
                | st.sampled_from(["LD_PRELOAD=x", "SLURM_JOB_ID=1", "WFM_X=", "BASH_ENV=/x",
                                   "ENV=1", "IFS=", "PS4=x", "A B=1", "1A=x"]), max_size=4))
def test_command_env_the_document_allows_is_accepted(items):
    """Sound: a string or a list of items the document allows is read by the server when
    its keys are distinct (the rule the document only describes); the denied names are
    outside it."""
    keys = [item.partition("=")[0] for item in items]
    for value in (" ".join(items), items):
        if valid(constraints.command_env(), value) and len(set(keys)) == len(keys):
            assert accepted(parse_command_env, value), value
    for denied in ("LD_PRELOAD=x", "SLURM_JOB_ID=1", "WFM_X=", "BASH_ENV=/x", "ENV=1"):
        assert not accepted(parse_command_env, [denied])
        assert not valid(constraints.command_env(), f"A=1 {denied}")
        assert not valid(constraints.command_env(), [denied])


@SETTINGS
@given(st.text(alphabet="HDNVMe:ab./*\n", max_size=10))
def test_a_data_mover_element_the_document_allows_is_accepted(value):
    """Sound: an element a form of the document allows (its source tier given) is read by
    the server for each target of that form."""
    steps = config(STEP_CONF)
    for form in constraints.datamover(steps)["oneOf"]:
        if valid(form["properties"]["elements"]["items"], value):
            for target in form["properties"]["target"]["enum"]:
                assert accepted(parse_element, value, "e", target, steps, "alice"), value


@pytest.mark.parametrize(("name", "ours"), [("alice_job5", False), ("alice_job5_x-1", False),
                                           ("bob_job1234567890", False), ("alice_jobs", True),
                                           ("alice_job5_", True), ("job5", True)])
def test_names_of_the_job_scoped_form_are_outside_the_reserve_body(name, ours):
    """<user>_job<N>[_<short>] is a job's own (POST server/jobservice): the document keeps
    it out of a reserve's name, as the server does."""
    schema = constraints.reserve_request(config())["oneOf"][0]["properties"]["name"]
    assert valid(schema, name) == ours == reserve_accepts({"gssize": 1, "mountpoint": "/m"},
                                                          name=name)


def test_the_document_names_the_configured_flavors_locations_and_tiers():
    forms = constraints.reserve_request(config())["oneOf"]
    sbb = next(f for f in forms if f["properties"]["type"]["enum"] == ["SBB"])
    assert sbb["properties"]["attributes"]["properties"]["flavor"]["enum"] == list(
        config().flavors)
    assert constraints.locations(config())["items"]["enum"] == list(config().locations)
    movers = constraints.datamover(config())["oneOf"]
    sources = [re.match(r"\^(\w+):", m["properties"]["elements"]["items"]["pattern"]).group(1)
               for m in movers]
    assert sources == list(config().target_tier_list)
