"""Checks on a GPU that the default fast path runs end to end in every dtype, also without cuDNN / flash SDPA.

Usage (from anywhere; needs only the pack and its requirements)::

    python benchmarks/gpu_fast_path_check.py IMAGE PIPELINE [--out DIR] [--device cuda] [--timeout 900] [--only TEXT]

e.g. ``python benchmarks/gpu_fast_path_check.py /work/shared/assets/images/T.png /work/shared/golden/tiny-pipeline``.

Each run is ``python -m trellis2_core IMAGE --pipeline PIPELINE -o OUT.glb --speed fast --device DEVICE`` in its
own process, in three precisions: ``--dtype float32`` (the tiny pipeline's own), ``--dtype float16``, and bf16 DiTs:
a copy of PIPELINE (model files linked) whose DiT configs say ``"dtype": "bfloat16"`` while the VAEs keep theirs, as
the official checkpoints are (``--dtype bfloat16`` itself cannot be used: the loader rejects it for VAEs, whose only
precision switch is ``use_fp16``).

* ``sdpa=all``: PyTorch's SDPA kernels as installed;
* ``sdpa=no-cudnn-flash``: ``torch.backends.cuda.enable_cudnn_sdp(False)`` and ``enable_flash_sdp(False)`` before the
  CLI starts (the fast path's cuDNN preference must fall back to memory-efficient/math attention, not fail);
* ``attention=cudnn`` / ``attention=flash`` in float32: kernels forced with ``--attention`` that have no float32
  kernel: the run must complete, with a logged warning about the fallback (on NVIDIA GPUs; elsewhere the SDPA
  choice is ignored, silently).

A run passes when the CLI exits 0, the GLB exists and starts with the glTF magic, and its log has no "No available
kernel". One summary line per run, then ``ALL PASS`` or ``FAILED: n of m``; the exit status is 0 only if all pass.
Logs and GLBs go to ``--out`` (default: a new temporary folder).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Run:
    """One CLI run of the check."""

    name: str
    dtype: str | None  # --dtype; None: the bf16-DiT copy of the pipeline, no --dtype
    no_fused_sdpa: bool = False
    attention: str | None = None  # --attention
    expect_warning: bool = False


RUNS = (
    Run("fp32 sdpa=all", "float32"),
    Run("fp16 sdpa=all", "float16"),
    Run("bf16 sdpa=all", None),
    Run("fp32 sdpa=no-cudnn-flash", "float32", no_fused_sdpa=True),
    Run("fp16 sdpa=no-cudnn-flash", "float16", no_fused_sdpa=True),
    Run("bf16 sdpa=no-cudnn-flash", None, no_fused_sdpa=True),
    Run("fp32 attention=cudnn", "float32", attention="cudnn", expect_warning=True),
    Run("fp32 attention=flash", "float32", attention="flash", expect_warning=True),
)


def _child(no_fused_sdpa: bool, cli_args: list[str]) -> int:
    """The process of one run: optionally switch cuDNN/flash SDPA off, then the CLI's own ``main``."""
    sys.path.insert(0, str(REPO))
    if no_fused_sdpa:
        import torch

        torch.backends.cuda.enable_cudnn_sdp(False)
        torch.backends.cuda.enable_flash_sdp(False)
    from trellis2_core.__main__ import main

    return main(cli_args)


def _glb_ok(path: Path) -> str | None:
    """Why ``path`` is not a GLB file, or None."""
    if not path.is_file():
        return "no GLB written"
    with path.open("rb") as f:
        magic = f.read(4)
    return None if magic == b"glTF" else f"not a GLB (starts with {magic!r})"


