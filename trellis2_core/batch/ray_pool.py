"""``workers='ray'``: a batch spread over Ray actors, one per GPU (or N on CPUs), each holding the models.

* Ray is optional (``pip install -r requirements-ray.txt``); without it the batch stops with a BackendError that
  gives the pip command. ``ray_address`` joins a running cluster (``auto``, ``ray://host:10001``); otherwise a
  private local Ray instance is started for the batch and shut down after it. When Ray is already initialised in
  this process (a user's script, tests), that instance is used as it is.
* Actors: with ``device`` 'cuda' or 'auto' and GPUs in the cluster, one actor per GPU (``num_gpus=1``; ``ray_workers``
  caps the count); otherwise ``ray_workers`` CPU actors (default 1). Torch in each actor runs the cluster's CPUs
  divided by the actors as threads (``threads`` overrides); CPU actors reserve those CPUs. Every actor loads the
  pipeline once and checks its weights first.
* Tasks are images, one at a time per actor, so faster actors take more. Each actor writes its GLB straight into the
  output folder when it sees that folder (a marker file written by the driver); otherwise (other machines without a
  shared disk) it returns the GLB's bytes and the driver writes them. The driver merges the entries into the manifest.
* An actor that dies (crash, killed, node lost) takes no more tasks; its image is retried once on another actor.
  An image that fails by itself (bad file, no foreground) is not retried: it would fail again.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import BackendError, CancelledError, Trellis2Error
from ..optional import require
from .inputs import BatchInput
from .manifest import Entry, Manifest
from .run import report_batch
from .worker import FATAL_ERRORS, BatchOptions, fatal_error

__all__ = ["run_ray", "Scheduler", "WorkerLost", "MAX_ATTEMPTS"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a lost worker's image runs once more, elsewhere
_POLL_S = 0.2  # seconds between two checks of progress.cancelled() while waiting for Ray
_CANCEL_GRACE_S = 10.0  # how long cancelled tasks may take to stop before their actors are killed
_PACK_ROOT = Path(__file__).resolve().parents[2]  # the folder holding trellis2_core (put on the workers' path)


@dataclass(frozen=True)
class WorkerLost:
    """A task's worker died (or its node); the message says how."""

    message: str


@dataclass
class _Task:
    item: BatchInput
    attempt: int = 1
    avoid: frozenset = field(default_factory=frozenset)  # workers that already lost this image


class Scheduler:
    """Hands images to idle workers, retries an image once elsewhere when its worker is lost.

    ``submit(worker, item, attempt)`` starts a task and returns a handle; ``wait_one(handles)`` blocks until one
    finishes and returns ``(handle, Entry | WorkerLost)``; ``record(item, entry)`` takes each final result (it may
    raise to stop the batch). ``running`` maps handles to ``(task, worker)`` while tasks run.
    """

    def __init__(self, workers: list[str], submit: Callable[[str, BatchInput, int], Any],
                 wait_one: Callable[[list[Any]], tuple[Any, Any]], record: Callable[[BatchInput, Entry | str], None]):
        self.live, self.idle = list(workers), collections.deque(workers)
        self.submit, self.wait_one, self.record = submit, wait_one, record
        self.running: dict[Any, tuple[_Task, str]] = {}
        self.queue: collections.deque[_Task] = collections.deque()

    def _assign(self) -> None:
        for _ in range(len(self.idle)):
            worker = self.idle.popleft()
            task = next((t for t in self.queue if worker not in t.avoid), None)
            if task is None:
                self.idle.append(worker)
                continue
            self.queue.remove(task)
            self.running[self.submit(worker, task.item, task.attempt)] = (task, worker)

    def _lost(self, task: _Task, worker: str, why: WorkerLost) -> None:
        if worker in self.live:
            self.live.remove(worker)
        log.warning("batch: Ray worker %s lost while making %s (%s)", worker, task.item.key, why.message)
        avoid = task.avoid | {worker}
        if task.attempt < MAX_ATTEMPTS and any(w not in avoid for w in self.live):
            self.queue.appendleft(_Task(task.item, task.attempt + 1, avoid))
        else:
            tried = "; no other worker was left" if task.attempt < MAX_ATTEMPTS else f" ({task.attempt} attempts)"
            self.record(task.item, f"worker lost: {why.message}{tried}")

    def run(self, items: list[BatchInput]) -> None:
        self.queue.extend(_Task(item) for item in items)
        while self.queue or self.running:
            if not self.live:
                raise BackendError(f"every Ray worker died; {len(self.queue)} image(s) not made (see the manifest "
                                   "and the Ray logs); run the batch again to resume")
            self._assign()
            if not self.running:  # queued tasks avoid every live worker: they cannot run anywhere else
                for task in list(self.queue):
                    self.queue.remove(task)
                    self.record(task.item, "worker lost; no other worker was left to retry on")
                continue
            handle, outcome = self.wait_one(list(self.running))
            task, worker = self.running.pop(handle)
            if isinstance(outcome, WorkerLost):
                self._lost(task, worker, outcome)
            else:
                self.idle.append(worker)
                self.record(task.item, outcome)


