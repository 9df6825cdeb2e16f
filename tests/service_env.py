"""A service's own environment for the tests: another interpreter, a virtualenv with pins that
conflict with soakd's, cached on disk so that a test session creates it at most once.

The interpreter is the oldest Python the worker supports (3.10) when the box has one, so the
tests also prove the worker side runs there and that the profiler is rebuilt for its ABI;
otherwise soakd's own. ``$SOAKD_TEST_PYTHON`` picks another.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

# Each conflicts with soakd's own requirement (pydantic>=2.7, anyio>=4.4, structlog<26): soakd
# cannot be installed into this environment, which is the point.
CONFLICTING_PINS = ("pydantic<2", "anyio<4", "structlog>=26")
_LAYOUT = 1  # bump when what the cached virtualenv holds changes


def _version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.split()  # fmt: skip
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def service_python() -> str:
    """A base interpreter for the service: 3.10 if there is one, else soakd's own."""
    chosen = os.environ.get("SOAKD_TEST_PYTHON")
    if chosen:
        return chosen
    candidates = [shutil.which("python3.10") or ""]
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(root, "versions", "3.10*", "bin", "python3.10")))
    candidates += ["/usr/bin/python3.10", "/usr/local/bin/python3.10"]
    for python in candidates:
        if python and os.access(python, os.X_OK) and _version(python) == (3, 10):
            return python
    return sys.executable


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # parallel sessions wait for one creator
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_venv(base_python: str) -> Path:
    """``bin/python`` of a virtualenv with :data:`CONFLICTING_PINS`, made once and reused.

    Kept under ``~/.cache/soakd-tests`` (``$SOAKD_TEST_CACHE``), keyed by the interpreter and
    the pins; a virtualenv whose creation was interrupted has no ``.complete`` and is redone.
    """
    info = subprocess.run(
        [base_python, "-c", "import sys; print(sys.version); print(sys.executable)"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    key = hashlib.sha256(json.dumps([info, CONFLICTING_PINS, _LAYOUT]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("SOAKD_TEST_CACHE", os.path.expanduser("~/.cache/soakd-tests")))
    venv = root / f"venv-{key}"
    python = venv / "bin" / "python"
    with _locked(root / f"venv-{key}.lock"):
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=300)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 *CONFLICTING_PINS],
                check=True, timeout=600, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            (venv / ".complete").write_text(info, encoding="utf-8")
    return python
