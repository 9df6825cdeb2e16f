"""soakd: soak and leak-detection daemon for async Python services.

The Python API (:func:`run`, :func:`load_summary`, :class:`Summary`) is loaded on first use:
``import soakd`` imports nothing beyond this module, so soakd's code can run in an interpreter
that lacks soakd's dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Leak", "RunError", "Summary", "__version__", "load_summary", "run"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from soakd.api import Leak, RunError, Summary, load_summary, run

_API = frozenset({"Leak", "RunError", "Summary", "load_summary", "run"})


def __getattr__(name: str) -> Any:
    if name in _API:
        from soakd import api

        return getattr(api, name)
    raise AttributeError(f"module 'soakd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
