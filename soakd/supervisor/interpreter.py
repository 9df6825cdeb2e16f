"""The target's interpreter: which Python the worker runs under, and how soakd's code gets there.

``[target] python`` (or ``venv``, or ``soakd run --python``) names the service's own
interpreter; by default it is soakd's (``sys.executable``). The worker side of soakd (worker,
workload engine, agent, channel, profiler) imports only the standard library and runs on
Python 3.10+, so it can run in the service's environment without adding a package to it.

How the code gets there: a private directory (0700, in ``~/.cache/soakd`` or else a temporary
one) holds one symlink, ``soakd`` → soakd's package directory, and goes first on the worker's
``PYTHONPATH``. Only the ``soakd`` package becomes importable: soakd's own dependencies stay in
its site-packages, which is never put on the target's path.

Before the run, :func:`prepare` checks the interpreter (it exists, runs, is Python 3.10+) by
running :mod:`soakd.worker.environment` in it exactly as the worker will run, which also tells
the service's Python version and distributions for ``run.started``. When the bundled profiler
extension was built for another ABI, it is built once for the target's interpreter into
``~/.cache/soakd/profiler/<hash>/`` (keyed by the source and the interpreter's extension
suffix); when that fails the run falls back to tracemalloc and says why.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soakd
from soakd.config import Config
from soakd.errors import ConfigError
from soakd.profiler import ENV_EXTENSION

__all__ = ["MIN_VERSION", "TargetPython", "code_dir", "configured_python", "prepare"]

MIN_VERSION = (3, 10)
_PROBE_TIMEOUT = 60.0  # a cold interpreter on a slow disk, scanning its site-packages
_BUILD_TIMEOUT = 180.0
_PACKAGE_DIR = Path(soakd.__file__ or "").resolve().parent

# Runs on any Python 3 (the version check comes first), then imports only soakd's stdlib code.
_PROBE = """\
import json, sys
out = {"version": sys.version, "version_info": list(sys.version_info[:3]),
       "executable": sys.executable}
if sys.version_info >= (3, 10):
    import sysconfig
    from soakd.worker.environment import describe
    out = describe()
    out["include"] = sysconfig.get_paths().get("include")
    out["ext_suffix"] = sysconfig.get_config_var("EXT_SUFFIX")
    try:
        import soakd._profiler
        out["profiler_error"] = None
    except ImportError as exc:
        out["profiler_error"] = str(exc)
print(json.dumps(out))
"""


@dataclass(frozen=True)
class TargetPython:
    """The interpreter the worker runs under, as checked by :func:`prepare`."""

    executable: str  # as given: a virtualenv's bin/python is a symlink that must stay one
    key: str | None  # the setting that chose it ("target.python", "--python"), None: default
    code_dir: str  # goes first on the worker's PYTHONPATH
    info: Mapping[str, Any] = field(default_factory=dict)  # environment.describe() there
    profiler_extension: str | None = None  # a copy built for this interpreter
    profiler: str = "bundled"  # bundled | built | unavailable: <why>

    def environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``environ`` for a process of this interpreter that imports soakd's worker side."""
        env = dict(environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (self.code_dir, env.get("PYTHONPATH", "")) if p
        )
        if self.profiler_extension is not None:
            env[ENV_EXTENSION] = self.profiler_extension
        else:
            env.pop(ENV_EXTENSION, None)
        return env

    @property
    def unavailable(self) -> str | None:
        """Why the profiler will not load in this interpreter (None: it will, or may)."""
        prefix = "unavailable: "
        return self.profiler[len(prefix) :] if self.profiler.startswith(prefix) else None

    def describe(self) -> dict[str, Any]:
        """For ``run.started``: the target's Python and the distributions it sees."""
        keys = ("version", "implementation", "executable", "prefix", "soabi")
        out: dict[str, Any] = {k: self.info.get(k) for k in keys}
        out["configured"] = self.key
        out["distributions"] = dict(self.info.get("distributions") or {})
        out["distributions_total"] = self.info.get("distributions_total")
        out["profiler"] = self.profiler
        return out


def configured_python(config: Config, cli: str | None = None) -> tuple[str, str] | None:
    """(interpreter path, the setting that named it), or None for soakd's own interpreter.

    Relative paths in the config resolve against its directory, ``--python`` against the
    working directory. Symlinks are kept: a virtualenv is recognised by its bin/python's path.
    """
    if cli is not None:
        return os.path.abspath(os.path.expanduser(cli)), "--python"
    target = config.target
    if target.python is not None:
        return str(config.resolve(os.path.expanduser(target.python)).absolute()), "target.python"
    if target.venv is not None:
        venv = config.resolve(os.path.expanduser(target.venv)).absolute()
        if not venv.is_dir():
            raise ConfigError(
                f"target.venv = {target.venv!r}: no such directory ({venv}); give the service's "
                "virtualenv directory (the one with bin/python), or target.python"
            )
        python = venv / "bin" / "python"
        if not python.exists():
            raise ConfigError(
                f"target.venv = {target.venv!r}: {python} does not exist; give a virtualenv "
                "directory (made by python -m venv), or set target.python to the interpreter"
            )
        return str(python), "target.venv"
    return None


