"""Import and build the target per the contract: factory + method, or a scenario function."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from soakd.errors import EXIT_TARGET_FAILED, SoakdError
from soakd.worker.settings import TargetSettings


class TargetError(SoakdError):
    """The target cannot be imported or built (exit 5); ``reason`` names the stage."""

    exit_code = EXIT_TARGET_FAILED

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _brief(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def import_attr(spec: str, python_path: tuple[str, ...] = (), base_dir: str = ".") -> Any:
    """``module:attr`` → the object; python_path entries are relative to the config file."""
    for entry in reversed(python_path):
        path = str((Path(base_dir) / entry).resolve())
        if path not in sys.path:
            sys.path.insert(0, path)
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise TargetError(
                "import",
                f"cannot import target module {module_name!r} (from {spec!r}): {exc}; "
                "check target.factory and target.python_path",
            ) from None
        raise TargetError("import", f"importing {module_name!r} failed: {_brief(exc)}") from None
    except BaseException as exc:  # the target's own import-time code raised
        raise TargetError("import", f"importing {module_name!r} failed: {_brief(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(
                "import", f"module {module_name!r} has no attribute {attr!r} (from {spec!r})"
            ) from None
    return obj


@contextlib.asynccontextmanager
async def open_target(cfg: TargetSettings, base_dir: str) -> AsyncIterator[Callable[[str], Any]]:
    """Yield the per-iteration callable; enter/exit the factory's context manager around it."""
    if cfg.scenario is not None:
        fn = import_attr(cfg.scenario, cfg.python_path, base_dir)
        if not callable(fn):
            raise TargetError("import", f"scenario {cfg.scenario!r} is not callable")
        yield fn
        return
    assert cfg.factory is not None
    factory = import_attr(cfg.factory, cfg.python_path, base_dir)
    if not callable(factory):
        raise TargetError("import", f"factory {cfg.factory!r} is not callable")
    async with contextlib.AsyncExitStack() as stack:
        try:
            target = factory(**cfg.options)
            if inspect.isawaitable(target):
                target = await target
            if hasattr(target, "__aenter__") and hasattr(target, "__aexit__"):
                target = await stack.enter_async_context(target)
            elif hasattr(target, "__enter__") and hasattr(target, "__exit__"):
                target = stack.enter_context(target)
        except TargetError:
            raise
        except BaseException as exc:
            raise TargetError("factory", f"factory {cfg.factory!r} raised {_brief(exc)}") from None
        method = getattr(target, cfg.method, None)
        if method is None or not callable(method):
            raise TargetError(
                "method",
                f"target built by {cfg.factory!r} ({type(target).__name__}) has no callable "
                f"method {cfg.method!r}; set target.method",
            )
        yield method
