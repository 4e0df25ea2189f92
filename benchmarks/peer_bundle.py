"""Prepare what ``bench_peer.py`` needs to run ComfyUI core 0.33.0's native TRELLIS.2 code on the GPU machine.

1. Extracts from core's source tarball only the files needed to import core's TRELLIS.2 model / VAE modules and its
   mesh post-processing helpers (about 30 files, < 1 MiB) into ``.peer/ComfyUI`` (git-ignored: the folder is added
   to ``.git/info/exclude``; core's code is never committed).
2. Downloads the wheels core's import chain needs that the GPU machine lacks into ``.whl/``: ``comfy-aimdo`` (hard
   import of ``comfy.ops`` / ``comfy.model_management``) and ``comfy-kitchen`` (hard import of
   ``comfy.ldm.modules.attention``), the latter as its pure-Python ``py3-none-any`` wheel (0.2 MiB; the CUDA build
   is 56 MiB): its compiled backends serve core's fp8/fp4/int8 paths, which the bench's bf16 runs do not take.
3. Checks the import in a fresh interpreter when this machine can (``--check``), and prints the carried sizes.

    python benchmarks/peer_bundle.py [--tarball ../shared/comfyui/ComfyUI-0.33.0-783545f6.tar.gz] [--no-wheels]

Device command afterwards (carry ``.peer`` and ``.whl``)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site || exit; python benchmarks/bench_peer.py --device cuda ...
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TARBALL = REPO.parent / "shared" / "comfyui" / "ComfyUI-0.33.0-783545f6.tar.gz"
DEST = REPO / ".peer"
WHEELS = REPO / ".whl"
# the modules ``import comfy.ldm.trellis2.{model,vae}`` and the mesh post-processing helpers load (found by listing
# ``sys.modules`` after those imports in a full ComfyUI 0.33.0 checkout)
FILES = (
    "comfy/cli_args.py", "comfy/float.py", "comfy/internal_logging.py", "comfy/ldm/common_dit.py",
    "comfy/ldm/flux/math.py", "comfy/ldm/genmo/joint_model/layers.py", "comfy/ldm/modules/attention.py",
    "comfy/ldm/modules/diffusionmodules/__init__.py", "comfy/ldm/modules/diffusionmodules/util.py",
    "comfy/ldm/modules/sub_quadratic_attention.py", "comfy/ldm/trellis2/flexgemm.py", "comfy/ldm/trellis2/model.py",
    "comfy/ldm/trellis2/vae.py", "comfy/ldm/util.py", "comfy/memory_management.py", "comfy/model_management.py",
    "comfy/ops.py", "comfy/options.py", "comfy/pinned_memory.py", "comfy/quant_ops.py", "comfy/rmsnorm.py",
    "comfy/utils.py",
    "comfy_extras/mesh3d/postprocess/qem_decimate.py", "comfy_extras/mesh3d/postprocess/remesh.py",
    "comfy_extras/mesh3d/uv_unwrap/mesh.py", "comfy_extras/mesh3d/uv_unwrap/pack.py",
    "comfy_extras/mesh3d/uv_unwrap/parameterize.py", "comfy_extras/mesh3d/uv_unwrap/segment.py",
    "comfy_extras/nodes_mesh_postprocess.py", "comfy_extras/nodes_trellis2.py",
)
# pinned by core 0.33.0's requirements.txt; cp312 / manylinux x86-64 like the GPU machine
WHEEL_PINS = {"comfy-aimdo==0.4.13": "manylinux", "comfy-kitchen==0.2.31": "any"}
PIP_COMMON = ("--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp")
PIP_MANYLINUX = tuple(a for n in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                  "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_24_x86_64",
                                  "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64")
                      for a in ("--platform", n))
_CHECK = ("import sys; sys.argv=[sys.argv[0], '--cpu']; import comfy.options; comfy.options.enable_args_parsing(); "
          "import comfy.ldm.trellis2.model, comfy.ldm.trellis2.vae, comfy_extras.mesh3d.uv_unwrap.pack; print('ok')")


def _exclude(*patterns: str) -> None:
    """Add ``patterns`` to the checkout's ``.git/info/exclude`` (worktrees: the common git dir's)."""
    git_dir = subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=REPO, capture_output=True, text=True)
    if git_dir.returncode != 0:
        return
    path = (REPO / git_dir.stdout.strip()).resolve() / "info" / "exclude"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = path.read_text().splitlines() if path.exists() else []
    missing = [p for p in patterns if p not in lines]
    if missing:
        path.write_text("\n".join(lines + missing) + "\n")


def extract(tarball: Path, dest: Path = DEST) -> Path:
    """Extract ``FILES`` (and empty package markers for their folders) into ``dest/ComfyUI``; returns that path."""
    if not tarball.is_file():
        raise SystemExit(f"core's tarball not found at {tarball}; pass --tarball PATH")
    root = dest / "ComfyUI"
    wanted = {f"ComfyUI/{f}" for f in FILES}
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
        missing = wanted - {m.name for m in members}
        if missing:
            raise SystemExit(f"{tarball.name} lacks {sorted(missing)}: is it ComfyUI 0.33.0?")
        for m in members:
            out = dest / m.name
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            assert src is not None
            out.write_bytes(src.read())
    return root


def download_wheels(dest: Path = WHEELS) -> None:
    dest.mkdir(exist_ok=True)
    for pin, platform in WHEEL_PINS.items():
        name, version = pin.split("==")
        name = name.replace("-", "_")
        for other in dest.glob(f"{name}-*.whl"):  # one version and build of each (two stop the install)
            if not other.name.startswith(f"{name}-{version}-") or (platform == "any") != other.name.endswith(
                    "-none-any.whl"):
                other.unlink()
        if any(dest.glob(f"{name}-{version}-*.whl")):
            continue
        where = ("--platform", "any") if platform == "any" else PIP_MANYLINUX
        subprocess.run([sys.executable, "-m", "pip", "download", *PIP_COMMON, *where, "-d", str(dest), pin],
                       check=True)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tarball", type=Path, default=DEFAULT_TARBALL, help="core 0.33.0's source tarball")
    ap.add_argument("--dest", type=Path, default=DEST, help="git-ignored folder for core's files")
    ap.add_argument("--no-wheels", action="store_true", help="skip downloading wheels into .whl/")
    ap.add_argument("--check", default="", help="a python with torch/psutil/comfy_aimdo to test the import with")
    args = ap.parse_args()
    _exclude("/.peer/", "/.whl/")
    root = extract(args.tarball, args.dest)
    print(f"core's subset: {len(FILES)} files in {root} ({_du(args.dest) / 2**20:.2f} MiB)")
    if not args.no_wheels:
        download_wheels()
    print(f".whl: {_du(WHEELS) / 2**20:.2f} MiB")
    if args.check:
        run = subprocess.run([args.check, "-c", _CHECK], cwd=root, capture_output=True, text=True)
        print("import check:", run.stdout.strip() or run.stderr.strip()[-2000:])


if __name__ == "__main__":
    main()
