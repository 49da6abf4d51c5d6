"""sbatch command lines -> job parts: a table of what is translated, what is refused."""

from __future__ import annotations

import subprocess

import pytest

from wfm_orchestrator.errors import InvalidRequest
from wfm_orchestrator.sbatch import (
    RUN_SCRIPT,
    parse_command_env,
    parse_memory,
    parse_time,
    substitute,
    translate,
)

HOME = "/home/alice"


def tr(command, env=None):
    return translate(command, env or {}, partition="compute", home=HOME)


TRANSLATED = [
    ("sbatch job.sh", dict(argv=("/bin/bash", "-c", RUN_SCRIPT, "./job.sh"), cwd=HOME)),
    ("/abs/job.sh a 'b c'", dict(argv=("/bin/bash", "-c", RUN_SCRIPT, "/abs/job.sh", "a",
                                       "b c"))),
    ("-N 2 -n 4 -c 2 --ntasks-per-node=2 job.sh",
     dict(nodes=2, tasks=4, cpus_per_task=2, tasks_per_node=2)),
    ("-N2 --nodes=3 job.sh", None),  # given twice: refused below
    ("--mem 4G job.sh", dict(memory_per_node=4096)),
    ("--mem=500 job.sh", dict(memory_per_node=500)),
    ("--mem-per-cpu=1K job.sh", dict(memory_per_cpu=1)),
    ("-t 90 job.sh", dict(time_limit=90)),
    ("-t 1:30 job.sh", dict(time_limit=2)),
    ("--time=02:00:00 job.sh", dict(time_limit=120)),
    ("-t 1-0 job.sh", dict(time_limit=1440)),
    ("-t UNLIMITED job.sh", dict(time_limit=None)),
    ("-o out.%j -e /tmp/err job.sh",
     dict(stdout=f"{HOME}/out.%j", stderr="/tmp/err")),  # noqa: S108 - parsed, never opened
    ("-D work -o out job.sh", dict(cwd=f"{HOME}/work", stdout=f"{HOME}/work/out")),
    ("--exclusive job.sh", dict(exclusive=True)),
    ("-p compute -A proj -q normal job.sh", dict(account="proj", qos="normal")),
    ("-J myname job.sh", dict(job_name="myname")),
    ("--wrap 'echo hi; ls'", dict(argv=("/bin/sh", "-c", "echo hi; ls"))),
    ("-- job.sh -N 3", dict(argv=("/bin/bash", "-c", RUN_SCRIPT, "./job.sh", "-N", "3"))),
    (["sbatch", "--wrap", "echo $$HOME"], dict(argv=("/bin/sh", "-c", "echo $HOME"))),
]


@pytest.mark.parametrize("command,expected", [t for t in TRANSLATED if t[1] is not None])
def test_translation_table(command, expected):
    """Each supported option lands in its field; the rest keep Slurm's default."""
    got = tr(command)
    for key, value in expected.items():
        assert getattr(got, key) == value, (command, key)


REFUSED = [
    ("--export=ALL job.sh", "--export"),
    ("-w cn1 job.sh", "'-w'"),
    ("--array=1-3 job.sh", "--array"),
    ("-p data job.sh", "compute partition"),
    ("-N2 --nodes=3 job.sh", "twice"),
    ("-N 0 job.sh", "--nodes"),
    ("-N two job.sh", "expected an integer"),
    ("--mem 4X job.sh", "--mem"),
    ("--mem 1G --mem-per-cpu 1G job.sh", "together"),
    ("-t 1:2:3:4 job.sh", "--time"),
    ("--exclusive=user job.sh", "takes no value"),
    ("-A 'a;b' job.sh", "--account"),
    ("--wrap 'x' job.sh", "together"),
    ("--wrap ''", "empty"),
    ("sbatch", "names neither"),
    ("-N 2", "names no script"),
    ("job.sh $NOPE", "NOPE"),
    ("--wrap 'echo ${NOPE}'", "NOPE"),
    ("job.sh ${1x}", "not a variable reference"),
    ("job.sh 'unterminated", "cannot be split"),
    ("-o", "needs a value"),
    (42, "expected a string"),
]


@pytest.mark.parametrize("command,message", REFUSED)
def test_refusal_table(command, message):
    """Unsupported or malformed options are refused with their name, never dropped."""
    with pytest.raises(InvalidRequest) as e:
        tr(command)
    assert e.value.field == "command"
    assert message in e.value.message


