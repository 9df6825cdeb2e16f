"""The names the detector and everything downstream share: signals and leak kinds.

Kept free of imports beyond ``typing`` so that :mod:`soakd.config` can derive its list of
valid leak kinds from here.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = ["KIND_RANK", "LEAK_KINDS", "SIGNALS", "LeakKind", "SignalKind"]

# ``malloc`` (bytes malloc has handed out) is kept to corroborate sites, never judged alone.
SignalKind = Literal["rss", "heap", "malloc", "site", "type", "fds", "threads", "tasks"]
LeakKind = Literal["heap", "native", "objects", "fds", "threads", "tasks"]

SIGNALS: Final[frozenset[str]] = frozenset(get_args(SignalKind))
LEAK_KINDS: Final[tuple[LeakKind, ...]] = get_args(LeakKind)

# Most certain first: a site names the line; counts of OS resources are unambiguous.
# (A heap finding without a site ranks between "heap" and "native": see ``certainty``.)
KIND_RANK: Final[dict[str, int]] = {
    "heap": 0,
    "native": 2,
    "fds": 3,
    "tasks": 4,
    "threads": 5,
    "objects": 6,
}
