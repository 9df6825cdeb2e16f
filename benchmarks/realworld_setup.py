"""Install the pinned releases of the real-world scenarios into ``.realworld/<case>-<variant>``.

    python benchmarks/realworld_setup.py [--only NAME,...] [--force]

Every entry of ``PINS`` in ``benchmarks/scenarios/realworld.py`` is installed with
``pip install --target .realworld/<name> <requirements>`` (binary wheels only: the leaky and the
fixed release must be the ones PyPI ships). A directory whose ``.pins`` file lists the same
requirements is left alone, so running it again does nothing; ``--force`` reinstalls. Exits 2 with
a message if the package index cannot be reached, 1 if an install fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "scenarios"))
from realworld import PINS, REALWORLD_DIR, install_dir

STAMP = ".pins"


def index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/") + "/"


def index_reachable(timeout: float = 15.0) -> str | None:
    """None if the index answers, else why not."""
    url = index_url() + "pip/"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read(1)
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}"
    return None


def installed(name: str) -> bool:
    stamp = install_dir(name) / STAMP
    return stamp.exists() and stamp.read_text(encoding="utf-8").split() == list(PINS[name])


def install(name: str) -> tuple[bool, str]:
    target = install_dir(name)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-compile", "--only-binary", ":all:", "--target", str(target),
           *PINS[name]]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        return False, (proc.stderr or proc.stdout).strip()
    (target / STAMP).write_text("\n".join(PINS[name]) + "\n", encoding="utf-8")
    return True, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", help="comma-separated install directory names (see PINS)")
    parser.add_argument("--force", action="store_true", help="reinstall even if up to date")
    args = parser.parse_args()
    names = list(PINS)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(PINS))
        if unknown:
            parser.error(f"unknown: {', '.join(unknown)}; known: {', '.join(PINS)}")
        names = wanted
    todo = [n for n in names if args.force or not installed(n)]
    for name in names:
        if name not in todo:
            print(f"  up to date  .realworld/{name:<26} {' '.join(PINS[name])}")
    if not todo:
        print(f"nothing to do: {len(names)} directories under {REALWORLD_DIR}")
        return 0
    why = index_reachable()
    if why is not None:
        print(f"error: the package index is not reachable ({why}).\n"
              f"realworld_setup.py needs PyPI (or PIP_INDEX_URL) to install {len(todo)} pinned "
              f"release(s): {', '.join(todo)}", file=sys.stderr)  # fmt: skip
        return 2
    failed = 0
    for name in todo:
        ok, err = install(name)
        if ok:
            print(f"  installed   .realworld/{name:<26} {' '.join(PINS[name])}", flush=True)
        else:
            failed += 1
            print(f"  FAILED      .realworld/{name:<26} {' '.join(PINS[name])}\n{err}", flush=True)
    print(f"{len(todo) - failed} installed, {failed} failed, {len(names) - len(todo)} up to date")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