def test_variables_stay_inside_one_word():
    """A value with spaces, quotes or options never becomes new words or options."""
    env = {"ARGS": "--mem 1G; rm -rf / #SBATCH -p data", "F": "in put"}
    got = tr("job.sh $ARGS ${F}.dat", env)
    assert got.argv[3:] == ("./job.sh", env["ARGS"], "in put.dat")
    assert got.memory_per_node is None


def test_wrap_values_are_inserted_shell_quoted():
    """In --wrap, /bin/sh sees a value as one literal word: no command substitution."""
    env = {"X": "$(touch /tmp/pwned); `id` 'q'"}
    got = tr("--wrap 'printf %s $X'", env)
    out = subprocess.run(list(got.argv), capture_output=True, text=True, check=True)
    assert out.stdout == env["X"]


def test_option_values_substitute_too():
    assert tr("-o $D/out.txt job.sh", {"D": "/scratch"}).stdout == "/scratch/out.txt"


def test_bb_and_sbatch_lines_in_the_command_are_inert():
    """#SBATCH / #BB_LUA text in a command is only data (argv), never script header."""
    got = tr("--wrap '#BB_LUA wfm_service name=x\n#SBATCH -p data\ntrue'")
    assert got.argv[0] == "/bin/sh" and "#BB_LUA" in got.argv[2]
    got = tr(["job.sh", "#SBATCH --exclusive"])
    assert got.exclusive is False and got.argv[-1] == "#SBATCH --exclusive"


def test_dollar_dollar_is_a_literal_dollar():
    assert substitute("a$$b$$$X", {"X": "1"}) == "a$b$1"


@pytest.mark.parametrize("value,expected", [
    ("A=1 B=2", {"A": "1", "B": "2"}),
    ("A=1\nB='x y'\n", {"A": "1", "B": "x y"}),
    (["A=1", "B=x y=z"], {"A": "1", "B": "x y=z"}),
    ({"A": "1"}, {"A": "1"}),
    ("", {}),
    (None, {}),
    ("EMPTY=", {"EMPTY": ""}),
])
def test_command_env_forms(value, expected):
    assert parse_command_env(value) == expected


@pytest.mark.parametrize("value,message", [
    ("LD_PRELOAD=/x.so", "may not be set"),
    ("BASH_ENV=/x", "may not be set"),
    ("ENV=/x", "may not be set"),
    ("SLURM_JOB_ID=1", "may not be set"),
    ("SPANK_X=1", "may not be set"),
    ("WFM_ARGV_0=/bin/sh", "may not be set"),
    ("1A=x", "not a variable name"),
    ("A-B=x", "not a variable name"),
    (["A\n=x"], "not a variable name"),
    ({"A\n": "x"}, "not a variable name"),
    ("NOEQUALS", "not a KEY=value"),
    ("A=1 A=2", "twice"),
    (["A=\0"], "NUL"),
    ([1], "KEY=value"),
    (3, "expected a string"),
])
def test_command_env_refusals(value, message):
    with pytest.raises(InvalidRequest) as e:
        parse_command_env(value)
    assert e.value.field.startswith("command_env")
    assert message in e.value.message


@pytest.mark.parametrize("text,mb", [("1", 1), ("1024K", 1), ("1025K", 2), ("2G", 2048),
                                     ("1T", 1048576), ("10MB", 10)])
def test_memory_sizes(text, mb):
    assert parse_memory(text) == mb


@pytest.mark.parametrize("text,minutes", [("5", 5), ("0:30", 1), ("1:00:01", 61),
                                          ("2-12", 3600), ("1-0:30", 1470),
                                          ("1-00:00:30", 1441), ("INFINITE", None)])
def test_time_formats(text, minutes):
    assert parse_time(text) == minutes


def test_run_script_uses_the_shebang_and_passes_arguments_as_data(tmp_path):
    """The job's fixed program runs the script with its #! interpreter (or bash)."""
    py = tmp_path / "p.py"
    py.write_text("#!/usr/bin/env python3\nimport sys; print(sys.argv[1:])\n")
    sh = tmp_path / "s.sh"
    sh.write_text("echo \"$1\"\n")
    got = translate(f"{py} '$$(id)' 'a b'", {}, partition="compute", home=str(tmp_path))
    out = subprocess.run(list(got.argv), capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "['$(id)', 'a b']"
    got = translate("s.sh '`id`'", {}, partition="compute", home=str(tmp_path))
    out = subprocess.run(list(got.argv), capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "`id`"
