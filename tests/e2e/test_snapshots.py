"""soakd.snapshot/1: round trip, strict reading of hostile files, diff and the diff command."""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from soakd.commands import diff as diff_command
from soakd.errors import CommandError, SnapshotError
from soakd.snapshots import (
    MAX_DECOMPRESSED_BYTES,
    Snapshot,
    SnapshotSite,
    diff_snapshots,
    read_snapshot,
    write_snapshot,
)


def _snapshot(role: str, sites: list[tuple[str, list[str], int, int]], t: float = 1.0) -> Snapshot:
    return Snapshot(
        taken_at="2026-01-01T00:00:00+00:00",
        t=t,
        role=role,
        traced_bytes=sum(s[2] for s in sites),
        frames=8,
        sites=tuple(
            SnapshotSite(site=s, traceback=tuple(tb), line=f"line of {s}", size=size, count=n)
            for s, tb, size, n in sites
        ),
    )


def _doc(**changes: Any) -> dict[str, Any]:
    doc = _snapshot("latest", [("/a.py:1", ["/a.py:1", "/m.py:9"], 100, 2)]).to_json()
    doc.update(changes)
    return doc


def _gz(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


def test_round_trip_preserves_every_field(tmp_path: Path) -> None:
    snap = _snapshot(
        "baseline",
        [("/a.py:1", ["/a.py:1", "/m.py:9"], 4096, 16), ("/b.py:2", ["/b.py:2"], 10, 1)],
        t=12.5,
    )
    path = write_snapshot(tmp_path / "snapshots" / "baseline.json.gz", snap)
    assert read_snapshot(path) == snap
    raw = json.loads(gzip.decompress(path.read_bytes()))
    assert raw["schema"] == "soakd.snapshot/1"
    assert raw["sites"][0] == {
        "site": "/a.py:1",
        "traceback": ["/a.py:1", "/m.py:9"],
        "line": "line of /a.py:1",
        "size": 4096,
        "count": 16,
    }
    assert os.listdir(path.parent) == ["baseline.json.gz"]  # no temp file left behind


def test_write_replaces_atomically_and_accepts_valid_mappings(tmp_path: Path) -> None:
    path = tmp_path / "latest.json.gz"
    write_snapshot(path, _doc(role="first"))
    write_snapshot(path, _doc(role="second", t=None))
    snap = read_snapshot(path)
    assert (snap.role, snap.t) == ("second", None)
    assert sorted(os.listdir(tmp_path)) == ["latest.json.gz"]


def test_write_refuses_a_mapping_it_could_not_read_back(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match=r"sites\[0\]\.size must be an integer"):
        write_snapshot(tmp_path / "x.json.gz", _doc(sites=[{**_doc()["sites"][0], "size": "1"}]))
    assert not list(tmp_path.iterdir())


def _gzip_bomb(path: Path, gib: int = 1) -> Path:
    """A valid gzip of ``gib`` GiB of zeros, about 1 MB on disk, built in well under a second."""
    chunk = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    # After a full flush the compressor forgets its window: every further chunk encodes alike.
    piece = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    n = gib * 1024
    crc = 0
    for _ in range(n):
        crc = zlib.crc32(chunk, crc)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # the final (empty) block
    trailer = struct.pack("<II", crc, (n << 20) & 0xFFFFFFFF)
    path.write_bytes(first + piece * (n - 1) + end + trailer)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"\x00garbage, not gzip at all"), "not a gzip file"),
        (
            lambda p: p.write_bytes(gzip.compress(b'{"schema": "soakd.snapshot/1"}' * 50)[:40]),
            "truncated gzip data",
        ),
        (lambda p: _gz(p, b"this is not json"), "not JSON"),
        (lambda p: _gz(p, b"\xff\xfe\x00bad utf8"), "not UTF-8"),
        (lambda p: _gz(p, b"[1, 2, 3]"), "expected a JSON object at the top, got a list"),
        (lambda p: _gz(p, json.dumps(_doc(schema="memray/1")).encode()), "schema is 'memray/1'"),
        (lambda p: _gz(p, json.dumps(_doc(frames=True)).encode()), "frames must be an integer"),
        (lambda p: _gz(p, json.dumps(_doc(traced_bytes=-1)).encode()), "between 0 and"),
        (lambda p: _gz(p, json.dumps(_doc(traced_bytes=10**30)).encode()), "between 0 and"),
        (lambda p: _gz(p, json.dumps(_doc(taken_at="yesterday")).encode()), "ISO-8601"),
        (lambda p: _gz(p, json.dumps(_doc(sites={"a": 1})).encode()), "sites must be a list"),
        (
            lambda p: _gz(p, json.dumps(_doc(sites=[{"site": 1}])).encode()),
            "sites[0].site must be a string",
        ),
        (lambda p: _gz(p, b'{"schema": "soakd.snapshot/1", "t": NaN}'), "NaN is not allowed"),
        (lambda p: _gz(p, b'{"a": ' + b"1" * 5000 + b"}"), "not a valid snapshot document"),
        (lambda p: _gz(p, b"[" * 100_000 + b"]" * 100_000), "not a valid snapshot document"),
        (lambda p: _gz(p, b""), "not JSON"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: None, "no such file"),
        (_gzip_bomb, f"more than {MAX_DECOMPRESSED_BYTES} bytes"),
    ],
    ids=[
        "garbage",
        "truncated",
        "gzip-of-text",
        "not-utf8",
        "not-object",
        "wrong-schema",
        "bool-int",
        "negative",
        "huge-int",
        "bad-time",
        "sites-not-list",
        "site-not-str",
        "nan",
        "int-digits-limit",
        "deep-nesting",
        "empty",
        "directory",
        "missing",
        "bomb-1GiB",
    ],
)
def test_hostile_files_are_refused_with_exit_2_naming_the_file(
    tmp_path: Path, make: Any, message: str
) -> None:
    path = tmp_path / "evil.json.gz"
    make(path)
    with pytest.raises(SnapshotError) as caught:
        read_snapshot(path)
    assert caught.value.exit_code == 2
    text = str(caught.value)
    assert text.startswith(f"invalid snapshot {path}: ")
    assert message in text


