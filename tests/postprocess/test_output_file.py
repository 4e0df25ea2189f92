"""Output paths (postprocess/output_file.py): '.glb' names only, no special files, missing folders created,
unwritable folders and full disks reported in one line, atomic writes that never leave a partial file."""
from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest

from trellis2_core.cancel import cancel_scope
from trellis2_core.errors import CancelledError, InputError
from trellis2_core.postprocess import output_file
from trellis2_core.postprocess.output_file import check_output_path, write_atomically


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("name", ["out.obj", "out", "out.glb.tmp", "out.gltf", "folder/"])
def test_names_not_ending_in_glb_are_refused_not_renamed(tmp_path, name):
    with pytest.raises(InputError, match=r"must end in '\.glb'"):
        check_output_path(tmp_path / name if not name.endswith("/") else str(tmp_path / name))
    assert _listing(tmp_path) == []


def test_upper_case_suffix_and_tilde_are_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert check_output_path("~/MODEL.GLB") == tmp_path / "MODEL.GLB"
    assert _listing(tmp_path) == []  # the check creates nothing (the writability probe is removed again)


@pytest.mark.parametrize("bad", [None, 3, b"", "", "   "])
def test_non_paths_and_empty_names_are_refused(bad):
    with pytest.raises(InputError):
        check_output_path(bad)


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(socket, "AF_UNIX"), reason="POSIX FIFOs and sockets")
def test_existing_special_files_are_refused(tmp_path):
    folder = tmp_path / "x.glb"
    folder.mkdir()
    with pytest.raises(InputError, match="is a directory"):
        check_output_path(folder)
    fifo = tmp_path / "pipe.glb"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="named pipe"):
        check_output_path(fifo)
    sock_path = tmp_path / "s.glb"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        with pytest.raises(InputError, match="socket"):
            check_output_path(sock_path)
    finally:
        sock.close()


def test_device_nodes_and_symlinks_to_them_are_refused(tmp_path):
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null on this system")
    link = tmp_path / "null.glb"
    link.symlink_to("/dev/null")
    with pytest.raises(InputError, match="a device"):
        check_output_path(link)
    dir_link = tmp_path / "dir.glb"
    dir_link.symlink_to(tmp_path)
    with pytest.raises(InputError, match="a directory"):
        check_output_path(dir_link)
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_a_symlink_to_a_regular_file_replaces_the_file_and_keeps_the_link(tmp_path):
    real = tmp_path / "real.glb"
    real.write_bytes(b"old")
    link = tmp_path / "link.glb"
    link.symlink_to(real)
    target = check_output_path(link)
    assert target == real.resolve()
    write_atomically(target, b"new")
    assert link.is_symlink() and link.read_bytes() == b"new" and real.read_bytes() == b"new"


def test_a_dangling_symlink_is_refused_and_nothing_is_created_where_it_points(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "victim.glb"
    link = tmp_path / "out.glb"
    link.symlink_to(elsewhere)
    with pytest.raises(InputError, match="symbolic link to a missing file"):
        check_output_path(link)
    assert not (tmp_path / "elsewhere").exists() and link.is_symlink()


def test_missing_folders_are_created_at_write_time_only(tmp_path):
    path = tmp_path / "out" / "sub" / "x.glb"
    target = check_output_path(path)
    assert _listing(tmp_path) == []  # checking creates nothing
    write_atomically(target, b"glTF")
    assert path.read_bytes() == b"glTF" and _listing(path.parent) == ["x.glb"]


def test_a_file_in_the_folder_chain_is_refused(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        check_output_path(tmp_path / "plain" / "sub" / "x.glb")


def test_unwritable_places_fail_with_one_line(tmp_path):
    with pytest.raises(InputError, match="cannot write") as info:
        check_output_path("/proc/trellis2_test.glb")  # refused even to root (the probe fails)
    assert "\n" not in str(info.value)
    if os.geteuid() != 0:  # root may write into read-only folders
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(InputError, match="not writable"):
                check_output_path(locked / "a.glb")
            with pytest.raises(InputError, match="not writable"):
                check_output_path(locked / "new" / "a.glb")
        finally:
            locked.chmod(0o700)


def test_read_only_existing_file_is_refused(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write read-only files")
    path = tmp_path / "ro.glb"
    path.write_bytes(b"keep")
    path.chmod(0o400)
    with pytest.raises(InputError, match="read-only"):
        check_output_path(path)


def test_bad_names_fail_with_the_path_in_the_message(tmp_path):
    with pytest.raises(InputError, match="choose another"):
        check_output_path(tmp_path / ("x" * 300 + ".glb"))
    with pytest.raises(InputError):
        check_output_path(str(tmp_path / "a\0b.glb"))


@pytest.mark.parametrize("code, match", [(errno.ENOSPC, "no space left"), (errno.EIO, "cannot write"),
                                         (errno.EROFS, "writable output folder")])
def test_write_errors_leave_no_partial_file_and_keep_the_old_one(tmp_path, monkeypatch, code, match):
    target = tmp_path / "model.glb"
    target.write_bytes(b"previous export")
    calls = []

    def failing(fd, data):
        calls.append(len(data))
        os.write(fd, bytes(data[: len(data) // 2]))  # a partial write, then the disk is full
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(output_file, "_write_chunk", failing)
    with pytest.raises(InputError, match=match) as info:
        write_atomically(target, b"x" * 1000)
    assert str(target) in str(info.value) and "\n" not in str(info.value)
    assert calls and target.read_bytes() == b"previous export"
    assert _listing(tmp_path) == ["model.glb"]


def test_failed_write_removes_the_folders_it_created(tmp_path, monkeypatch):
    def failing(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(output_file, "_write_chunk", failing)
    with pytest.raises(InputError, match="no space"):
        write_atomically(tmp_path / "a" / "b" / "x.glb", b"data")
    assert _listing(tmp_path) == []


def test_cancel_during_the_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(output_file, "_CHUNK", 10)
    target = tmp_path / "model.glb"
    target.write_bytes(b"previous export")
    polls = []

    def cancelled():
        polls.append(1)
        return len(polls) >= 3  # turns true during the third chunk

    with cancel_scope(cancelled, interval=0), pytest.raises(CancelledError, match="writing"):
        write_atomically(target, b"y" * 100)
    assert len(polls) == 3  # raised at the first poll that said yes
    assert target.read_bytes() == b"previous export" and _listing(tmp_path) == ["model.glb"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_special_file_appearing_before_the_write_is_not_replaced(tmp_path):
    target = check_output_path(tmp_path / "late.glb")
    os.mkfifo(target)  # created between the check and the write
    with pytest.raises(InputError, match="named pipe"):
        write_atomically(target, b"data")
    assert _listing(tmp_path) == ["late.glb"] and not target.is_file()
