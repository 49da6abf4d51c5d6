#!/usr/bin/python3
"""wfm-datamover: the reference data mover of the WFM orchestrator (stdlib only).

    wfm-datamover OPERATION SOURCE_TIER TARGET_TIER [--] PATTERN...

OPERATION is ``copy``, ``move`` or ``release``. Each PATTERN is relative to
the user's directory of the source tier, ``<root>/<user>/`` (``*``, ``?``
and ``[...]`` match within one path component, ``**`` matches any number
of directories; a matched directory is taken whole). Tier roots come from
``WFM_SOURCE_ROOT`` and ``WFM_TARGET_ROOT`` (or ``--source-root`` /
``--target-root``).

* copy    -- copy the matched files to the same relative paths under the
             user's directory of the target tier (written to a temporary
             name, then renamed);
* move    -- copy, then remove the source file;
* release -- remove the source file after checking that the target holds
             an identical copy (same size and bytes): the HSM "release" of
             a cached copy. A file without an identical copy is kept and
             counted as a failure.

Every path is opened component by component from the user's directory's
descriptor with ``O_NOFOLLOW``: a symbolic link anywhere under it (or as
it) is refused, as is ``..``, so no byte is read or written outside the
user's two directories, whatever links appear meanwhile. It runs as the
user (inside a Slurm job) and only uses his rights. The target's user
directory is created 0700 when missing; a directory is written into
(created in, renamed in, unlinked from) only when the running user owns it
and neither group nor others can write it, so another user cannot have
planted or shared it.

Progress is posted to ``WFM_PROGRESS_URL`` (the orchestrator's
``POST /v1.0.0/step/progress``) as ``{step_name, datamover_name, progress,
step_secret}`` (``WFM_STEP_SECRET``, the step's own) at most once a second
and at the end; a post that fails is reported on stderr and does not stop
the transfer. Exit status: 0 = every element done, 1 = some element failed
(named on stderr and in the last progress), 2 = bad usage or configuration.
docs/datamovers.md has the contract.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import pwd
import stat
import sys
import time
import urllib.error
import urllib.request

OPERATIONS = ("copy", "move", "release")
CHUNK = 1024 * 1024
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Refused(Exception):
    """An element that may not be touched (link, '..', not a regular file...)."""


# --- paths under a root, by descriptor ------------------------------------------


def split_pattern(pattern: str) -> list[str]:
    """Components of a relative pattern; refuses absolute paths and '..'."""
    if not pattern or "\0" in pattern:
        raise Refused(f"{pattern!r}: empty pattern or NUL character")
    if pattern.startswith("/"):
        raise Refused(f"{pattern}: absolute path (patterns are relative to the tier root)")
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    if not parts:
        raise Refused(f"{pattern!r}: names the tier root itself")
    if ".." in parts:
        raise Refused(f"{pattern}: '..' is not allowed")
    return parts


def check_writable(fd: int, name: str) -> None:
    """Refuse to write into a directory another user owns or may write into."""
    st = os.fstat(fd)
    uid = os.geteuid()
    if st.st_uid != uid:
        raise Refused(f"{name}: owned by uid {st.st_uid}, not by you (uid {uid}); refusing to "
                      "write into it (your data lives in directories you own)")
    if st.st_mode & 0o022:
        raise Refused(f"{name}: writable by group or others (mode "
                      f"{stat.S_IMODE(st.st_mode):04o}); refusing to write into it "
                      f"(chmod go-w {name})")


def open_dir(root_fd: int, parts: list[str] | tuple[str, ...], create: bool = False,
             write: bool = False) -> int:
    """A descriptor of root/parts (a directory), never following a link.

    ``write``: every directory on the way, root included, must pass
    :func:`check_writable` (the last one is written into, the others could be
    renamed under it by whoever may write them).
    """
    fd = os.dup(root_fd)
    try:
        if write:
            check_writable(fd, "the user directory")
        for n, part in enumerate(parts):
            if part in ("", ".", ".."):
                raise Refused(f"{'/'.join(parts)}: bad component {part!r}")
            try:
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (40, 20):  # ELOOP (a link), ENOTDIR
                    raise Refused(f"{'/'.join(parts)}: {part} is a symbolic link or not a "
                                  "directory") from None
                raise
            os.close(fd)
            fd = nfd
            if write:
                check_writable(fd, "/".join(parts[:n + 1]))
        return fd
    except BaseException:
        os.close(fd)
        raise


def _magic(part: str) -> bool:
    return any(c in part for c in "*?[")


def expand(root_fd: int, pattern: str) -> list[tuple[tuple[str, ...], str]]:
    """(relative path components, kind) of every entry matching ``pattern``.

    kind is ``file``, ``dir``, ``link`` or ``other``; links are reported, not
    followed (the caller refuses them).
    """
    segs = split_pattern(pattern)
    found: dict[tuple[str, ...], str] = {}

    def kind_of(st: os.stat_result) -> str:
        if stat.S_ISLNK(st.st_mode):
            return "link"
        if stat.S_ISDIR(st.st_mode):
            return "dir"
        if stat.S_ISREG(st.st_mode):
            return "file"
        return "other"

    def walk(dir_fd: int, rel: tuple[str, ...], rest: list[str]) -> None:
        if not rest:
            return
        seg, more = rest[0], rest[1:]
        if seg == "**":
            if more:
                walk(dir_fd, rel, more)
            else:
                _all(dir_fd, rel)
            for entry in sorted(os.scandir(dir_fd), key=lambda e: e.name):
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                sub = os.open(entry.name, DIR_FLAGS, dir_fd=dir_fd)
                try:
                    walk(sub, (*rel, entry.name), rest)
                finally:
                    os.close(sub)
            return
        if _magic(seg):
            names = sorted(e.name for e in os.scandir(dir_fd)
                           if fnmatch.fnmatchcase(e.name, seg)
                           and (seg.startswith(".") or not e.name.startswith(".")))
        else:
            names = [seg]
        for name in names:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            kind = kind_of(st)
            if not more:
                found[(*rel, name)] = kind
            elif kind == "dir":
                sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
                try:
                    walk(sub, (*rel, name), more)
                finally:
                    os.close(sub)
            elif kind == "link":
                found[(*rel, name)] = "link"

    def _all(dir_fd: int, rel: tuple[str, ...]) -> None:
        for entry in os.scandir(dir_fd):
            st = entry.stat(follow_symlinks=False)
            found[(*rel, entry.name)] = kind_of(st)

    walk(root_fd, (), segs)
    # A directory and entries inside it: the directory covers them.
    out = []
    for rel, kind in sorted(found.items()):
        if any(rel[:n] in found and found[rel[:n]] == "dir" for n in range(1, len(rel))):
            continue
        out.append((rel, kind))
    return out


def files_under(root_fd: int, rel: tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    """Every entry below directory ``rel`` (depth first), kinds as in :func:`expand`."""
    out: list[tuple[tuple[str, ...], str]] = []
    fd = open_dir(root_fd, rel)
    try:
        for entry in sorted(os.scandir(fd), key=lambda e: e.name):
            sub = (*rel, entry.name)
            if entry.is_symlink():
                out.append((sub, "link"))
            elif entry.is_dir(follow_symlinks=False):
                out.append((sub, "dir"))
                out.extend(files_under(root_fd, sub))
            elif entry.is_file(follow_symlinks=False):
                out.append((sub, "file"))
            else:
                out.append((sub, "other"))
    finally:
        os.close(fd)
    return out


def open_file(root_fd: int, rel: tuple[str, ...]) -> tuple[int, os.stat_result]:
    """Open a regular file root/rel for reading, refusing links on the way."""
    dfd = open_dir(root_fd, rel[:-1])
    try:
        try:
            fd = os.open(rel[-1], READ_FLAGS, dir_fd=dfd)
        except OSError as e:
            if e.errno == 40:  # ELOOP
                raise Refused(f"{'/'.join(rel)}: symbolic link") from None
            raise
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise Refused(f"{'/'.join(rel)}: not a regular file")
    os.set_blocking(fd, True)
    return fd, st


# --- operations -------------------------------------------------------------------


def running_user() -> str:
    """The name of the account the mover runs as (never $USER: the environment is the
    caller's to set)."""
    return pwd.getpwuid(os.geteuid()).pw_name


def open_user_dir(root: str, user: str, create: bool) -> int:
    """A descriptor of ``root/user``, the user's directory of a tier.

    Created 0700 when missing and ``create``; refused when it is a link, is
    not owned by the running user, or others may write into it.
    """
    where = os.path.join(root, user)
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if create:
            try:
                os.mkdir(user, 0o700, dir_fd=rfd)
            except FileExistsError:
                pass
        try:
            fd = os.open(user, DIR_FLAGS, dir_fd=rfd)
        except FileNotFoundError:
            raise Refused(f"{where}: no such directory (your files in this tier live under "
                          f"{where}/)") from None
        except OSError as e:
            if e.errno in (40, 20):  # ELOOP (a link), ENOTDIR
                raise Refused(f"{where}: a symbolic link or not a directory; refusing it as "
                              "your directory of the tier") from None
            raise
    finally:
        os.close(rfd)
    try:
        check_writable(fd, where)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Mover:
    def __init__(self, operation: str, source_root: str, target_root: str,
                 report: Progress | None = None, user: str | None = None):
        self.operation = operation
        user = user or running_user()
        # The source is only read by copy, but move and release unlink from it.
        self.src = open_user_dir(source_root, user, create=False)
        try:
            self.dst = open_user_dir(target_root, user, create=True)
        except BaseException:
            os.close(self.src)
            raise
        self.report = report or Progress(None, "", "")
        self.errors: list[str] = []
        self.total_bytes = 0
        self.done_bytes = 0
        self.files_total = 0
        self.files_done = 0

    def close(self) -> None:
        os.close(self.src)
        os.close(self.dst)

    def plan(self, patterns: list[str]) -> list[tuple[str, ...]]:
        """The regular files to handle; refusals and missing elements become errors."""
        files: list[tuple[str, ...]] = []
        seen: set[tuple[str, ...]] = set()
        for pattern in patterns:
            try:
                matches = expand(self.src, pattern)
            except Refused as e:
                self.errors.append(str(e))
                continue
            except OSError as e:
                self.errors.append(f"{pattern}: {e.strerror}")
                continue
            if not matches:
                self.errors.append(f"{pattern}: no file matches in the source tier")
                continue
            for rel, kind in matches:
                entries = [(rel, kind)]
                if kind == "dir":
                    try:
                        entries = files_under(self.src, rel)
                    except (Refused, OSError) as e:
                        self.errors.append(f"{'/'.join(rel)}: {e}")
                        continue
                for sub, k in entries:
                    name = "/".join(sub)
                    if k == "link":
                        self.errors.append(f"{name}: symbolic link, refused")
                    elif k == "other":
                        self.errors.append(f"{name}: not a regular file, refused")
                    elif k == "file" and sub not in seen:
                        seen.add(sub)
                        files.append(sub)
        for rel in files:
            try:
                self.total_bytes += os.stat(rel[-1], dir_fd=self._dir(self.src, rel),
                                            follow_symlinks=False).st_size
            except (Refused, OSError):
                pass
            finally:
                self._close_dir()
        self.files_total = len(files)
        return files

    _open_dir_fd: int | None = None

    def _dir(self, root_fd: int, rel: tuple[str, ...]) -> int:
        self._open_dir_fd = open_dir(root_fd, rel[:-1])
        return self._open_dir_fd

    def _close_dir(self) -> None:
        if self._open_dir_fd is not None:
            os.close(self._open_dir_fd)
            self._open_dir_fd = None

    def run(self, patterns: list[str]) -> int:
        files = self.plan(patterns)
        self.report.post(self.summary("started"))
        for rel in files:
            name = "/".join(rel)
            try:
                if self.operation == "release":
                    self.release(rel)
                else:
                    self.copy(rel)
                    if self.operation == "move":
                        self.unlink(rel)
                self.files_done += 1
            except (Refused, OSError) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else e
                self.errors.append(f"{name}: {why}")
            self.report.post(self.summary("running"), force=False)
        if self.operation == "move":
            self.prune(files)
        if self.errors:
            self.report.post(self.summary("failed"))
            return EXIT_FAILED
        self.report.post(self.summary("done"))
        return EXIT_OK

    def summary(self, phase: str) -> str:
        pct = 100 if not self.total_bytes else int(self.done_bytes * 100 / self.total_bytes)
        if phase in ("started", "running") and self.files_done < self.files_total:
            pct = min(pct, 99)
        text = (f"{phase}: {self.operation} {self.files_done}/{self.files_total} files, "
                f"{pct}% ({_size(self.done_bytes)} of {_size(self.total_bytes)})")
        if self.errors:
            first = self.errors[0]
            more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            text += f"; error: {first}{more}"
        return text[:1000]

    def copy(self, rel: tuple[str, ...]) -> None:
        sfd, st = open_file(self.src, rel)
        try:
            dfd = open_dir(self.dst, rel[:-1], create=True, write=True)
            try:
                tmp = f".{rel[-1][:200]}.wfm-dm.{os.getpid()}.tmp"
                out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | os.O_CLOEXEC, stat.S_IMODE(st.st_mode) | 0o600, dir_fd=dfd)
                try:
                    while True:
                        chunk = os.read(sfd, CHUNK)
                        if not chunk:
                            break
                        view = memoryview(chunk)
                        while view:
                            n = os.write(out, view)
                            view = view[n:]
                        self.done_bytes += len(chunk)
                        self.report.post(self.summary("running"), force=False)
                    os.fsync(out)
                    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
                    os.fchmod(out, stat.S_IMODE(st.st_mode))
                except BaseException:
                    os.close(out)
                    os.unlink(tmp, dir_fd=dfd)
                    raise
                os.close(out)
                try:
                    existing = os.stat(rel[-1], dir_fd=dfd, follow_symlinks=False)
                    if stat.S_ISDIR(existing.st_mode):
                        os.unlink(tmp, dir_fd=dfd)
                        raise Refused(f"{'/'.join(rel)}: a directory of that name exists in "
                                      "the target")
                except FileNotFoundError:
                    pass
                # rename replaces a link of that name itself, never what it points to.
                os.rename(tmp, rel[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def unlink(self, rel: tuple[str, ...]) -> None:
        dfd = open_dir(self.src, rel[:-1], write=True)
        try:
            os.unlink(rel[-1], dir_fd=dfd)
        finally:
            os.close(dfd)

    def release(self, rel: tuple[str, ...]) -> None:
        sfd, st = open_file(self.src, rel)
        try:
            try:
                tfd, tst = open_file(self.dst, rel)
            except FileNotFoundError:
                raise Refused(f"{'/'.join(rel)}: no copy in the target tier, kept") from None
            try:
                if tst.st_size != st.st_size or not _same_bytes(sfd, tfd):
                    raise Refused(f"{'/'.join(rel)}: the target copy differs, kept")
            finally:
                os.close(tfd)
        finally:
            os.close(sfd)
        self.done_bytes += st.st_size
        self.unlink(rel)

    def prune(self, files: list[tuple[str, ...]]) -> None:
        """After a move, remove the source directories it emptied (deepest first)."""
        dirs = sorted({rel[:n] for rel in files for n in range(1, len(rel))},
                      key=len, reverse=True)
        for d in dirs:
            try:
                pfd = open_dir(self.src, d[:-1], write=True)
            except (Refused, OSError):
                continue
            try:
                os.rmdir(d[-1], dir_fd=pfd)
            except OSError:
                pass  # not empty (other files) or gone
            finally:
                os.close(pfd)


def _same_bytes(a: int, b: int) -> bool:
    while True:
        x, y = os.read(a, CHUNK), os.read(b, CHUNK)
        if x != y:
            return False
        if not x:
            return True


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


# --- progress ----------------------------------------------------------------------


class Progress:
    """Posts progress to the orchestrator, at most once per ``interval`` unless forced."""

    def __init__(self, url: str | None, step: str, name: str, interval: float = 1.0,
                 timeout: float = 5.0, token: str = "", secret: str = ""):
        self.url = url
        self.token = token
        self.secret = secret
        self.step = step
        self.name = name
        self.interval = interval
        self.timeout = timeout
        self.last = 0.0
        self.sent: list[str] = []

    def post(self, text: str, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        self.sent.append(text)
        print(f"wfm-datamover: {text}", file=sys.stderr, flush=True)
        if not self.url:
            return
        fields = {"step_name": self.step, "datamover_name": self.name, "progress": text}
        if self.secret:
            fields["step_secret"] = self.secret
        body = json.dumps(fields).encode()
        # http(s) only: main() checks the scheme.
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url, data=body, method="POST",  # noqa: S310
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                resp.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            print(f"wfm-datamover: cannot post progress to {self.url}: {e}", file=sys.stderr)


def read_token(path: str) -> str:
    """The bearer token for progress posts (auth = keycloak), or "" when there is none.

    A missing or unreadable file only costs the progress detail: the move goes on.
    """
    if not path:
        return ""
    try:
        with open(path, encoding="ascii") as fh:
            token = fh.read(16384).strip()
    except (OSError, UnicodeDecodeError) as e:
        print(f"wfm-datamover: no progress token ({path}: {e})", file=sys.stderr)
        return ""
    return token if token and "\n" not in token and "\r" not in token else ""


# --- command line ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wfm-datamover", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("operation", choices=OPERATIONS)
    parser.add_argument("source_tier")
    parser.add_argument("target_tier")
    parser.add_argument("patterns", nargs="+")
    parser.add_argument("--source-root", default=os.environ.get("WFM_SOURCE_ROOT", ""))
    parser.add_argument("--target-root", default=os.environ.get("WFM_TARGET_ROOT", ""))
    parser.add_argument("--progress-url", default=os.environ.get("WFM_PROGRESS_URL", ""))
    parser.add_argument("--step", default=os.environ.get("WFM_STEP_NAME", ""))
    parser.add_argument("--name", default=os.environ.get("WFM_DATAMOVER_NAME", ""))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    url = args.progress_url or None
    if url and not url.startswith(("http://", "https://")):
        print(f"wfm-datamover: progress URL {url!r} is not http(s)", file=sys.stderr)
        url = None
    report = Progress(url, args.step, args.name, token=read_token(os.environ.get(
        "WFM_TOKEN_FILE", "")), secret=os.environ.get("WFM_STEP_SECRET", ""))
    problems = []
    for what, tier, root in (("source", args.source_tier, args.source_root),
                             ("target", args.target_tier, args.target_root)):
        if not root:
            problems.append(f"the {what} tier {tier} has no root (Tier={tier} Root=... in "
                            "wfm.conf)")
        elif not os.path.isabs(root):
            problems.append(f"the {what} root {root!r} is not an absolute path")
    if not problems and os.path.realpath(args.source_root) == os.path.realpath(args.target_root):
        problems.append("the source and target roots are the same directory")
    if problems:
        report.post("failed: " + "; ".join(problems))
        return EXIT_USAGE
    try:
        mover = Mover(args.operation, args.source_root, args.target_root, report)
    except Refused as e:
        report.post(f"failed: {e}")
        return EXIT_FAILED
    except OSError as e:
        report.post(f"failed: cannot open your directory of a tier: {e}")
        return EXIT_USAGE
    try:
        code = mover.run(args.patterns)
    finally:
        mover.close()
    for err in mover.errors:
        print(f"wfm-datamover: {err}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
