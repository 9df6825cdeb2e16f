"""Rebuild summary.json, report.html and report.md of a run from what it left on disk.

Works on a finished run, a running one and one whose supervisor was killed. Exits 0 whatever
the run's verdict; 2 when RUN_DIR is not a readable soakd run directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from soakd.coerce import text
from soakd.errors import CommandError
from soakd.reporting import write_reports
from soakd.reporting.rundata import rebuild_or_read_summary
from soakd.rundir import REPORT_HTML, REPORT_MD, SAMPLES, SUMMARY, check_run_dir
from soakd.store import RunStore
from soakd.summary import write_summary


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "report",
        help="rebuild the summary and reports of a run directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a soakd run directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    check_run_dir(run_dir)
    if (run_dir / SAMPLES).is_file():
        RunStore(run_dir / SAMPLES).close()  # a foreign or broken store: one clear message
    summary = rebuild_or_read_summary(run_dir)
    if summary:
        try:
            write_summary(run_dir, summary)
        except OSError as exc:
            raise CommandError(
                f"cannot write {run_dir / SUMMARY}: {text(exc.strerror or exc, 200)}"
            ) from None
    write_reports(run_dir, summary)
    if summary:
        print(run_dir / SUMMARY)
    print(run_dir / REPORT_HTML)
    print(run_dir / REPORT_MD)
    return 0
