"""Reports of a run: report.html (plots, leaks with code) and report.md (the same as text)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from soakd.errors import CommandError
from soakd.reporting.common import RunData, load_run
from soakd.reporting.html import render_html
from soakd.reporting.markdown import render_markdown

__all__ = [
    "REPORT_HTML",
    "REPORT_MD",
    "RunData",
    "load_run",
    "render_html",
    "render_markdown",
    "write_reports",
]

REPORT_HTML = "report.html"
REPORT_MD = "report.md"


def _write_atomic(path: Path, content: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_reports(run_dir: Path, summary: Mapping[str, Any]) -> None:
    """Write report.html and report.md for ``run_dir`` (each via a temp file and a rename)."""
    run = load_run(run_dir, summary)
    _write_atomic(run_dir / REPORT_HTML, render_html(run))
    _write_atomic(run_dir / REPORT_MD, render_markdown(run))
