"""Output files: check a GLB path before any work, then write it atomically (temporary file + rename).

Rules (the library, the CLI's ``-o`` and the nodes all go through here):

* The name must end in ``.glb`` (any case). Other names are refused, not "fixed" by appending ``.glb``: the file
  then lands exactly where the user said, and ``-o out.obj`` cannot silently produce GLB bytes under an OBJ name.
* An existing path must be a regular file (a symlink is followed and judged by what it points at; the file it
  points at is the one replaced). Directories, device nodes (``/dev/null``), FIFOs and sockets are refused, so a
  write never replaces or feeds a special file. An existing read-only file is refused too.
* Missing folders are created when the file is written (``-o out/x.glb``), not when the path is checked, so a run
  that fails before writing leaves nothing behind. The nearest existing folder must be writable (checked up front;
  an existing target folder is probed by creating and removing a hidden temporary file, which also catches
  read-only file systems and root on ``/proc``).
* The bytes go to a hidden temporary file in the target folder, are flushed to disk, and the temporary file is
  renamed over the target only when everything succeeded. A failure, a full disk or a cancellation removes the
  temporary file (and folders this write created), so no partial GLB appears and an existing good file survives.

Every problem is an :class:`~trellis2_core.errors.InputError` whose one-line message names the path and the fix.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from ..cancel import checkpoint
from ..errors import InputError

__all__ = ["GLB_SUFFIX", "check_output_path", "write_atomically"]

GLB_SUFFIX = ".glb"
_CHUNK = 8 << 20  # bytes written between two cancellation checkpoints


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _stat(path: Path) -> os.stat_result | None:
    """``os.stat`` (symlinks followed) or None when nothing is there; other OS errors become InputError."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):  # (a file in the folder chain is reported by the caller)
        return None
    except (OSError, ValueError) as err:  # ENAMETOOLONG, ELOOP, ENOTDIR, embedded NUL …
        raise InputError(f"cannot use output path {str(path)!r}: {_reason(err)}; choose another file name") from err


def _is_link(path: Path, shown: str) -> bool:
    """Whether ``path`` is a symlink; bad names (NUL byte, too long) fail here with the path in the message."""
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (OSError, ValueError) as err:
        raise InputError(f"cannot use output path {shown!r}: {_reason(err)}; choose another file name") from err


def _reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err)


def _check_target(target: Path, shown: str) -> None:
    """An existing ``target`` must be a writable regular file."""
    st = _stat(target)
    if st is None:
        return
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"output path {shown!r} exists and is {_kind(st.st_mode)}, not a regular file; "
                         "give a file name such as 'model.glb' (a new file or a GLB to replace)")
    if not os.access(target, os.W_OK):
        raise InputError(f"cannot write {shown!r}: the existing file is read-only; choose another name or make it "
                         "writable")


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its nearest existing ancestor."""
    probe = folder
    while _stat(probe) is None and probe.parent != probe:
        probe = probe.parent
    return probe


def _probe(folder: Path, shown: str) -> None:
    """Create and remove a hidden temporary file in ``folder``: the only reliable writability test."""
    tmp = folder / f".trellis2-probe-{os.getpid()}-{secrets.token_hex(4)}.part"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        raise InputError(f"cannot write {shown!r}: {_reason(err)} in folder {str(folder)!r}; choose a writable "
                         "folder") from err
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass


def check_output_path(path: str | os.PathLike) -> Path:
    """Check that a GLB file can be written at ``path`` (rules in the module docstring); returns the path to write.

    Nothing is created. ``~`` is expanded; a symlink is resolved to the file it points at. Raises
    :class:`InputError` (one line, with the fix) for a name not ending in ``.glb``, an existing directory, device,
    FIFO or socket (also behind a symlink), a read-only file, or a folder that cannot be created or written.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"the output path must be a file name such as 'model.glb', got {type(path).__name__}")
    shown = os.fspath(path)
    if isinstance(shown, bytes):
        shown = os.fsdecode(shown)
    if not shown.strip():
        raise InputError("the output path is empty; give a file name such as 'model.glb'")
    target = Path(shown).expanduser()
    if _is_link(target, shown):
        if not target.exists():  # following it would create a file wherever the link points
            raise InputError(f"output path {shown!r} is a symbolic link to a missing file ({os.readlink(target)!r});"
                             " remove the link or choose another file name")
        target = target.resolve()  # the file the link points at is the one replaced (links stay links)
    _check_target(target, shown)
    if Path(shown).suffix.lower() != GLB_SUFFIX:
        raise InputError(f"output file {shown!r} must end in '.glb' (a binary glTF file is written; no other "
                         f"format): use e.g. {str(Path(shown).with_suffix(GLB_SUFFIX))!r}")
    folder = target.parent
    existing = _nearest_existing(folder)
    st = _stat(existing)
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise InputError(f"cannot write {shown!r}: {str(existing)!r} is a file, not a folder; choose another "
                         "output folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "the folder" if existing == folder else "cannot create the missing folders under"
        raise InputError(f"cannot write {shown!r}: {what} {str(existing)!r} is not writable; choose a writable "
                         "output folder")
    if existing == folder:
        _probe(folder, shown)
    return target


def _write_error(target: Path, err: OSError, size: int) -> InputError:
    code = err.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return InputError(f"cannot write {str(target)!r}: no space left on the device (the file needs "
                          f"{size / 1e6:.1f} MB); free disk space or choose another output folder")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InputError(f"cannot write {str(target)!r}: {_reason(err)}; choose a writable output folder")
    return InputError(f"cannot write {str(target)!r}: {_reason(err)}; check the folder or choose another output "
                      "path")


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; returns the created ones, deepest first."""
    missing = []
    probe = folder
    while _stat(probe) is None and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    for created in reversed(missing):
        os.mkdir(created)
    return missing


def _write_chunk(fd: int, data: memoryview) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    while data:
        data = data[os.write(fd, data):]


def write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` via a hidden temporary file in its folder and a final rename.

    Creates missing folders. Polls for cancellation between chunks (:func:`~trellis2_core.cancel.checkpoint`);
    on any failure or cancellation the temporary file and the folders created here are removed and an existing
    ``target`` is left untouched. OS errors become one-line :class:`InputError`.
    """
    created: list[Path] = []
    tmp: Path | None = None
    done = False
    try:
        created = _make_folders(target.parent)
        _check_target(target, str(target))  # again, right before writing: the path may have changed meanwhile
        name = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # umask applies
        tmp = name
        try:
            view = memoryview(data)
            for start in range(0, len(view), _CHUNK):
                checkpoint("writing the GLB file")
                _write_chunk(fd, view[start:start + _CHUNK])
            os.fsync(fd)
        finally:
            os.close(fd)
        checkpoint("writing the GLB file")
        os.replace(tmp, target)
        done = True
    except OSError as err:
        raise _write_error(target, err, len(data)) from err
    finally:
        if not done:
            _remove(tmp, created)


def _remove(tmp: Path | None, created: list[Path]) -> None:
    """Remove a temporary file and then the folders a failed write created (deepest first, only if empty)."""
    if tmp is not None:
        try:
            tmp.unlink()
        except OSError:
            pass
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            break
