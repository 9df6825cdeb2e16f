"""Diff two heap snapshots (soakd.snapshot/1 files, e.g. RUN_DIR/snapshots/baseline.json.gz
and latest.json.gz): the allocation sites whose live bytes grew most from SNAP_A to SNAP_B
come first. Sizes are live bytes at each site; counts are live blocks.

--format collapsed prints the growth by full traceback as collapsed stacks (``a;b;c BYTES``,
for flamegraph.pl, inferno or speedscope) and --format speedscope a speedscope JSON file:
every stack that grew, weighted by the bytes it grew by (--top does not apply)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from soakd.coerce import printable
from soakd.errors import CommandError
from soakd.reporting.flame import collapsed, dumps_speedscope, growth_stacks
from soakd.snapshots import DiffRow, Snapshot, diff_snapshots, read_snapshot
from soakd.units import format_size

__all__ = ["add_parser", "format_table", "run"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "diff",
        help="diff two heap snapshots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("snap_a", metavar="SNAP_A", help="the earlier snapshot")
    p.add_argument("snap_b", metavar="SNAP_B", help="the later snapshot")
    p.add_argument("--top", type=int, default=20, metavar="N", help="rows to show (default 20)")
    p.add_argument(
        "--group-by",
        choices=("line", "traceback"),
        default="line",
        help="one row per source line (default) or per distinct traceback",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--format",
        choices=("table", "json", "collapsed", "speedscope"),
        default=None,
        help="table (default), json (= --json), or the growth by traceback as collapsed "
        "stacks or a speedscope file",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the diff of ``args.snap_a`` → ``args.snap_b``; 0 on success."""
    stream = out if out is not None else sys.stdout
    top: int = args.top
    if top < 1:
        raise CommandError(f"--top must be ≥ 1: {top}")
    a = read_snapshot(args.snap_a)
    b = read_snapshot(args.snap_b)
    fmt = getattr(args, "format", None) or ("json" if args.json else "table")
    if fmt in ("collapsed", "speedscope"):
        stacks = growth_stacks(diff_snapshots(a, b, group_by="traceback", top=None))
        if fmt == "collapsed":
            stream.write(collapsed(stacks))
        else:
            name = f"soakd growth {a.role} → {b.role}"
            stream.write(dumps_speedscope(stacks, name))
        return 0
    rows = diff_snapshots(a, b, group_by=args.group_by, top=top)
    if fmt == "json":
        document: dict[str, Any] = {
            "a": _describe(args.snap_a, a),
            "b": _describe(args.snap_b, b),
            "group_by": args.group_by,
            "rows": [row.to_json() for row in rows],
        }
        stream.write(json.dumps(document, indent=2) + "\n")
    else:
        # a snapshot may be hostile: its strings must not drive the terminal (JSON escapes them)
        stream.write(printable(format_table(args.snap_a, a, args.snap_b, b, rows, args.group_by)))
    return 0


def _describe(path: str, snap: Snapshot) -> dict[str, Any]:
    return {
        "path": path,
        "taken_at": snap.taken_at,
        "t": snap.t,
        "role": snap.role,
        "traced_bytes": snap.traced_bytes,
        "sampling_interval": snap.sampling_interval,
    }


def format_table(
    path_a: str, a: Snapshot, path_b: str, b: Snapshot, rows: list[DiffRow], group_by: str
) -> str:
    """Human-readable diff: a header per snapshot, then one row per site."""
    lines = [
        f"A: {path_a} ({a.role}, {a.taken_at}, {_how(a)} {format_size(a.traced_bytes)})",
        f"B: {path_b} ({b.role}, {b.taken_at}, {_how(b)} {format_size(b.traced_bytes)})",
        f"traced: {_signed_size(b.traced_bytes - a.traced_bytes)}",
        "",
    ]
    sampled = a.sampling_interval is not None or b.sampling_interval is not None
    if sampled:
        lines[-1:] = [
            "sizes are estimates from sampled allocations; ± is the growth's 95 % interval, "
            "and growth within it may be sampling noise",
            "",
        ]
    if not rows:
        lines.append("no allocation sites in either snapshot")
        return "\n".join(lines) + "\n"
    noise_col = f" {'±':>9}" if sampled else ""
    indent = " " * (49 + len(noise_col))  # under the site column
    header = f"{'GROWTH':>11}{noise_col} {'SIZE A':>10} {'SIZE B':>10} {'BLOCKS +/-':>11}  SITE"
    lines.append(header)
    for row in rows:
        noise = f" {format_size(int(row.noise)):>9}" if sampled else ""
        lines.append(
            f"{_signed_size(row.size_diff):>11}{noise} {format_size(row.size_a):>10} "
            f"{format_size(row.size_b):>10} {row.count_diff:>+11d}  {row.site}"
        )
        if row.line:
            lines.append(f"{indent}{row.line}")
        if group_by == "traceback":
            lines.extend(f"{indent}at {frame}" for frame in row.traceback[1:])
    return "\n".join(lines) + "\n"


def _how(snap: Snapshot) -> str:
    if snap.sampling_interval is None:
        return "traced"
    return f"sampled every {format_size(snap.sampling_interval)}, estimated"


def _signed_size(value: int) -> str:
    sign = "+" if value >= 0 else "-"
    return sign + format_size(abs(value))
