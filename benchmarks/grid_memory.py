"""Peak memory and time of one closest-point grid build (``TriangleGrid``) over ``bench_export``'s synthetic surface.

The export builds this grid over the original (decoded) surface to project texels onto it; on big meshes it is the
export's memory peak. On CUDA the peak is ``torch.cuda.max_memory_allocated`` above the mesh itself; on the CPU the
growth of the process's peak RSS, measured in a fresh child process that only loads the mesh first (building the
surface has a higher peak of its own).

    python benchmarks/grid_memory.py --res 1024                  # CPU
    python benchmarks/grid_memory.py --res 1536 --device cuda
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))
sys.path.insert(0, str(_HERE))


def _peak_rss() -> int:
    """This process's peak resident memory in bytes: ``VmHWM`` (Linux; a child's ``ru_maxrss`` can carry its
    parent's peak over ``exec``), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def build(path: str, device: str) -> None:
    from trellis2_core.postprocess.closest import TriangleGrid

    data = torch.load(path)
    vertices, faces = data["v"].to(device), data["f"].to(device)
    cuda = vertices.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _peak_rss()
    t = time.perf_counter()
    grid = TriangleGrid(vertices, faces)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss()
    tables = sum(x.numel() * x.element_size() for x in (grid.tri, grid.bound, grid.face_id, grid.entry_face,
                                                         grid.cell_keys, grid.cell_start, grid.cell_count))
    print(f"{faces.shape[0]} faces, {grid.entry_face.numel()} entries: build {seconds:.2f} s, peak "
          f"{(peak - base) / 1e9:.2f} GB above the mesh ({'allocated' if cuda else 'RSS growth'}), tables kept "
          f"{tables / 1e9:.2f} GB ({device})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        build(args.child, args.device)
        return 0
    from bench_export import make_blob_surface

    mesh, _ = make_blob_surface(args.res)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "mesh.pt")
        torch.save({"v": mesh.vertices.cpu(), "f": mesh.faces.cpu()}, path)
        del mesh
        return subprocess.run([sys.executable, __file__, "--device", args.device, "--child", path]).returncode


if __name__ == "__main__":
    sys.exit(main())
