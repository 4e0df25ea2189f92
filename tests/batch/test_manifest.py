"""The manifest: JSON and CSV written atomically, what counts as finished, earlier entries kept."""
from __future__ import annotations

import csv
import io
import json
import struct

from trellis2_core.batch.manifest import Entry, Manifest, glb_complete, one_line


def _glb(path, payload=b"\0" * 20, length=None):
    data = struct.pack("<4sII", b"glTF", 2, (length or 12 + len(payload))) + payload
    path.write_bytes(data)
    return len(data)


def test_glb_complete(tmp_path):
    size = _glb(tmp_path / "a.glb")
    assert glb_complete(tmp_path / "a.glb") and glb_complete(tmp_path / "a.glb", size)
    assert not glb_complete(tmp_path / "a.glb", size + 1)  # not what the manifest recorded
    _glb(tmp_path / "cut.glb", length=100)  # header says more than the file has: truncated
    assert not glb_complete(tmp_path / "cut.glb")
    (tmp_path / "x.glb").write_bytes(b"PNG...")
    assert not glb_complete(tmp_path / "x.glb") and not glb_complete(tmp_path / "missing.glb")


def _manifest(folder, key="k1"):
    return Manifest(folder, {"pipeline": "demo"}, key)


def test_finished_before_needs_same_seed_settings_input_and_a_whole_file(tmp_path):
    size = _glb(tmp_path / "a.glb")
    m = _manifest(tmp_path)
    old = Entry("a.png", "a.glb", 42, status="ok", bytes=size, input_sha256="s1", settings_key="k1")
    assert m.finished_before(old, 42, "a.glb", "s1")
    assert not m.finished_before(old, 43, "a.glb", "s1")  # other seed
    assert not m.finished_before(old, 42, "a.glb", "s2")  # the image changed
    assert not m.finished_before(old, 42, "b.glb", "s1")  # other name
    assert not _manifest(tmp_path, "k2").finished_before(old, 42, "a.glb", "s1")  # other settings
    failed = Entry("a.png", "a.glb", 42, status="failed", bytes=size, input_sha256="s1", settings_key="k1")
    assert not m.finished_before(failed, 42, "a.glb", "s1") and not m.finished_before(None, 42, "a.glb", "s1")
    (tmp_path / "a.glb").write_bytes(b"glTF")  # truncated since
    assert not m.finished_before(old, 42, "a.glb", "s1")


def test_json_and_csv_round_trip_and_history(tmp_path):
    m = _manifest(tmp_path)
    ok = Entry("a.png", "a.glb", 42, worker="local", attempts=1, seconds={"generate": 1.5, "total": 2.0})
    ok.done("ok")
    bad = Entry("b,\"x\".png", "b_x.glb", 42)
    bad.done("failed", "InputError: line one\nline two")
    m.add(ok)
    m.add(bad)
    m.save()
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["counts"]["ok"] == 1 and data["counts"]["failed"] == 1 and data["settings_key"] == "k1"
    rows = list(csv.DictReader(io.StringIO((tmp_path / "manifest.csv").read_text())))
    assert [r["input"] for r in rows] == ["a.png", "b,\"x\".png"]
    assert rows[0]["generate_s"] == "1.500" and rows[0]["output"] == "a.glb"
    assert rows[1]["error"] == "InputError: line one line two" and rows[1]["output"] == ""  # no GLB claimed
    assert not list(tmp_path.glob(".*.part"))
    prev = Manifest.previous(tmp_path)
    assert prev["a.png"].seconds == {"generate": 1.5, "total": 2.0} and prev["a.png"].status == "ok"

    # a new run without a.png keeps its entry; an old entry whose GLB name is taken by a new input goes
    m2 = _manifest(tmp_path)
    m2.add(Entry("new.png", "b_x.glb", 42))
    m2.keep_history(prev.values())
    assert list(m2.entries) == ["new.png", "a.png"]


def test_unreadable_manifest_means_run_everything(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    assert Manifest.previous(tmp_path) == {}


def test_one_line():
    assert one_line("a\n  b\tc") == "a b c"
    assert len(one_line("x" * 5000)) == 600
