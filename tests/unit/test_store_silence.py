"""The longest time without a completed iteration, read from a real samples.db."""

from __future__ import annotations

from pathlib import Path

from soakd.store import RunStore, SampleStore


def _store(tmp_path: Path, counts: list[tuple[float, float]]) -> RunStore:
    path = tmp_path / "samples.db"
    writer = SampleStore(path)
    for t, n in counts:
        writer.add(t, {"iterations": n})
    writer.close()
    return RunStore(path)


def test_silence_between_counted_intervals_less_one_interval(tmp_path: Path) -> None:
    counts = [(float(t), 50.0) for t in range(1, 11)]  # every second, then nothing counted
    counts += [(float(t), 0.0) for t in range(11, 31)]
    counts += [(31.0, 40.0), (32.0, 40.0)]
    reader = _store(tmp_path, counts)
    try:
        assert reader.longest_silence("iterations", 32.0) == 20.0  # 10 → 31, less 1 s
        assert reader.longest_silence("iterations", 60.0) == 27.0  # 32 → 60 is longer
    finally:
        reader.close()


def test_a_single_interval_then_silence_and_no_data(tmp_path: Path) -> None:
    reader = _store(tmp_path, [(1.4, 300.0)])
    try:
        assert reader.longest_silence("iterations", 14.0) == 12.6
        assert reader.longest_silence("no_such_series", 14.0) == 0.0
    finally:
        reader.close()
