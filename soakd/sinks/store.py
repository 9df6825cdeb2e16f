"""Old import path of the sample store; the store lives in :mod:`soakd.store`."""

from __future__ import annotations

from pathlib import Path

from soakd.store import SCHEMA, RunStore, SampleStore

__all__ = ["SCHEMA", "SampleStore", "StoreReader"]


class StoreReader(RunStore):
    """``RunStore(path, strict=False)``: FileNotFoundError for a missing file, SQLite's errors."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, strict=False)