def test_diff_sorts_by_growth_and_merges_tracebacks_per_line() -> None:
    a = _snapshot(
        "baseline",
        [
            ("/app.py:10", ["/app.py:10", "/main.py:1"], 1000, 10),
            ("/cache.py:5", ["/cache.py:5"], 5000, 50),
            ("/gone.py:1", ["/gone.py:1"], 300, 3),
        ],
    )
    b = _snapshot(
        "latest",
        [
            ("/app.py:10", ["/app.py:10", "/main.py:1"], 9000, 90),
            ("/app.py:10", ["/app.py:10", "/other.py:2"], 2000, 20),  # second caller chain
            ("/cache.py:5", ["/cache.py:5"], 5000, 50),
            ("/new.py:3", ["/new.py:3"], 500, 5),
        ],
    )
    rows = diff_snapshots(a, b)
    assert [(r.site, r.size_diff, r.count_diff) for r in rows] == [
        ("/app.py:10", 10_000, 100),
        ("/new.py:3", 500, 5),
        ("/cache.py:5", 0, 0),
        ("/gone.py:1", -300, -3),
    ]
    assert rows[0].traceback == ("/app.py:10", "/main.py:1")  # the heaviest chain stands for it
    by_tb = diff_snapshots(a, b, group_by="traceback", top=2)
    assert [(r.traceback, r.size_diff) for r in by_tb] == [
        (("/app.py:10", "/main.py:1"), 8000),
        (("/app.py:10", "/other.py:2"), 2000),
    ]
    assert b.by_site()[0].size == 11_000


def _write_pair(tmp_path: Path) -> tuple[str, str]:
    a = _snapshot("baseline", [("/app.py:10", ["/app.py:10"], 1000, 10)])
    b = _snapshot(
        "latest", [("/app.py:10", ["/app.py:10"], 3 << 20, 30), ("/x.py:1", ["/x.py:1"], 5, 1)]
    )
    return (
        str(write_snapshot(tmp_path / "a.json.gz", a)),
        str(write_snapshot(tmp_path / "b.json.gz", b)),
    )


def _args(a: str, b: str, **kw: Any) -> argparse.Namespace:
    return argparse.Namespace(
        snap_a=a,
        snap_b=b,
        top=kw.get("top", 20),
        group_by=kw.get("group_by", "line"),
        json=kw.get("json", False),
    )