def prepare(config: Config, cli: str | None = None, *, build: bool = True) -> TargetPython:
    """Check the target's interpreter and make soakd's worker side importable there.

    ConfigError (exit 2) names the setting, its value and the fix when the interpreter is
    missing, not executable, does not run, or is older than Python 3.10.
    """
    chosen = configured_python(config, cli)
    executable, key = chosen if chosen is not None else (sys.executable, None)
    label = f"{key} = {executable!r}" if key else f"soakd's interpreter {executable!r}"
    fix = "point target.python (or --python) at the service's Python 3.10+ interpreter"
    if not os.path.exists(executable):
        raise ConfigError(f"{label}: no such file; {fix}, e.g. /srv/app/.venv/bin/python")
    if os.path.isdir(executable):
        raise ConfigError(
            f"{label}: is a directory; {fix} (for a virtualenv directory use target.venv)"
        )
    if not os.access(executable, os.X_OK):
        raise ConfigError(f"{label}: not executable; {fix}")
    where = code_dir()
    python = TargetPython(executable, key, where)
    try:
        proc = subprocess.run(
            [executable, "-c", _PROBE],
            env=python.environment(os.environ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"{label}: cannot run it: {exc}; {fix}") from None
    info: dict[str, Any] | None = None
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    with contextlib.suppress(ValueError, IndexError):
        parsed = json.loads(lines[-1])
        info = parsed if isinstance(parsed, dict) else None
    version = tuple(info.get("version_info") or ()) if info else ()
    if info is not None and version and version < MIN_VERSION:
        shown = ".".join(str(v) for v in version)
        raise ConfigError(
            f"{label}: is Python {shown}; soakd's worker needs Python "
            f"{MIN_VERSION[0]}.{MIN_VERSION[1]} or newer: {fix}"
        )
    if proc.returncode != 0 or info is None or "distributions" not in info:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        why = err[-1] if err else f"exit code {proc.returncode}, no answer"
        raise ConfigError(f"{label}: is not a Python soakd's worker can run in ({why}); {fix}")
    python = TargetPython(executable, key, where, info)
    error = info.get("profiler_error")
    if error is None:
        return python
    if info.get("ext_suffix") == sysconfig.get_config_var("EXT_SUFFIX"):
        # soakd's own ABI: the installation's extension is what it is (e.g. not built)
        return TargetPython(executable, key, where, info, None, f"unavailable: {error}")
    if not config.sampling.profiler_on or not build:
        return TargetPython(executable, key, where, info, None, "unavailable: not built for it")
    built, why = _build_profiler(info)
    if built is None:
        return TargetPython(executable, key, where, info, None, f"unavailable: {why}")
    return TargetPython(executable, key, where, info, built, "built")


_fallback_root: Path | None = None


def _cache_root() -> Path:
    """``$XDG_CACHE_HOME/soakd`` (``~/.cache/soakd``), or a temporary directory of this process
    where that is not ours to write (a systemd DynamicUser has no home): then the profiler is
    rebuilt at each start instead of once."""
    global _fallback_root
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(base) / "soakd"
    if _private(root):
        return root
    if _fallback_root is None:
        _fallback_root = Path(tempfile.mkdtemp(prefix="soakd-cache-"))  # 0700
        atexit.register(shutil.rmtree, _fallback_root, True)
    return _fallback_root


def _private(path: Path) -> bool:
    """``path`` is a real directory of ours (made so if missing) that no one else can write."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


_code_dir: str | None = None


def code_dir() -> str:
    """A private directory whose only entry is ``soakd`` → this package (made once)."""
    global _code_dir
    if _code_dir is not None:
        return _code_dir
    digest = hashlib.sha256(str(_PACKAGE_DIR).encode()).hexdigest()[:16]
    where = _cache_root() / f"code-{digest}"
    if not (_private(where) and _link(where)):
        where = Path(tempfile.mkdtemp(prefix="soakd-code-"))  # 0700
        atexit.register(shutil.rmtree, where, True)
        if not _link(where):
            raise ConfigError(f"cannot create {where / 'soakd'}: check the temporary directory")
    _code_dir = str(where)
    return _code_dir


def _link(where: Path) -> bool:
    link = where / "soakd"
    with contextlib.suppress(OSError):
        if os.readlink(link) == str(_PACKAGE_DIR):
            return True
    tmp = where / f".soakd-{os.getpid()}"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(_PACKAGE_DIR, tmp)
        os.replace(tmp, link)  # atomic: a concurrent run sees the old link or the new one
    except OSError:
        return False
    return True


def _build_profiler(info: Mapping[str, Any]) -> tuple[str | None, str]:
    """The profiler extension compiled for the interpreter ``info`` describes, cached."""
    source = _PACKAGE_DIR / "_profiler.c"
    suffix, include = info.get("ext_suffix"), info.get("include")
    if not isinstance(suffix, str) or not isinstance(include, str):
        return None, "the interpreter does not say how to build extensions for it"
    try:
        code = source.read_bytes()
    except OSError:
        return None, f"the profiler's source is not installed ({source})"
    key = hashlib.sha256(code + suffix.encode()).hexdigest()[:16]
    where = _cache_root() / "profiler" / key
    target = where / f"_profiler{suffix}"
    if target.is_file() and _private(where):
        return str(target), "cached"
    if not os.path.exists(os.path.join(include, "Python.h")):
        return None, f"no Python.h in {include} (install the interpreter's headers, -dev)"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler (cc) to build the profiler for this interpreter"
    if not _private(where):
        return None, f"cannot use {where} as a private cache directory"
    tmp = where / f".build-{os.getpid()}{suffix}"
    cmd = [cc, "-shared", "-fPIC", "-O2", "-std=c11", f"-I{include}", str(source), "-o", str(tmp)]
    try:
        proc = subprocess.run(
            [*cmd, "-lm"], capture_output=True, timeout=_BUILD_TIMEOUT, check=False
        )
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            return None, f"building it failed: {err[-1] if err else proc.returncode}"
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"building it failed: {exc}"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return str(target), "built"
