"""The reference data mover: copy / move / release between tier roots, nothing outside them."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from wfm_orchestrator import datamover as dm

OTHER_UID = 4242  # an account that is not the one running the tests


def run(op, src, dst, *patterns, **kw):
    """Run the mover on the tier roots above the user directories ``src`` and ``dst``."""
    return dm.main([op, "HDD", "NVMe", "--source-root", str(src.parent), "--target-root",
                    str(dst.parent), "--progress-url", "", "--", *patterns])


def tree(root):
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = open(p).read() if not os.path.islink(p) else "->"
    return out


def test_copy_matches_patterns_and_keeps_relative_paths(user_tiers):
    """`*` stays in one directory, `**` crosses them; a matched directory is taken whole."""
    src, dst, _ = user_tiers
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "x.dat").write_text("x")
    (src / "a" / "b" / "y.dat").write_text("y")
    (src / "a" / "b" / "z.txt").write_text("z")
    (src / "d").mkdir()
    (src / "d" / "w").write_text("w")
    assert run("copy", src, dst, "a/*.dat", "a/**/*.txt", "d") == 0
    assert tree(dst) == {"a/x.dat": "x", "a/b/z.txt": "z", "d/w": "w"}
    assert "a/b/y.dat" in tree(src)  # copy keeps the source


def test_move_removes_the_source_and_emptied_directories(user_tiers):
    src, dst, _ = user_tiers
    (src / "run").mkdir()
    (src / "run" / "f1").write_text("1")
    (src / "run" / "f2").write_text("2")
    assert run("move", src, dst, "run/*") == 0
    assert tree(dst) == {"run/f1": "1", "run/f2": "2"}
    assert not (src / "run").exists()


def test_release_removes_only_sources_with_an_identical_target_copy(user_tiers):
    """HSM release: the cached copy goes only when the target holds the same bytes."""
    src, dst, _ = user_tiers
    for name, a, b in (("same", "abc", "abc"), ("diff", "abc", "abd"), ("none", "abc", None)):
        (src / name).write_text(a)
        if b is not None:
            (dst / name).write_text(b)
    assert run("release", src, dst, "*") == dm.EXIT_FAILED
    assert sorted(os.listdir(src)) == ["diff", "none"]
    assert (dst / "same").read_text() == "abc"


@pytest.mark.parametrize("pattern", ["../outside/secret", "/etc/passwd", "a/../../outside/secret",
                                     ""])
def test_patterns_outside_the_root_are_refused(user_tiers, pattern):
    src, dst, _ = user_tiers
    assert run("copy", src, dst, pattern) == dm.EXIT_FAILED
    assert tree(dst) == {}


def test_symlinks_out_of_the_root_are_refused_everywhere(user_tiers):
    """A link as the element, inside a matched directory, or as a directory on the
    way: never followed, nothing outside the root is read."""
    src, dst, outside = user_tiers
    os.symlink(outside / "secret", src / "link")
    os.symlink(outside, src / "dirlink")
    (src / "d").mkdir()
    os.symlink(outside / "secret", src / "d" / "inner")
    (src / "d" / "ok").write_text("ok")
    code = run("copy", src, dst, "link", "dirlink/secret", "d", "dirlink/*", "*")
    assert code == dm.EXIT_FAILED
    copied = tree(dst)
    assert "SECRET" not in copied.values()
    assert copied == {"d/ok": "ok"}


def test_a_symlink_in_the_target_is_replaced_not_followed(user_tiers):
    """A link planted at the target path is replaced by the file; its target is untouched."""
    src, dst, outside = user_tiers
    (src / "f").write_text("new")
    os.symlink(outside / "secret", dst / "f")
    assert run("copy", src, dst, "f") == 0
    assert not os.path.islink(dst / "f") and (dst / "f").read_text() == "new"
    assert (outside / "secret").read_text() == "SECRET"


def test_a_symlinked_target_directory_is_refused(user_tiers):
    src, dst, outside = user_tiers
    (src / "sub").mkdir()
    (src / "sub" / "f").write_text("x")
    os.symlink(outside, dst / "sub")
    assert run("copy", src, dst, "sub/f") == dm.EXIT_FAILED
    assert sorted(os.listdir(outside)) == ["secret"]


def test_no_match_is_a_failure(user_tiers):
    src, dst, _ = user_tiers
    assert run("copy", src, dst, "nothing*") == dm.EXIT_FAILED


def test_missing_roots_are_a_usage_error(user_tiers, monkeypatch):
    src, _, _ = user_tiers
    monkeypatch.delenv("WFM_TARGET_ROOT", raising=False)
    assert dm.main(["copy", "HDD", "tape", "--source-root", str(src.parent), "--progress-url", "",
                    "--", "x"]) == dm.EXIT_USAGE
    assert dm.main(["nope", "HDD", "NVMe", "x"]) == dm.EXIT_USAGE


def test_progress_is_posted_to_the_orchestrator(user_tiers):
    """started ... done, with the step and data mover names, to the progress URL."""
    src, dst, _ = user_tiers
    (src / "f").write_bytes(b"x" * 3000)
    posted = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            posted.append((self.path, json.loads(self.rfile.read(
                int(self.headers["Content-Length"])))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1.0.0/step/progress"
        code = dm.main(["copy", "HDD", "NVMe", "--source-root", str(src.parent), "--target-root",
                        str(dst.parent), "--progress-url", url, "--step", "s1", "--name", "dm1",
                        "--", "f"])
    finally:
        server.shutdown()
    assert code == 0
    assert posted[0][0] == "/v1.0.0/step/progress"
    assert posted[0][1]["step_name"] == "s1" and posted[0][1]["datamover_name"] == "dm1"
    assert posted[0][1]["progress"].startswith("started")
    assert posted[-1][1]["progress"].startswith("done: copy 1/1 files, 100%")


def test_unreachable_progress_url_does_not_stop_the_transfer(user_tiers):
    src, dst, _ = user_tiers
    (src / "f").write_text("x")
    assert dm.main(["copy", "HDD", "NVMe", "--source-root", str(src.parent), "--target-root",
                    str(dst.parent), "--progress-url", "http://127.0.0.1:9/x", "--", "f"]) == 0
    assert (dst / "f").read_text() == "x"


def test_datamover_is_stdlib_only():
    """It runs with Debian's /usr/bin/python3, where the orchestrator's packages are not."""
    import ast

    tree_ = ast.parse(open(dm.__file__).read())
    names = {a.name.split(".")[0] for n in ast.walk(tree_) if isinstance(n, ast.Import)
             for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree_)
              if isinstance(n, ast.ImportFrom) and n.module}
    import sys

    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names


def test_progress_token_is_read_from_the_token_file(tmp_path):
    """WFM_TOKEN_FILE's token is sent as a bearer token; a missing file means none."""
    from wfm_orchestrator.datamover import read_token

    token = tmp_path / "dm.token"
    token.write_text("eyJabc.def.ghi\n")
    assert read_token(str(token)) == "eyJabc.def.ghi"
    assert read_token(str(tmp_path / "missing")) == ""
    assert read_token("") == ""
    token.write_text("a\nb")
    assert read_token(str(token)) == ""


