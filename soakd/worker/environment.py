"""What the target's interpreter is: its Python and the distributions it can import.

Run in the target's interpreter (standard library only, Python 3.10+). The supervisor runs it
as a probe before the worker starts (``python -m soakd.worker.environment`` prints JSON) and
puts the answer in the ``run.started`` event, so a run says which program it measured: the
service's own versions, not soakd's.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from importlib import metadata
from typing import Any

__all__ = ["MAX_DISTRIBUTIONS", "describe"]

MAX_DISTRIBUTIONS = 200  # a service's lockfile rarely has more; the count says when it had


def describe(limit: int = MAX_DISTRIBUTIONS) -> dict[str, Any]:
    """This interpreter and up to ``limit`` of the distributions on its ``sys.path``."""
    dists: dict[str, str] = {}
    for dist in metadata.distributions():
        try:
            name = dist.metadata["Name"]
            version = dist.version
        except Exception:  # a broken dist-info must not stop the soak
            continue
        if isinstance(name, str) and name and isinstance(version, str):
            dists.setdefault(name, version)  # the first on sys.path is the one imported
    names = sorted(dists, key=str.lower)
    return {
        "version": sys.version,
        "version_info": list(sys.version_info[:3]),
        "implementation": sys.implementation.name,
        "executable": sys.executable,
        "prefix": sys.prefix,
        "soabi": sysconfig.get_config_var("SOABI"),
        "distributions": {n: dists[n] for n in names[:limit]},
        "distributions_total": len(names),
    }


if __name__ == "__main__":
    json.dump(describe(), sys.stdout)
    sys.stdout.write("\n")
