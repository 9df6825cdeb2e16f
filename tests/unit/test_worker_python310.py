"""The worker side type-checks against Python 3.10's standard library.

It runs in the service's interpreter, which may be 3.10 while soakd itself needs 3.11+:
typeshed marks every API by the version that added it, so ``mypy --python-version 3.10``
flags a 3.11-only call (``asyncio.TaskGroup``, ``asyncio.timeout``, ``datetime.UTC``,
``Task.cancelling``, ``ExceptionGroup``) in these modules. The runtime proof on a 3.10
interpreter is tests/e2e/test_worker_isolation.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.e2e.test_worker_isolation import WORKER_SIDE


def _files() -> list[str]:
    out = []
    for name in WORKER_SIDE:
        path = ROOT / name.replace(".", "/")
        out.append(str(path / "__init__.py" if path.is_dir() else path.with_suffix(".py")))
    return out


@pytest.mark.slow
def test_worker_side_modules_type_check_on_python_3_10() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--python-version", "3.10", "--no-error-summary",
         *_files()],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
