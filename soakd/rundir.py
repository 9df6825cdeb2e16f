"""The run directory: its layout (the one place of its file names), creation (never over an
earlier run), retention, atomic writes and bounded reads of its files.

A run directory read back may come from another box or be damaged: reads here are bounded
(one event line, one JSON file) and a file that cannot be read is a ``RunDirError``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
SNAPSHOT_SUFFIX = ".json.gz"  # snapshots/<role>.json.gz, role baseline | latest | final
MAX_EVENT_LINE = 1 << 20  # one event line; longer lines are skipped, not read whole
MAX_JSON_BYTES = 64 << 20


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


def create_run_dir(runs_dir: Path, explicit: Path | None, retention: int) -> RunDir:
    """Make a fresh run directory; exit 2 naming the path when it cannot be made."""
    run_id = new_run_id()
    if explicit is not None:
        path = explicit
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
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
        if explicit is None:
            runs_dir.mkdir(exist_ok=True)  # the first run makes the runs directory
        path.mkdir(parents=explicit is not None, exist_ok=True)
        (path / SNAPSHOTS).mkdir(exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            (path / ".write-test").unlink(missing_ok=True)  # created, then a full disk
        raise RunDirError(
            f"cannot create the run directory {path}: {exc.strerror or exc}; "
            "choose a writable --run-dir or output.runs_dir"
        ) from None
    if explicit is None:
        prune_runs(runs_dir, retention, keep=path)
    return RunDir(path, run_id)


def prune_runs(runs_dir: Path, retention: int, keep: Path) -> list[Path]:
    """Delete the oldest soakd run directories beyond ``retention`` (only ones soakd made)."""
    runs = sorted(
        (p for p in runs_dir.iterdir() if p.is_dir() and (p / EVENTS).exists() and p != keep),
        key=lambda p: p.stat().st_mtime,
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
    if not any((run_dir / n).is_file() for n in (SUMMARY, EVENTS, SAMPLES)):
        raise RunDirError(
            f"not a soakd run directory (no {SUMMARY}, {EVENTS} or {SAMPLES}): {run_dir}"
        )


def write_atomic(path: Path, data: str | bytes, *, private: bool = False) -> None:
    """Write via a temp file, fsync and rename, so readers never see half a file.

    ``private`` files are created 0600 (``mkstemp``); the others get the umask's mode. Any
    failure removes the temp file (a full disk must not leave one per write) and re-raises.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd: int | None = None
    if private:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
    else:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp if fd is None else fd, "wb") as fh:
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


def load_json_file(path: Path) -> Any:
    """Parse a JSON file of bounded size; a RunDirError (exit 2) naming it when not usable."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_JSON_BYTES + 1)
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
        fh = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RunDirError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        while True:
            line = fh.readline(MAX_EVENT_LINE)
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
