"""The run directory: its layout (the one place of its file names), creation (never over an
earlier run), its modes, retention, atomic writes and bounded reads of its files.

A run directory is private: 0700, files 0600 (``[output] mode = "group"``: 0750 / 0640), a
stricter umask wins. Files take their directory's mode without the execute bits, so
``soakd report`` rewriting a group-shared run keeps it shared.

A run directory read back may come from another box, be damaged or be hostile: reads here are
bounded (one event line, one JSON file), open no special file (a FIFO, a device) and follow no
symbolic link, and a file that cannot be read is a ``RunDirError``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from soakd.coerce import text
from soakd.errors import EXIT_USAGE, RunDirError

SUMMARY = "summary.json"
EVENTS = "events.jsonl"
SAMPLES = "samples.db"
SNAPSHOTS = "snapshots"
CONFIG = "config.json"
WORKER_LOG = "worker.log"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
MARKER = ".soakd-run"  # holds the run id: retention removes only directories that have it
SNAPSHOT_SUFFIX = ".json.gz"  # snapshots/<role>.json.gz, role baseline | latest | final
MAX_EVENT_LINE = 1 << 20  # one event line; longer lines are skipped, not read whole
MAX_JSON_BYTES = 64 << 20
MAX_MARKER_BYTES = 256

OutputMode = Literal["private", "group"]
# directory mode per ``[output] mode``; files get it without the execute bits
DIR_MODES: dict[str, int] = {"private": 0o700, "group": 0o750}


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory's files."""

    path: Path
    run_id: str

    @classmethod
    def at(cls, path: Path) -> RunDir:
        """An existing run directory (its run id is its name)."""
        return cls(path, path.name)

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def report_html(self) -> Path:
        return self.path / REPORT_HTML

    @property
    def report_md(self) -> Path:
        return self.path / REPORT_MD

    def snapshot(self, role: str) -> Path:
        """``snapshots/<role>.json.gz``."""
        return self.snapshots / f"{role}{SNAPSHOT_SUFFIX}"

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def events(self) -> Path:
        return self.path / EVENTS

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES

    @property
    def snapshots(self) -> Path:
        return self.path / SNAPSHOTS

    @property
    def worker_log(self) -> Path:
        return self.path / WORKER_LOG


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def create_run_dir(
    runs_dir: Path, explicit: Path | None, retention: int, mode: OutputMode = "private"
) -> RunDir:
    """Make a fresh run directory (and the runs directory, the first time) with ``mode``'s
    permissions and its marker; exit 2 naming the path when it cannot be made."""
    run_id = new_run_id()
    dir_mode = DIR_MODES[mode]
    if explicit is not None:
        path = explicit
        if os.path.islink(path) or (path.exists() and (not path.is_dir() or any(path.iterdir()))):
            raise RunDirError(
                f"will not overwrite an existing run directory: {path}; "
                "pass a new --run-dir or remove it"
            )
    else:
        if not runs_dir.parent.is_dir():
            raise RunDirError(
                f"runs directory's parent does not exist: {runs_dir.parent}; create it or set "
                "output.runs_dir"
            )
        path = runs_dir / run_id
    try:
        if explicit is None and not runs_dir.exists():
            runs_dir.mkdir(mode=dir_mode)  # the first run makes the runs directory
        if path.exists():  # an empty --run-dir made beforehand: made as private as a new one
            os.chmod(path, dir_mode & ~_umask())
        else:
            path.mkdir(mode=dir_mode, parents=explicit is not None)  # mkdir applies the umask
        (path / SNAPSHOTS).mkdir(mode=dir_mode)
        write_atomic(path / MARKER, run_id + "\n")  # also the write test
    except OSError as exc:
        raise RunDirError(
            f"cannot create the run directory {path}: {exc.strerror or exc}; "
            "choose a writable --run-dir or output.runs_dir"
        ) from None
    if explicit is None:
        prune_runs(runs_dir, retention, keep=path)
    return RunDir(path, run_id)


def _umask() -> int:
    """The process's umask (Linux reports it; elsewhere the usual 022)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def file_mode(directory: Path) -> int:
    """The mode of a new file in ``directory``: the directory's without execute bits (a run
    dir 0700 → 0600, 0750 → 0640); os.open applies the umask on top."""
    try:
        return stat.S_IMODE(os.stat(directory).st_mode) & 0o666
    except OSError:
        return 0o600


def create_file(path: Path, flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """Open ``path`` for writing (created with :func:`file_mode`), never through a link."""
    return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode(path.parent))


def is_marked_run(path: Path) -> bool:
    """``path`` is a real directory (no link) holding soakd's marker with its own name."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        with open_regular(path / MARKER) as fh:
            return fh.read(MAX_MARKER_BYTES).decode("utf-8", "replace").strip() == path.name
    except (OSError, RunDirError):
        return False