# --- per-user directories: owned by the user, written by nobody else ----------------


def run_reporting(op, src_root, dst_root, *patterns):
    """(exit code, the progress texts posted) of a run on two tier roots."""
    sent = []
    real = dm.Progress.post

    def post(self, text, force=True):
        sent.append(text)
        real(self, text, force)

    mp = pytest.MonkeyPatch()
    mp.setattr(dm.Progress, "post", post)
    try:
        code = dm.main([op, "HDD", "NVMe", "--source-root", str(src_root), "--target-root",
                        str(dst_root), "--progress-url", "", "--", *patterns])
    finally:
        mp.undo()
    return code, sent


def test_the_target_user_directory_is_created_0700(user_tiers):
    """Paths resolve under <root>/<user>/: the mover creates the user's directory, private."""
    src, dst, _ = user_tiers
    dst.rmdir()
    (src / "f").write_text("x")
    old = os.umask(0)  # whatever the job's umask, the directory is private
    try:
        assert run("copy", src, dst, "f") == 0
    finally:
        os.umask(old)
    st = os.stat(dst)
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()
    assert (dst / "f").read_text() == "x"
    assert not (dst.parent / "f").exists()  # never at the tier root itself


def test_a_missing_source_user_directory_fails_and_says_where(user_tiers):
    src, dst, _ = user_tiers
    src.rmdir()
    code, sent = run_reporting("copy", src.parent, dst.parent, "f")
    assert code == dm.EXIT_FAILED
    assert f"{src}: no such directory" in sent[-1] and sent[-1].startswith("failed")


