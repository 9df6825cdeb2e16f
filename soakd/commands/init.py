"""Write a commented starter config for a target: its factory, its options, the main knobs.

    soakd init mypkg.service:build_aggregator --python-path src -o soakd.toml

The factory is imported (not called) to list its options with their defaults; options
without a default are left for you to fill in (check-config names them). Every key not in
the file keeps its default: see ``config/soakd.toml`` or ``soakd schema``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import tomli_w

from soakd.commands import Subparsers
from soakd.errors import CommandError, ConfigError

_P = inspect.Parameter


def _toml_value(value: Any) -> str | None:
    """``value`` as an inline TOML value, or None when TOML cannot hold it (None, objects)."""
    try:
        return tomli_w.dumps({"v": value}).strip()[len("v = ") :]
    except (TypeError, ValueError):
        return None


def _options(factory: Any) -> list[str]:
    """``[target.options]`` lines from the factory's signature (commented out, with defaults)."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return ["# (the factory's signature cannot be read: add its keyword arguments here)"]
    lines = []
    for p in params:
        if p.kind not in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY):
            continue
        hint = "" if p.annotation is _P.empty else f"  # {_annotation(p.annotation)}"
        if p.default is _P.empty:
            lines.append(f"# {p.name} = ?   # REQUIRED: no default{hint.replace('  #', ',')}")
            continue
        literal = _toml_value(p.default)
        if literal is None:
            lines.append(f"# {p.name} =   # default {p.default!r}{hint.replace('  #', ',')}")
        else:
            lines.append(f"# {p.name} = {literal}{hint}")
    return lines or ["# (the factory takes no keyword arguments)"]


def _annotation(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def starter_config(spec: str, method: str, python_path: list[str], options: list[str]) -> str:
    """The starter file's text (pure)."""
    path = _toml_value(python_path) or "[]"
    return f"""\
# soakd configuration for {spec}
# Every key not set here keeps its default (all of them: config/soakd.toml, `soakd schema`).
# Durations: 250ms, 90s, 10m, 1h30m, 6h. Sizes: 512KiB, 2GiB, 10MB, 10G.
# Validate: soakd check-config THIS_FILE    Run: soakd run -c THIS_FILE

[target]
# factory: "module:attr", a class, function or coroutine function building the target;
# method: called once per iteration with one query; python_path: relative to this file
factory = {_toml_value(spec)}
method = {_toml_value(method)}
python_path = {path}

[target.options]   # keyword arguments of the factory (uncomment to change a default)
{chr(10).join(options)}

[run]
duration = "30m"   # leak verdicts need the warm-up (1-10 min) and a window after it

[workload]
users = 4          # closed model: virtual users, each iterating with think time
# rate = 50.0      # open model instead: arrivals per second
timeout = "30s"    # per iteration; a timeout counts as an error
# queries = ["python asyncio", {{ text = "compare X and Y", kind = "complex", weight = 2 }}]
# queries_file = "queries.txt"

[detection]
on_leak = "fail"   # fail: exit 3 on a confirmed leak; alert: report it and go on

# [[rules]]        # abort before the box runs out of memory, alert on slow latency
# metric = "rss_bytes"
# above = "2GiB"
# action = "abort"
"""


def add_parser(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "init",
        help="write a commented starter config for a target",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="TARGET", help="module:attr of the factory")
    p.add_argument("--method", default="process_query", help="method called per iteration")
    p.add_argument(
        "--python-path",
        action="append",
        default=[],
        metavar="DIR",
        help="import directory, relative to the config file (repeatable)",
    )
    p.add_argument("-o", "--output", default="soakd.toml", metavar="FILE", help="'-': stdout")
    p.add_argument("--force", action="store_true", help="overwrite an existing FILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from soakd.config import TargetConfig
    from soakd.worker.target import TargetError, import_attr

    try:
        target = TargetConfig(factory=args.target, method=args.method)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"soakd init {args.target!r}: {exc}") from None
    out = None if args.output == "-" else Path(args.output)
    if out is not None and out.exists() and not args.force:
        raise CommandError(f"{out} exists; pass --force to overwrite it, or -o another file")
    base = (out.parent if out is not None else Path.cwd()).resolve()
    try:
        assert target.factory is not None
        factory = import_attr(target.factory, tuple(args.python_path), str(base))
        options = _options(factory)
    except TargetError as exc:
        print(f"soakd: warning: {exc.message}; options not listed", file=sys.stderr)
        options = ["# (the target could not be imported: add its keyword arguments here)"]
    text = starter_config(args.target, args.method, list(args.python_path), options)
    if out is None:
        sys.stdout.write(text)
        return 0
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}; check it with: soakd check-config {out}")
    return 0