def test_diff_command_table_and_json(tmp_path: Path) -> None:
    a, b = _write_pair(tmp_path)
    out = io.StringIO()
    assert diff_command.run(_args(a, b), out) == 0
    table = out.getvalue().splitlines()
    assert table[0].startswith(f"A: {a} (baseline,")
    rows = [line for line in table if line.lstrip().startswith(("+", "-"))]
    assert "+3.0 MiB" in rows[0] and "/app.py:10" in rows[0]
    assert "/x.py:1" in rows[1]
    out = io.StringIO()
    diff_command.run(_args(a, b, json=True, top=1), out)
    doc = json.loads(out.getvalue())
    assert doc["rows"] == [
        {
            "site": "/app.py:10",
            "traceback": ["/app.py:10"],
            "line": "line of /app.py:10",
            "size_a": 1000,
            "size_b": 3 << 20,
            "size_diff": (3 << 20) - 1000,
            "count_a": 10,
            "count_b": 30,
            "count_diff": 20,
        }
    ]
    assert doc["a"]["role"] == "baseline"


def test_diff_command_errors_are_command_errors(tmp_path: Path) -> None:
    a, _ = _write_pair(tmp_path)
    with pytest.raises(SnapshotError, match="no such file"):
        diff_command.run(_args(a, str(tmp_path / "missing.json.gz")))
    with pytest.raises(CommandError, match="--top must be"):
        diff_command.run(_args(a, a, top=0))


def test_diff_parser_registers_arguments() -> None:
    parser = argparse.ArgumentParser()
    diff_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["diff", "a", "b", "--top", "3", "--group-by", "traceback", "--json"])
    assert (args.snap_a, args.snap_b, args.top, args.group_by, args.json) == (
        "a",
        "b",
        3,
        "traceback",
        True,
    )
    assert args.func is diff_command.run


@pytest.mark.skipif(importlib.util.find_spec("soakd.cli") is None, reason="no soakd.cli yet")
def test_soakd_diff_cli_subprocess(tmp_path: Path) -> None:
    a, b = _write_pair(tmp_path)
    ok = subprocess.run(
        [sys.executable, "-m", "soakd", "diff", a, b, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["rows"][0]["site"] == "/app.py:10"
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(b"nope")
    failed = subprocess.run(
        [sys.executable, "-m", "soakd", "diff", a, str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    assert f"invalid snapshot {bad}: not a gzip file" in failed.stderr


def test_a_sampled_snapshot_keeps_its_interval_and_variances_and_diff_shows_the_noise(
    tmp_path: Path,
) -> None:
    site = SnapshotSite("/app/a.py:3", ("/app/a.py:3",), "keep(x)", 4 << 20, 900, 2.0e12)
    a = Snapshot("2026-01-01T00:00:00+00:00", 1.0, "baseline", 8 << 20, 8, (site,),
                 sampling_interval=512 * 1024)  # fmt: skip
    grown = SnapshotSite("/app/a.py:3", ("/app/a.py:3",), "keep(x)", 12 << 20, 2700, 6.0e12)
    b = Snapshot("2026-01-01T00:01:00+00:00", 61.0, "latest", 16 << 20, 8, (grown,),
                 sampling_interval=512 * 1024)  # fmt: skip
    pa, pb = tmp_path / "a.json.gz", tmp_path / "b.json.gz"
    write_snapshot(pa, a)
    write_snapshot(pb, b)
    back = read_snapshot(pa)
    assert back.sampling_interval == 512 * 1024 and back.sites[0].variance == 2.0e12
    row = diff_snapshots(back, read_snapshot(pb))[0]
    assert row.size_diff == 8 << 20
    assert row.noise == pytest.approx(1.96 * (8.0e12) ** 0.5)  # the two estimates' variances
    out = io.StringIO()
    args = argparse.Namespace(snap_a=str(pa), snap_b=str(pb), top=5, group_by="line", json=False)
    assert diff_command.run(args, out) == 0
    text = out.getvalue()
    assert "sampled every 512.0 KiB" in text and "±" in text and "5.3 MiB" in text


def test_a_negative_variance_or_a_bad_sampling_block_is_refused(tmp_path: Path) -> None:
    doc = _snapshot("a", [("/app/a.py:1", ["/app/a.py:1"], 10, 1)]).to_json()
    doc["sites"][0]["variance"] = -1.0
    with pytest.raises(SnapshotError, match="variance"):
        write_snapshot(tmp_path / "x.json.gz", doc)
    doc["sites"][0]["variance"] = 1.0
    doc["sampling"] = {"interval": "big"}
    with pytest.raises(SnapshotError, match=r"sampling\.interval"):
        write_snapshot(tmp_path / "x.json.gz", doc)