def prune_runs(runs_dir: Path, retention: int, keep: Path) -> list[Path]:
    """Delete the oldest soakd run directories beyond ``retention``: only directories that
    carry soakd's marker with their run id (a folder a person put there is never touched)."""
    runs = sorted(
        (p for p in runs_dir.iterdir() if p != keep and is_marked_run(p)),
        key=lambda p: p.lstat().st_mtime,
    )
    removed = []
    for old in runs[: max(0, len(runs) - (retention - 1))]:
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed


def check_run_dir(run_dir: Path) -> None:
    """A RunDirError (exit 2) unless ``run_dir`` looks like a soakd run directory."""
    if not run_dir.exists():
        raise RunDirError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise RunDirError(f"not a directory: {run_dir}; pass a soakd run directory")
    if not any(os.path.lexists(run_dir / n) for n in (SUMMARY, EVENTS, SAMPLES)):
        raise RunDirError(
            f"not a soakd run directory (no {SUMMARY}, {EVENTS} or {SAMPLES}): {run_dir}"
        )


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write via a temp file, fsync and rename, so readers never see half a file.

    The file gets its directory's mode (:func:`file_mode`). Any failure removes the temp file
    (a full disk must not leave one per write) and re-raises.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = create_file(tmp, os.O_WRONLY | os.O_EXCL)
        with open(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented JSON (``default=str``) and a newline, written atomically."""
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def open_regular(path: Path) -> BinaryIO:
    """Open a run directory's file for reading: a regular file, never through a symbolic link,
    never a FIFO or a device (opening one can block, reading one never ends)."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise RunDirError(
                f"{path} is a symbolic link; soakd reads only regular files in a run directory"
            )
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if not stat.S_ISREG(st.st_mode):
            raise RunDirError(
                f"{path} is not a regular file ({_kind(st.st_mode)}); not a soakd file"
            )
        # O_NONBLOCK: if it was swapped for a FIFO since lstat, opening must not wait
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        fd = os.open(path, flags)
    except (FileNotFoundError, IsADirectoryError):
        raise
    except OSError as exc:
        raise RunDirError(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunDirError(f"{path} is not a regular file; not a soakd file")
        os.set_blocking(fd, True)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "a special file"


def load_json_file(path: Path) -> Any:
    """Parse a JSON file of bounded size; a RunDirError (exit 2) naming it when not usable."""
    try:
        with open_regular(path) as fh:
            raw = fh.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise RunDirError(f"cannot read {path}: no such file", EXIT_USAGE) from None
    except OSError as exc:
        raise RunDirError(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    if len(raw) > MAX_JSON_BYTES:
        raise RunDirError(f"{path} is larger than {MAX_JSON_BYTES} bytes; not a soakd file")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, bad JSON and integers too long to convert
        raise RunDirError(f"{path} is not valid JSON: {text(exc, 200)}") from None


def iter_events(path: Path) -> Iterator[dict[str, Any] | None]:
    """Each line of events.jsonl as a dict, or None for a line that is not a JSON object."""
    try:
        fh = open_regular(path)
    except FileNotFoundError:
        return
    except OSError as exc:  # a directory in its place
        raise RunDirError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        while True:
            try:
                line = fh.readline(MAX_EVENT_LINE)
            except OSError as exc:
                raise RunDirError(f"cannot read {path}: {exc.strerror or exc}") from None
            if not line:
                return
            if not line.endswith(b"\n") and len(line) >= MAX_EVENT_LINE:
                while line and not line.endswith(b"\n"):  # skip the rest of an overlong line
                    line = fh.readline(MAX_EVENT_LINE)
                yield None
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                yield None  # e.g. the last line, cut short by a SIGKILL
                continue
            if isinstance(obj, dict) and isinstance(obj.get("event"), str):
                yield obj
            else:
                yield None


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """The readable events of events.jsonl; a file that cannot be read has none."""
    with contextlib.suppress(RunDirError):
        yield from (event for event in iter_events(path) if event is not None)