class _ActorImpl:
    """The body of one Ray actor: a :class:`~.worker.BatchWorker` and where to put its GLBs."""

    def __init__(self, options: BatchOptions, output_dir: str, marker: str, token: str, name: str) -> None:
        import threading

        self.options, self.output_dir, self.name = options, Path(output_dir), name
        self.marker, self.token = marker, token
        self.worker: Any = None
        self.shared = False
        self._cancel = threading.Event()  # set by cancel(), which runs beside run() (max_concurrency=2)

    def cancel(self) -> None:
        """Stop the running image at its next cancellation checkpoint (within about a second); no partial file."""
        self._cancel.set()

    def cancelled(self) -> bool:  # the image's progress object: polled by image_to_glb
        return self._cancel.is_set()

    def step(self, stage: str, i: int, n: int) -> None:
        pass

    def start(self) -> tuple[str, str]:
        """Load the pipeline (weights checked); ``('', where)`` or ``(error kind, message)``."""
        import socket

        from .worker import BatchWorker, set_threads

        try:
            set_threads(self.options.threads)
            self.worker = BatchWorker(self.options, self.name)
        except Trellis2Error as err:
            return type(err).__name__, str(err)
        try:
            self.shared = (self.output_dir / self.marker).read_text() == self.token
        except OSError:
            self.shared = False
        return "", f"{socket.gethostname()} {self.worker.device}{'' if self.shared else ' (GLBs sent back)'}"

    def run(self, item: BatchInput, entry: Entry) -> tuple[Entry, bytes | None]:
        """One image: the entry, and the GLB's bytes when the output folder is not shared."""
        if self.shared:
            return self.worker.run(item, entry, self.output_dir / item.output, self), None
        scratch = Path(tempfile.mkdtemp(prefix="trellis2-batch-"))
        try:
            target = scratch / item.output
            result = self.worker.run(item, entry, target, self)
            return result, (target.read_bytes() if result.status == "ok" else None)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _actor_plan(ray: Any, device: str, count: int | None, label: str) -> tuple[int, dict[str, float], str, int]:
    """``(actors, resources per actor, actor device, torch threads)`` from the cluster's resources."""
    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), int(total.get("CPU", 1))
    if device.startswith("cuda") and gpus == 0:
        raise BackendError(f"--device {device}: the Ray cluster has no GPU; use --device cpu (CPU workers) or join "
                           "a cluster with GPUs (--ray-address)")
    if device.startswith("cuda") or (gpus and device == "auto"):
        n = min(count or gpus, gpus)
        if count and count > gpus:
            log.warning("%s %d: the cluster has %d GPU(s); using %d workers", label, count, gpus, n)
        # torch threads for the CPU parts (image decoding, decimation, PNG encoding); only 1 CPU is reserved, so that
        # an actor fits on any GPU node whatever its core count
        return n, {"num_gpus": 1, "num_cpus": 1}, "cuda", max(1, cpus // n)
    n = min(count or 1, max(cpus, 1))
    if count and count > n:
        log.warning("%s %d: the cluster has %d CPU(s); using %d workers", label, count, cpus, n)
    per = max(1, cpus // n)
    return n, {"num_cpus": per}, "mps" if device == "mps" else "cpu", per


def _outcome(ray: Any, ref: Any) -> Any:
    """An actor task's result as ``(Entry, bytes | None)``, or :class:`WorkerLost`, or an error text."""
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        raise CancelledError("the batch was cancelled") from None
    except ray.exceptions.RayTaskError as err:  # our code raised inside the actor (it catches image errors itself)
        return f"{type(err.cause).__name__ if err.cause else 'error'}: {err.cause or err}"
    except ray.exceptions.RayError as err:  # actor or node died, object lost, Ray's memory monitor, ...
        return WorkerLost(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")


def run_ray(options: BatchOptions, manifest: Manifest, todo: list[BatchInput], progress: Any, total: int,
            done: int, count: int | None, address: str | None, names: Mapping[str, str]) -> None:
    """Make ``todo``'s GLBs on Ray actors, recording each result in ``manifest`` (saved after each image)."""
    ray = require("ray", f"{names.get('workers', 'workers')} ray (batches over several GPUs or machines)")
    own = not ray.is_initialized()
    if own:
        path = os.pathsep.join(p for p in (str(_PACK_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        try:
            ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=log.isEnabledFor(logging.DEBUG), runtime_env={"env_vars": {"PYTHONPATH": path}})
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise BackendError(f"{names.get('ray_address', 'ray_address')} {address!r}: cannot connect to Ray "
                               f"({err}); start the cluster (ray start --head) or fix the address") from err
    elif address:
        log.warning("Ray is already initialised in this process; %s %s is ignored",
                    names.get("ray_address", "ray_address"), address)
    folder = manifest.folder
    folder.mkdir(parents=True, exist_ok=True)
    marker, token = f".trellis2-batch-{secrets.token_hex(6)}", secrets.token_hex(16)
    (folder / marker).write_text(token)
    actors: dict[str, Any] = {}
    sched: Scheduler | None = None
    try:
        n, resources, device, threads = _actor_plan(ray, options.device, count, names.get("ray_workers",
                                                                                            "ray_workers"))
        opts = dataclasses.replace(options, device=device, threads=options.threads or threads)
        actor_cls = ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=2, **resources)(_ActorImpl)
        actors = {f"ray:{i}": actor_cls.remote(opts, str(folder), marker, token, f"ray:{i}") for i in range(n)}
        starts = {name: a.start.remote() for name, a in actors.items()}
        live = []
        for name, ref in starts.items():
            got = _outcome(ray, ref)
            if isinstance(got, tuple) and got[0]:
                raise FATAL_ERRORS.get(got[0], BackendError)(f"Ray worker {name}: {got[1]}")
            if isinstance(got, tuple):
                log.info("batch: Ray worker %s on %s", name, got[1])
                live.append(name)
            else:
                log.warning("batch: Ray worker %s did not start (%s)", name, getattr(got, "message", got))
        if not live:
            raise BackendError("no Ray worker could start (see the Ray logs): every node needs this pack and its "
                               "requirements installed, and the cluster the resources asked for")
        counter = {"done": done}

        def submit(worker: str, item: BatchInput, attempt: int) -> Any:
            entry = manifest.entries[item.key]
            entry.attempts, entry.worker = attempt - 1, worker
            report_batch(progress, counter["done"], total, f"{item.key} ({worker})")
            return actors[worker].run.remote(item, entry)

        def wait_one(refs: list[Any]) -> tuple[Any, Any]:
            while True:
                ready, _ = ray.wait(refs, num_returns=1, timeout=_POLL_S)
                if ready:
                    return ready[0], _outcome(ray, ready[0])
                poll = getattr(progress, "cancelled", None)
                if poll is not None and poll():
                    raise CancelledError("the batch was cancelled")

        def record(item: BatchInput, outcome: Any) -> None:
            entry = manifest.entries[item.key]
            if isinstance(outcome, tuple):
                _keep(folder, manifest, item, *outcome)
            else:
                entry.attempts += 1
                entry.done("failed", str(outcome))
            manifest.save()
            counter["done"] += 1
            report_batch(progress, counter["done"], total, "")
            fatal = fatal_error(manifest.entries[item.key])
            if fatal is not None:
                raise fatal

        sched = Scheduler(live, submit, wait_one, record)
        sched.run(todo)
    except BaseException as err:
        if sched is not None and sched.running:
            _stop(ray, sched, actors, folder, manifest, isinstance(err, (KeyboardInterrupt, CancelledError)))
        raise
    finally:
        for actor in actors.values():
            ray.kill(actor)
        (folder / marker).unlink(missing_ok=True)
        if own:
            ray.shutdown()


def _keep(folder: Path, manifest: Manifest, item: BatchInput, result: Entry, data: bytes | None) -> None:
    """Record a worker's result; write the GLB it sent back (output folder not shared)."""
    if data is not None:
        from ..postprocess.output_file import write_atomically

        write_atomically(folder / item.output, data)
    manifest.add(result)


def _stop(ray: Any, sched: Scheduler, actors: dict[str, Any], folder: Path, manifest: Manifest,
          cancelled: bool) -> None:
    """Cancel the running images (each stops at its next checkpoint and removes its temporary file) and wait a
    little; then kill the actors, keep what finished meanwhile, mark the rest cancelled (or pending when another
    error stops the batch) and remove what a killed task left behind."""
    refs = list(sched.running)
    for actor in actors.values():
        actor.cancel.remote()
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=_CANCEL_GRACE_S)
    for actor in actors.values():
        ray.kill(actor)
    for ref in refs:
        task, _worker = sched.running[ref]
        got = None
        if ref in ready:
            try:
                got = ray.get(ref, timeout=1.0)
            except ray.exceptions.RayError:
                got = None
        if isinstance(got, tuple) and got[0].status == "ok":
            _keep(folder, manifest, task.item, *got)
            continue
        for leftover in folder.glob(f".{task.item.output}.*.part"):  # write_atomically's temporary files
            leftover.unlink(missing_ok=True)
        entry = manifest.entries[task.item.key]
        entry.done("cancelled" if cancelled else "pending", "interrupted" if cancelled else "")
        if not cancelled:
            entry.finished = ""