def _run(run: Run, image: str, pipeline: str, device: str, out: Path, timeout: float, nvidia: bool
         ) -> tuple[bool, str]:
    slug = run.name.replace(" ", "_").replace("=", "-")
    glb, log = out / f"{slug}.glb", out / f"{slug}.log"
    glb.unlink(missing_ok=True)
    cli = [image, "--pipeline", pipeline, "-o", str(glb), "--speed", "fast", "--device", device, "--offline"]
    cli += ["--dtype", run.dtype] if run.dtype else []
    cli += ["--attention", run.attention] if run.attention else []
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child"] + (["--no-fused-sdpa"] if run.no_fused_sdpa
                                                                         else []) + ["--"] + cli
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, text = None, f"{err.stdout or ''}{err.stderr or ''}\ntimed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    log.write_text(text if isinstance(text, str) else str(text))
    problems = []
    if rc != 0:
        lines = [line.strip() for line in str(text).replace("\r", "\n").splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or line.startswith("error:")]
        last = (errors or lines or ["(no output)"])[-1]
        problems.append(f"exit {rc}: {last[:240]}")
    if "No available kernel" in str(text):
        problems.append("SDPA found no kernel")
    if rc == 0 and (why := _glb_ok(glb)):
        problems.append(why)
    if run.expect_warning and nvidia and rc == 0 and "WARNING trellis2_core" not in str(text):
        problems.append("no warning about the forced kernel's fallback")
    size = f"{glb.stat().st_size / 1024:.0f} KB" if glb.is_file() else "-"
    detail = "; ".join(problems) if problems else f"{size}, log {log}"
    return not problems, f"{'PASS' if not problems else 'FAIL'}  {run.name:<26} {seconds:6.1f} s  {detail}"


def _bf16_dit_pipeline(src: Path, dst: Path) -> Path:
    """A copy of pipeline folder ``src`` at ``dst`` whose DiT configs (``args.dtype``) say bfloat16; every other
    file and folder is a symbolic link to the original."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.name != "ckpts" or not item.is_dir():
            (dst / item.name).symlink_to(item.resolve())
            continue
        (dst / "ckpts").mkdir()
        for f in item.iterdir():
            data = json.loads(f.read_text()) if f.suffix == ".json" else None
            if isinstance(data, dict) and isinstance(data.get("args"), dict) and "dtype" in data["args"]:
                data["args"]["dtype"] = "bfloat16"
                (dst / "ckpts" / f.name).write_text(json.dumps(data, indent=2))
            else:
                (dst / "ckpts" / f.name).symlink_to(f.resolve())
    return dst


def _device_summary(device: str) -> tuple[str, bool]:
    """A line about the device (from ``trellis2_core.capabilities``) and whether it is an NVIDIA GPU."""
    sys.path.insert(0, str(REPO))
    try:
        import torch

        from trellis2_core.capabilities import describe, device_traits

        t = device_traits(torch.device(device))
        lines = [f"device: {t.label()}, triton={t.triton}, cudnn>=9={t.cudnn}, torch {torch.__version__}"]
        for dtype in ("float32", "float16", "bfloat16"):  # what the fast path may use here (tiny DiTs: head size 32)
            facts = describe(t, dtype, 32)
            lines.append(f"  {dtype:<9} sdpa {'/'.join(facts['sdpa_kernels'])}; " + ", ".join(
                f"{k}={'yes' if facts[k] else 'no'}" for k in ("compile", "kernel_ops", "fused_mlp", "fa4")))
        return "\n".join(lines), t.kind == "cuda"
    except Exception as err:  # noqa: BLE001 - a summary line only; the runs report the real failure
        return f"device: {device} (could not read its traits: {type(err).__name__}: {err})", False


def main(argv: list[str] | None = None) -> int:
    """Run every check and print one line per run; 0 when all pass."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        rest = argv[1:]
        no_fused = rest[:1] == ["--no-fused-sdpa"]
        rest = rest[1:] if no_fused else rest
        return _child(no_fused, rest[1:] if rest[:1] == ["--"] else rest)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image", help="input image, e.g. /work/shared/assets/images/T.png")
    p.add_argument("pipeline", help="pipeline folder, e.g. /work/shared/golden/tiny-pipeline (fp32 weights)")
    p.add_argument("--out", default=None, help="folder for the GLBs and logs (default: a new temporary folder)")
    p.add_argument("--device", default="cuda", help="device of every run (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run (default: %(default)s)")
    p.add_argument("--only", default=None, help="run only the checks whose name contains this text")
    args = p.parse_args(argv)
    runs = [run for run in RUNS if args.only is None or args.only in run.name]
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_fast_path_check_"))
    out.mkdir(parents=True, exist_ok=True)
    summary, nvidia = _device_summary(args.device)
    print(summary, flush=True)
    pipeline = Path(args.pipeline).resolve()
    bf16 = _bf16_dit_pipeline(pipeline, out / "pipeline-bf16-dits") if any(r.dtype is None for r in runs) else None
    failed = 0
    for run in runs:
        ok, line = _run(run, str(Path(args.image).resolve()), str(pipeline if run.dtype else bf16), args.device, out,
                        args.timeout, nvidia)
        failed += not ok
        print(line, flush=True)
    print("ALL PASS" if not failed else f"FAILED: {failed} of {len(runs)}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
