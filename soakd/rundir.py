"""The run directory: creation (never over an earlier run), retention, and its file names."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soakd.errors import CommandError

SUMMARY = "summary.json"
EVENTS = "events.jsonl"
SAMPLES = "samples.db"
SNAPSHOTS = "snapshots"
CONFIG = "config.json"
WORKER_LOG = "worker.log"
MAX_EVENT_LINE = 1 << 20  # one event line; longer lines are skipped, not read whole


@dataclass(frozen=True)
class RunDir:
    path: Path
    run_id: str

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
            raise CommandError(
                f"will not overwrite an existing run directory: {path}; "
                "pass a new --run-dir or remove it"
            )
    else:
        if not runs_dir.parent.is_dir():
            raise CommandError(
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
        raise CommandError(
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


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temp file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk must not leave a temp file per write
            tmp.unlink(missing_ok=True)
        raise


def iter_events(path: Path) -> Iterator[dict[str, Any] | None]:
    """Each line of events.jsonl as a dict, or None for a line that is not a JSON object."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
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
    with contextlib.suppress(CommandError):
        yield from (event for event in iter_events(path) if event is not None)
