"""Decimation in a child process, so that it neither holds this process's GIL nor blocks cancel.

fast-simplification's collapse keeps the GIL for its whole run (3-5 s for a 1024-grid mesh). In-process, that stalls
every other thread: a GPU stage meant to overlap with it, ComfyUI's server and websocket, and cancel polls (an
interrupt would wait for the collapse to end). :class:`SimplifyWorker` runs ``_simplify_worker.py`` in its own
interpreter; :meth:`SimplifyWorker.submit` sends one job and returns at once, and :meth:`PendingSimplify.result`
waits for the answer while polling cancel (a cancelled job kills the child, which is restarted on next use).

The child computes exactly what the in-process call computes (same library, same arrays). Whenever it cannot be
used (no Python executable to start, fast_simplification missing in it, it died, it is busy with another job) the
caller runs the collapse in-process instead: the worker is an accelerator, never a requirement.

One worker per process at most (:func:`shared_worker`), started on first use and kept for later runs; it ends with
this process (EOF on its stdin) or on :func:`shutdown_shared_worker`.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from ..cancel import checkpoint
from ._simplify_worker import READY, read_exact

__all__ = ["PendingSimplify", "SimplifyWorker", "WorkerUnavailable", "shared_worker", "shutdown_shared_worker"]

log = logging.getLogger(__name__)

_SCRIPT = Path(__file__).with_name("_simplify_worker.py")
_START_TIMEOUT = 60.0  # seconds for the child to import numpy and fast_simplification
_POLL = 0.01  # seconds between two cancel polls while waiting


class WorkerUnavailable(RuntimeError):
    """The child process cannot take or finish this job; the caller decimates in-process."""


def _python_executable() -> str | None:
    """This interpreter's executable, if it is one we can start with a script (not an embedding application)."""
    exe = sys.executable
    if not exe or not os.path.isfile(exe):
        return None
    name = os.path.basename(exe).lower()
    return exe if name.startswith(("python", "pypy")) else None


def _child_environment() -> dict[str, str]:
    """The parent's environment, with the folders numpy and fast_simplification were imported from first on the
    child's path (the parent may have found them through a path added at run time, e.g. by ComfyUI)."""
    env = dict(os.environ)
    roots: list[str] = []
    for name in ("numpy", "fast_simplification"):
        spec = find_spec(name)
        if spec is not None and spec.origin:
            root = str(Path(spec.origin).resolve().parent.parent)
            if root not in roots:
                roots.append(root)
    extra = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(roots + ([extra] if extra else []))
    return env


@dataclass
class _Answer:
    points: np.ndarray | None = None
    faces: np.ndarray | None = None
    error: str | None = None


