"""ComfyUI-Manager install hook: Python dependencies, then the pinned three.js for the preview widget.

Run by ComfyUI-Manager after cloning (and safe to run by hand: ``python install.py``). It

1. checks that PyTorch is installed (>= 2.4; this pack never installs or upgrades torch: it must match the machine,
   and in ComfyUI it is ComfyUI's), then ``pip install -r requirements.txt`` with the Python running this script
   (ComfyUI's) and a constraint that pins the installed torch and triton, so no dependency can replace them;
2. downloads three.js ``THREE_VERSION`` from the npm registry over HTTPS, checks the tarball against the pinned
   sha512 integrity, and copies the few files the viewer needs into ``web/vendor/`` (git-ignored). The addon
   modules' bare ``'three'`` imports are rewritten to the local file, and everything is named ``*.mjs`` so ComfyUI
   does not load it at page start (the viewer imports it only when a preview is shown). No CDN at run time.

``--skip-pip`` only fetches three.js; ``--tarball FILE`` uses a local copy of the npm tarball (offline installs).
``--fa4`` also installs the optional FlashAttention-4 accelerator (``flash-attn-4``, pinned; pure-Python wheels whose
kernels CuTe-DSL compiles at run time, nothing to build): 1.14–1.17× cuDNN attention at 1024/1536 on Hopper GPUs,
picked up by the fast path automatically.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # trellis2_core's dependency checks (this script may be run from another folder)
    sys.path.insert(0, HERE)
VENDOR = os.path.join(HERE, "web", "vendor")
THREE_VERSION = "0.170.0"
THREE_URL = f"https://registry.npmjs.org/three/-/three-{THREE_VERSION}.tgz"
# npm's dist.integrity of three@0.170.0 (sha512 of the .tgz)
THREE_INTEGRITY = "sha512-FQK+LEpYc0fBD+J8g6oSEyyNzjp+Q7Ks1C568WWaoMRLW+TkNNWmenWeGgJjV105Gd+p/2ql1ZcjYvNiPZBhuQ=="
# tarball member -> vendored file name
FILES = {
    "package/build/three.module.min.js": "three.module.min.mjs",
    "package/examples/jsm/controls/OrbitControls.js": "OrbitControls.mjs",
    "package/examples/jsm/environments/RoomEnvironment.js": "RoomEnvironment.mjs",
    "package/examples/jsm/loaders/GLTFLoader.js": "GLTFLoader.mjs",
    "package/examples/jsm/utils/BufferGeometryUtils.js": "BufferGeometryUtils.mjs",
    "package/LICENSE": "LICENSE-three.txt",
}
# import specifiers rewritten inside the addon modules
REWRITES = {
    "from 'three';": "from './three.module.min.mjs';",
    "from '../utils/BufferGeometryUtils.js';": "from './BufferGeometryUtils.mjs';",
}
STAMP = "VERSION"


FA4_VERSION = "4.0.0b36"  # measured in benchmarks/RESULTS.md (2026-12-03, third session)


def _installed_pins() -> list[str]:
    """``name==version`` of the installed torch / triton (what pip must not change)."""
    from trellis2_core.dependencies import installed_version

    pins = []
    for dist in ("torch", "triton", "triton-windows"):
        version = installed_version(dist)
        if version is not None:
            pins.append(f"{dist}=={version}")
    return pins


def _check_torch() -> None:
    from trellis2_core.dependencies import check_torch
    from trellis2_core.errors import BackendError

    try:
        version = check_torch()
    except BackendError as err:
        raise SystemExit(f"install.py: {err}") from None
    print(f"install.py: using the installed torch {version} (never changed by this pack)")


def pip_install(*requirements: str) -> None:
    """``pip install`` with the installed torch/triton pinned by a constraints file."""
    _check_torch()
    with tempfile.TemporaryDirectory() as tmp:
        constraints = os.path.join(tmp, "installed-torch.txt")
        with open(constraints, "w", encoding="utf-8") as f:
            f.write("\n".join(_installed_pins()) + "\n")
        args = list(requirements) or ["-r", os.path.join(HERE, "requirements.txt")]
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-c", constraints, *args])


def fa4_requirement(torch_cuda: str | None) -> str:
    """The pip requirement of FlashAttention-4 matching the installed torch's CUDA version (its CuTe-DSL runtime
    comes per CUDA major version)."""
    if not torch_cuda:
        raise SystemExit("--fa4: the installed torch has no CUDA support (a CPU or ROCm build); FlashAttention-4 "
                         "needs an NVIDIA GPU build of torch. Install one, or leave out --fa4.")
    major = int(torch_cuda.split(".")[0])
    if major < 12:
        raise SystemExit(f"--fa4: torch is built for CUDA {torch_cuda}; FlashAttention-4 needs CUDA 12 or 13. "
                         "Upgrade torch, or leave out --fa4.")
    return f"flash-attn-4[cu13]=={FA4_VERSION}" if major >= 13 else f"flash-attn-4=={FA4_VERSION}"


def pip_install_fa4() -> None:
    import torch  # checked by pip_install

    pip_install("--only-binary=:all:", fa4_requirement(torch.version.cuda))


def _check_integrity(data: bytes) -> None:
    algo, _, expected = THREE_INTEGRITY.partition("-")
    digest = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if digest != expected:
        raise SystemExit(f"three.js tarball integrity mismatch: expected {THREE_INTEGRITY}, got {algo}-{digest}. "
                         "The download is corrupt or was tampered with; nothing was installed.")


def _download() -> bytes:
    req = urllib.request.Request(THREE_URL, headers={"User-Agent": "trellis2-comfy-install"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.read()
    except OSError as err:  # URLError, timeouts, TLS errors
        raise SystemExit(f"could not download three.js from {THREE_URL} ({err}). The nodes work without it, but "
                         "the 3D preview needs it: run `python install.py --skip-pip` again when online, or "
                         "download that file yourself and pass it with --tarball") from err


def vendor_three(tarball: str | None = None, force: bool = False) -> str:
    """Install three.js into web/vendor/ (no-op when that version is already there); returns the folder."""
    stamp = os.path.join(VENDOR, STAMP)
    if not force and os.path.isfile(stamp):
        with open(stamp, encoding="utf-8") as f:
            if f.read().strip() == THREE_VERSION and all(os.path.isfile(os.path.join(VENDOR, n))
                                                         for n in FILES.values()):
                return VENDOR
    if tarball:
        with open(tarball, "rb") as f:
            data = f.read()
    else:
        data = _download()
    _check_integrity(data)
    os.makedirs(VENDOR, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member, name in FILES.items():
            handle = tar.extractfile(member)
            if handle is None:
                raise SystemExit(f"three.js tarball has no {member}")
            text = handle.read().decode("utf-8")
            if name.endswith(".mjs") and not name.startswith("three.module"):
                for old, new in REWRITES.items():
                    text = text.replace(old, new)
            tmp = os.path.join(VENDOR, name + ".tmp")
            with open(tmp, "w", encoding="utf-8", newline="\n") as out:
                out.write(text)
            os.replace(tmp, os.path.join(VENDOR, name))
    with open(stamp, "w", encoding="utf-8") as f:
        f.write(THREE_VERSION + "\n")
    return VENDOR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-pip", action="store_true", help="only install three.js into web/vendor/")
    parser.add_argument("--tarball", help="local three-%s.tgz instead of downloading it" % THREE_VERSION)
    parser.add_argument("--force", action="store_true", help="re-install three.js even if present")
    parser.add_argument("--fa4", action="store_true",
                        help=f"also install the optional FlashAttention-4 accelerator (flash-attn-4=={FA4_VERSION}; "
                             "NVIDIA Hopper or newer GPUs)")
    args = parser.parse_args(argv)
    if not args.skip_pip:
        pip_install()
    if args.fa4:
        pip_install_fa4()
    folder = vendor_three(args.tarball, args.force)
    print(f"three.js {THREE_VERSION} installed in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
