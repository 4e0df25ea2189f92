"""Child process that runs fast-simplification's QEM edge collapse (started by :mod:`.simplify_process`).

fast-simplification holds the GIL for the whole collapse (seconds for a decoded mesh), which would stall every other
Python thread of the parent: the GPU stage running meanwhile, ComfyUI's server, progress and cancel polls. This
script runs it in its own interpreter instead. It is started by file path (not ``-m``), so it imports nothing of
ours: only the standard library, numpy and fast_simplification.

Protocol on stdin/stdout (binary; one job at a time, any number of jobs per process):

* on start the child writes ``READY`` (or ``ERROR`` and a message if fast_simplification does not import);
* a job is one header line ``{"points": P, "faces": F, "target": T, "agg": A}`` followed by ``P*3`` float64 and
  ``F*3`` int32 values (native byte order);
* the answer is ``{"points": P', "faces": F'}`` and the arrays the same way, or ``{"error": "..."}``.

EOF on stdin ends the process.
"""
import json
import sys

READY = b"trellis2-simplify ready\n"


def read_exact(stream, size: int) -> bytearray:
    """``size`` bytes into a writable buffer (fast_simplification rejects read-only arrays); the parent reads
    the answers with it too."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = stream.readinto(view[got:])
        if not n:
            raise EOFError(f"the stream ended with {size - got} of {size} bytes missing")
        got += n
    return buffer


def _answer(out, header: dict, *arrays) -> None:
    out.write(json.dumps(header).encode("ascii") + b"\n")
    for array in arrays:
        out.write(memoryview(array).cast("B"))
    out.flush()


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        import numpy as np
        import fast_simplification
    except Exception as err:  # noqa: BLE001 (reported to the parent, which falls back to in-process)
        stdout.write(b"ERROR " + repr(err).encode("utf-8", "replace") + b"\n")
        stdout.flush()
        return 1
    stdout.write(READY)
    stdout.flush()
    while True:
        line = stdin.readline()
        if not line:
            return 0
        try:
            job = json.loads(line)
            n_points, n_faces = int(job["points"]), int(job["faces"])
            points = np.frombuffer(read_exact(stdin, n_points * 24), dtype=np.float64).reshape(n_points, 3)
            faces = np.frombuffer(read_exact(stdin, n_faces * 12), dtype=np.int32).reshape(n_faces, 3)
        except EOFError:
            return 0
        try:
            out_points, out_faces = fast_simplification.simplify(points, faces, target_count=int(job["target"]),
                                                                 agg=float(job["agg"]))
            out_points = np.ascontiguousarray(out_points, dtype=np.float64).reshape(-1, 3)
            out_faces = np.ascontiguousarray(out_faces, dtype=np.int32).reshape(-1, 3)
        except Exception as err:  # noqa: BLE001 (the parent raises or falls back)
            _answer(stdout, {"error": repr(err)})
            continue
        _answer(stdout, {"points": int(out_points.shape[0]), "faces": int(out_faces.shape[0])}, out_points,
                out_faces)


if __name__ == "__main__":
    sys.exit(main())