class PendingSimplify:
    """A job sent to the worker; :meth:`result` waits for it (polling cancel) and :meth:`cancel` drops it."""

    def __init__(self, worker: "SimplifyWorker", reader: threading.Thread, answer: _Answer,
                 done: threading.Event) -> None:
        self._worker, self._reader, self._answer, self._done = worker, reader, answer, done
        self._finished = False

    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(points [P, 3] float64, faces [F, 3] int32). Raises CancelledError when cancel is requested meanwhile
        (the child is killed), WorkerUnavailable when the child failed, ValueError for fast_simplification's own
        errors."""
        try:
            while not self._done.wait(_POLL):
                checkpoint("decimation")
        except BaseException:
            self.cancel()
            raise
        self._finish()
        answer = self._answer
        if answer.error is not None:
            raise WorkerUnavailable(answer.error)
        assert answer.points is not None and answer.faces is not None
        return answer.points, answer.faces

    def cancel(self) -> None:
        """Abandon the job: the child is killed (it cannot be interrupted otherwise) and restarted on next use."""
        if not self._finished:
            if not self._done.is_set():
                self._worker.kill()
            self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._reader.join()
            self._finished = True
            self._worker._release()


class SimplifyWorker:
    """One child process running ``_simplify_worker.py``; one job at a time."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._busy = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ process
    def start(self) -> None:
        """Start the child if it is not running (returns at once; the READY line is read on the first submit)."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        exe = _python_executable()
        if exe is None:
            raise WorkerUnavailable(f"no Python executable to start a worker with (sys.executable={sys.executable!r})")
        try:
            self._proc = subprocess.Popen([exe, "-s", str(_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          env=_child_environment(), close_fds=True)
        except OSError as err:
            raise WorkerUnavailable(f"could not start {exe}: {err}") from err
        self._ready = False

    def _await_ready(self, proc: subprocess.Popen) -> None:
        if self._ready:
            return
        try:
            line = _readline_with_timeout(proc, _START_TIMEOUT)
        except BaseException:  # cancelled while the child starts: its READY line must not be left half-read
            self._kill_locked()
            raise
        if line != READY:
            self._kill_locked()
            raise WorkerUnavailable(f"the decimation worker did not start: {line!r}")
        self._ready = True

    def kill(self) -> None:
        with self._lock:
            self._kill_locked()

    def _kill_locked(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        """End the child (EOF on its stdin; killed if it does not exit within 5 s)."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self._kill_locked()

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # ------------------------------------------------------------------ jobs
    def submit(self, points: np.ndarray, faces: np.ndarray, target: int, agg: float) -> PendingSimplify:
        """Send one job; returns at once after the arrays are written. Raises WorkerUnavailable when the worker is
        busy, cannot start, or the pipe broke (the caller then decimates in-process)."""
        points = np.ascontiguousarray(points, dtype=np.float64)
        faces = np.ascontiguousarray(faces, dtype=np.int32)
        with self._lock:
            if self._busy:
                raise WorkerUnavailable("the decimation worker is busy with another job")
            self._start_locked()
            proc = self._proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            self._await_ready(proc)
            header = {"points": int(points.shape[0]), "faces": int(faces.shape[0]), "target": int(target),
                      "agg": float(agg)}
            try:
                proc.stdin.write(json.dumps(header).encode("ascii") + b"\n")
                proc.stdin.write(memoryview(points).cast("B"))
                proc.stdin.write(memoryview(faces).cast("B"))
                proc.stdin.flush()
            except (OSError, ValueError) as err:
                self._kill_locked()
                raise WorkerUnavailable(f"the decimation worker's pipe broke: {err}") from err
            self._busy = True
        answer, done = _Answer(), threading.Event()
        reader = threading.Thread(target=_read_answer, args=(proc.stdout, answer, done), daemon=True,
                                  name="trellis2-simplify-reader")
        reader.start()
        return PendingSimplify(self, reader, answer, done)

    def _release(self) -> None:
        with self._lock:
            self._busy = False


def _readline_with_timeout(proc: subprocess.Popen, timeout: float) -> bytes:
    """The child's first line, or b'' if it exits or stays silent for ``timeout`` seconds."""
    box: list[bytes] = []
    thread = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while thread.is_alive() and time.monotonic() < deadline:
        thread.join(_POLL)
        checkpoint("decimation")
    return box[0] if box else b""


def _read_answer(stream, answer: _Answer, done: threading.Event) -> None:
    """Runs in a thread (blocking reads release the GIL): fills ``answer`` and sets ``done``."""
    try:
        line = stream.readline()
        if not line:
            answer.error = "the decimation worker exited during the job"
            return
        header = json.loads(line)
        if "error" in header:
            answer.error = str(header["error"])
            return
        n_points, n_faces = int(header["points"]), int(header["faces"])
        raw_points = read_exact(stream, n_points * 24)
        raw_faces = read_exact(stream, n_faces * 12)
        answer.points = np.frombuffer(raw_points, dtype=np.float64).reshape(n_points, 3)
        answer.faces = np.frombuffer(raw_faces, dtype=np.int32).reshape(n_faces, 3)
    except (OSError, ValueError, EOFError, KeyError) as err:
        answer.error = f"the decimation worker's answer was broken: {err!r}"
    finally:
        done.set()


_SHARED: list[SimplifyWorker] = []  # at most one: this process's worker (a bounded cache, not state)
_SHARED_LOCK = threading.Lock()


def shared_worker() -> SimplifyWorker:
    """This process's decimation worker (created on first call; the child starts on the first job)."""
    with _SHARED_LOCK:
        if not _SHARED:
            _SHARED.append(SimplifyWorker())
            atexit.register(shutdown_shared_worker)
        return _SHARED[0]


def shutdown_shared_worker() -> None:
    """End this process's worker, if any (at exit, or to release its memory)."""
    with _SHARED_LOCK:
        workers = list(_SHARED)
        _SHARED.clear()
    for worker in workers:
        worker.close()
