"""Does the configured target exist, and does its factory take the configured options?

Imports the target's module (its import-time code runs, as in the worker) and reads the
factory's signature; never calls the factory, so nothing is started.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from soakd.config import Config

_P = inspect.Parameter


def signature_problems(
    name: str, factory: Callable[..., Any], options: Mapping[str, Any]
) -> list[str]:
    """What is wrong with calling ``factory(**options)``, per its signature (pure)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return []  # a builtin without a signature: only calling it could tell
    params = sig.parameters
    by_keyword = [
        p for p in params.values() if p.kind in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)
    ]
    valid = [p.name for p in by_keyword]
    takes_any = any(p.kind is _P.VAR_KEYWORD for p in params.values())
    problems = []
    for key, value in options.items():
        if key in valid or takes_any:
            continue
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(
            f"target.options.{key} = {value!r}: {name} takes no argument {key!r}{hint}; "
            f"valid: {', '.join(valid) or 'none'}"
        )
    for p in by_keyword:
        if p.default is _P.empty and p.name not in options:
            problems.append(
                f"target.options.{p.name}: {name} requires it; add it under [target.options]"
            )
    for p in params.values():
        if p.kind is _P.POSITIONAL_ONLY and p.default is _P.empty:
            problems.append(
                f"target.factory = {name!r}: its argument {p.name!r} is positional-only and "
                "required; soakd passes options by keyword: wrap the factory in a function"
            )
    return problems


def target_problems(config: Config) -> list[str]:
    """The target's import, factory options and method, checked without building it."""
    from soakd.worker.target import TargetError, import_attr

    t = config.target
    if t.http is not None:
        return []
    spec = t.scenario or t.factory
    if spec is None:
        return []
    key = "target.scenario" if t.scenario else "target.factory"
    try:
        obj = import_attr(spec, t.python_path, config.base_dir)
    except TargetError as exc:
        return [f"{key} = {spec!r}: {exc.message}"]
    if not callable(obj):
        return [f"{key} = {spec!r}: not callable ({type(obj).__name__})"]
    if t.scenario:
        return []
    problems = signature_problems(spec, obj, t.options)
    if inspect.isclass(obj) and not callable(getattr(obj, t.method, None)):
        methods = sorted(m for m in dir(obj) if not m.startswith("_") and callable(getattr(obj, m)))
        problems.append(
            f"target.method = {t.method!r}: {spec} has no such method; its methods: "
            f"{', '.join(methods[:20]) or 'none'}"
        )
    return problems
