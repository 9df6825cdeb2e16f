"""Reports of a run: report.html (plots, leaks with code) and report.md (the same as text)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from soakd.errors import ReportError
from soakd.reporting.html import render_html
from soakd.reporting.markdown import render_markdown
from soakd.reporting.rundata import RunData, load_run
from soakd.rundir import REPORT_HTML, REPORT_MD, write_atomic

__all__ = [
    "REPORT_HTML",
    "REPORT_MD",
    "RunData",
    "load_run",
    "render_html",
    "render_markdown",
    "write_reports",
]


def _write(path: Path, content: str) -> None:
    try:
        write_atomic(path, content)
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_reports(run_dir: Path, summary: Mapping[str, Any]) -> None:
    """Write report.html and report.md for ``run_dir`` (each via a temp file and a rename)."""
    run = load_run(run_dir, summary)
    _write(run_dir / REPORT_HTML, render_html(run))
    _write(run_dir / REPORT_MD, render_markdown(run))
