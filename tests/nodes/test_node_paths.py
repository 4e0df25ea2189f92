"""Filename prefixes: whatever the user types, files land inside the output folder."""
from __future__ import annotations

import os

import pytest

from nodes.paths import DEFAULT_PREFIX, next_output_path, sanitize_prefix


@pytest.mark.parametrize("prefix,expected", [
    ("trellis2/mesh", ("trellis2", "mesh")),
    ("mesh", ("", "mesh")),
    ("../../etc/passwd", ("etc", "passwd")),
    ("/etc/passwd", ("etc", "passwd")),
    ("C:\\Windows\\System32\\evil", ("Windows/System32", "evil")),
    ("~/x", ("", "x")),
    ("a/./b/../c", ("a/b", "c")),
    ("..", ("trellis2", "mesh")),
    ("", ("trellis2", "mesh")),
    ("....//...", ("trellis2", "mesh")),
    (".hidden", ("", "hidden")),
    ("con", ("", "_con")),
    ('a<b>:c"d|e?f*g', ("", "a_b__c_d_e_f_g")),
    ("ok name-1.0", ("", "ok name-1.0")),
    ("dir\x00x/name", ("dir_x", "name")),
])
def test_sanitize_prefix(prefix, expected):
    assert sanitize_prefix(prefix) == expected


def test_default_prefix_is_clean():
    assert sanitize_prefix(DEFAULT_PREFIX) == ("trellis2", "mesh")


@pytest.mark.parametrize("prefix", ["../outside", "/abs/outside", "../../../../tmp/x", "sub/../../x", "\\\\server\\s"])
def test_files_stay_inside_output(tmp_path, prefix):
    out = tmp_path / "output"
    out.mkdir()
    target = next_output_path(out, prefix)
    assert os.path.commonpath([str(out.resolve()), str(target.path.resolve())]) == str(out.resolve())
    assert target.path.parent.is_dir()
    assert not (tmp_path / "outside").exists()


def test_counter_increments_and_ignores_other_files(tmp_path):
    first = next_output_path(tmp_path, "a/mesh")
    assert first.relative == "a/mesh_00001_.glb"
    first.path.write_bytes(b"x")
    (tmp_path / "a" / "mesh_00007_.png").write_bytes(b"x")  # another extension
    (tmp_path / "a" / ".mesh_00009_.glb.123.part").write_bytes(b"x")  # an export in progress
    (tmp_path / "a" / "meshy_00010_.glb").write_bytes(b"x")  # another prefix
    assert next_output_path(tmp_path, "a/mesh").name == "mesh_00002_.glb"


def test_symlinked_subfolder_escaping_is_refused(tmp_path):
    out = tmp_path / "output"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="outside the output folder"):
        next_output_path(out, "link/mesh")