@pytest.mark.parametrize("which", ["source", "target"])
def test_a_user_directory_owned_by_another_user_is_refused(user_tiers, which):
    """Someone planted <root>/<user> before the user's first move: nothing is written."""
    src, dst, _ = user_tiers
    (src / "f").write_text("x")
    os.chown(src if which == "source" else dst, OTHER_UID, OTHER_UID)
    code, sent = run_reporting("move", src.parent, dst.parent, "f")
    assert code == dm.EXIT_FAILED
    assert "owned by uid 4242, not by you" in sent[-1], sent
    assert (src / "f").read_text() == "x" and not (dst / "f").exists()


def test_a_user_directory_others_can_write_is_refused(user_tiers):
    src, dst, _ = user_tiers
    (src / "f").write_text("x")
    os.chmod(dst, 0o777)  # noqa: S103 - the case refused
    code, sent = run_reporting("copy", src.parent, dst.parent, "f")
    assert code == dm.EXIT_FAILED
    assert "writable by group or others (mode 0777)" in sent[-1], sent
    assert f"chmod go-w {dst}" in sent[-1]
    assert not (dst / "f").exists()


def test_a_user_directory_that_is_a_symlink_is_refused(user_tiers):
    """<root>/<user> as a link to another user's directory: never followed."""
    src, dst, outside = user_tiers
    (src / "f").write_text("x")
    dst.rmdir()
    os.symlink(outside, dst)
    code, sent = run_reporting("copy", src.parent, dst.parent, "f")
    assert code == dm.EXIT_FAILED
    assert "symbolic link or not a directory" in sent[-1], sent
    assert sorted(os.listdir(outside)) == ["secret"]


def test_a_target_subdirectory_not_owned_or_shared_is_refused(user_tiers):
    """Inside the user's directory too: a subdirectory of another owner, or one others can
    write, is never written into; the other elements still go."""
    src, dst, _ = user_tiers
    for d in ("theirs", "shared", "mine"):
        (src / d).mkdir()
        (src / d / "f").write_text(d)
        (dst / d).mkdir()
    os.chown(dst / "theirs", OTHER_UID, OTHER_UID)
    os.chmod(dst / "shared", 0o777)  # noqa: S103 - the case refused
    code, sent = run_reporting("copy", src.parent, dst.parent, "theirs/f", "shared/f", "mine/f")
    assert code == dm.EXIT_FAILED
    assert os.listdir(dst / "theirs") == [] and os.listdir(dst / "shared") == []
    assert (dst / "mine" / "f").read_text() == "mine"
    assert "theirs: owned by uid 4242" in sent[-1] and "(+1 more)" in sent[-1], sent


def test_move_does_not_unlink_from_a_source_directory_others_can_write(user_tiers):
    src, dst, _ = user_tiers
    (src / "pub").mkdir()
    (src / "pub" / "f").write_text("x")
    os.chmod(src / "pub", 0o777)  # noqa: S103 - the case refused
    assert run("move", src, dst, "pub/f") == dm.EXIT_FAILED
    assert (src / "pub" / "f").read_text() == "x"  # copied, but the source is not removed


def test_the_step_secret_is_sent_with_the_progress(user_tiers, monkeypatch):
    """WFM_STEP_SECRET goes in the body (step_secret), never on the command line."""
    src, dst, _ = user_tiers
    (src / "f").write_text("x")
    bodies = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "s3cret-of-the-step"  # noqa: S105 - a test value
    monkeypatch.setenv("WFM_STEP_SECRET", secret)
    try:
        code = dm.main(["copy", "HDD", "NVMe", "--source-root", str(src.parent),
                        "--target-root", str(dst.parent), "--progress-url",
                        f"http://127.0.0.1:{server.server_port}/p", "--step", "s1", "--name",
                        "dm1", "--", "f"])
    finally:
        server.shutdown()
    assert code == 0 and bodies
    assert all(b["step_secret"] == secret for b in bodies)
