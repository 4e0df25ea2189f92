"""How the pack installs and imports on a user's machine: no shadowed packages, any folder name, torch left alone."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import install
from trellis2_core import dependencies
from trellis2_core.errors import BackendError

ROOT = Path(__file__).resolve().parent.parent


def _requirement_lines(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-r"):
            out.append(line)
    return out


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()


def test_requirements_leave_torch_and_triton_alone_and_match_pyproject():
    runtime = _requirement_lines(ROOT / "requirements.txt")
    names = {_name(r) for r in runtime}
    assert not names & {"torch", "triton", "triton-windows", "torchvision", "torchaudio"}, (
        "requirements.txt must not list torch/triton: pip would replace ComfyUI's or the user's CUDA build")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert pyproject == runtime


def test_transformers_and_trimesh_have_a_tested_range():
    """CI (.ci/run) installs the lower bounds in a second venv; both ends must be explicit."""
    runtime = {_name(r): r for r in _requirement_lines(ROOT / "requirements.txt")}
    for name in ("transformers", "trimesh"):
        assert re.search(r">=\s*[0-9]", runtime[name]) and re.search(r"<\s*[0-9]", runtime[name]), runtime[name]


def _top_level_names() -> set[str]:
    """Names importable from the repository root when it is on sys.path (cwd of ``python -m``, pytest's root)."""
    names = set()
    for entry in ROOT.iterdir():
        if entry.name.startswith((".", "_")) or entry.name == "conftest.py":
            continue
        if entry.is_dir() and (entry / "__init__.py").is_file():
            names.add(entry.name)
        elif entry.is_file() and entry.suffix == ".py":
            names.add(entry.stem)
    return names


def test_no_top_level_name_of_ours_shadows_an_installed_package():
    ours = _top_level_names()
    assert "kernels" not in ours, "kernels/ must not be a package (it would shadow PyPI's kernels)"
    installed = importlib.metadata.packages_distributions()
    clash = {name: installed[name] for name in ours if name in installed}
    assert not clash, f"these top-level names of the checkout shadow installed packages: {clash}"
    assert ours <= {"trellis2_core", "nodes", "install"}, f"new top-level module(s) {ours}: check they shadow nothing"


def _run(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_pypi_kernels_wins_from_the_repository_root():
    """transformers >= 5 runs ``from kernels import ...``: our folder must not answer that from the repo root."""
    if importlib.util.find_spec("kernels") is None or dependencies.installed_version("kernels") is None:
        pytest.skip("PyPI's kernels package is not installed")
    code = ("import kernels, trellis2_core._kernels as k; from kernels import get_kernel; "
            "print(kernels.__file__); print(k.kernels.__name__)")
    done = _run([sys.executable, "-c", code], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    kernels_file, ours = done.stdout.split()
    # our folder must not answer (a venv inside the checkout, as the README suggests, holds PyPI's kernels under
    # the repo root: only our own kernels/ folder is ruled out)
    assert not Path(kernels_file).resolve().is_relative_to((ROOT / "kernels").resolve())
    assert ours == "trellis2_kernels"


def test_cli_runs_from_the_repository_root_with_the_demo_pipeline(tmp_path):
    """The README's first command (minus the installs) from the repo root: conditioning through transformers, the
    whole pipeline, a GLB. Uses its own demo cache, so the demo pipeline is written by this run."""
    out = tmp_path / "out" / "T.glb"
    out.parent.mkdir()
    done = _run([sys.executable, "-m", "trellis2_core", "assets/T.png", "--pipeline", "demo", "-o", str(out),
                 "-q", "--steps", "2", "--texture-size", "256"], cwd=ROOT,
                env={"TRELLIS2_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.is_file() and out.read_bytes()[:4] == b"glTF"
    assert "RANDOM weights" in done.stderr  # the demo says what it is


def _copy_checkout(dest: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to list the tracked files")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.mark.parametrize("where", ["trellis2-comfy", "ComfyUI-Trellis2", "ComfyUI/custom_nodes/trellis2-comfy"])
def test_tests_collect_and_pass_in_a_checkout_of_any_name(tmp_path, where):
    """pytest imports the root __init__.py of a checkout; a folder name that is not an identifier broke that."""
    dest = tmp_path / where
    _copy_checkout(dest)
    done = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_layering.py",
                 "tests/kernels/test_dispatch.py"], cwd=dest, timeout=300, env={"CI": ""})  # no ../shared there
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"\d+ passed", done.stdout)


def test_pack_loads_like_comfyui_does_without_touching_sys_path():
    name = "trellis2-comfy"  # ComfyUI names the module after the folder
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    before = list(sys.path)
    sys.modules[name] = pack
    try:
        spec.loader.exec_module(pack)
    finally:
        sys.modules.pop(name, None)
    assert sys.path == before
    assert "Trellis2LoadModel" in pack.NODE_CLASS_MAPPINGS


def test_old_or_missing_torch_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(dependencies, "installed_version", lambda dist: "2.3.1" if dist == "torch" else None)
    with pytest.raises(BackendError, match=r"needs PyTorch >= 2\.4, found 2\.3\.1.*download\.pytorch\.org"):
        dependencies.check_torch()
    monkeypatch.setattr(dependencies, "installed_version", lambda dist: "2.13.0+cu130")
    assert dependencies.check_torch() == "2.13.0+cu130"


def test_cli_with_old_torch_says_so_in_one_line(monkeypatch, capsys, tmp_path):
    from trellis2_core.__main__ import main

    monkeypatch.setattr(dependencies, "installed_version", lambda dist: "2.3.1" if dist == "torch" else None)
    rc = main([str(ROOT / "assets" / "T.png"), "-o", str(tmp_path / "o.glb"), "-q", "--pipeline", "demo"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: trellis2-comfy needs PyTorch >= 2.4, found 2.3.1"), err
    assert "Traceback" not in err and not (tmp_path / "o.glb").exists()


def test_old_triton_is_reported():
    assert dependencies.version_tuple("3.1.0") < dependencies.MIN_TRITON <= dependencies.version_tuple("3.2.0")
    assert dependencies.version_tuple("2.13.0+cpu") == (2, 13, 0)


def test_install_pins_the_installed_torch(monkeypatch):
    calls = []

    def record(cmd):
        constraints = Path(cmd[cmd.index("-c") + 1]).read_text().split()
        calls.append((cmd, constraints))

    monkeypatch.setattr(install.subprocess, "check_call", record)
    install.pip_install()
    (cmd, constraints), = calls
    assert cmd[1:4] == ["-m", "pip", "install"] and cmd[-2:] == ["-r", str(ROOT / "requirements.txt")]
    assert f"torch=={dependencies.installed_version('torch')}" in constraints
    if dependencies.installed_version("triton"):
        assert f"triton=={dependencies.installed_version('triton')}" in constraints


def test_install_stops_without_torch(monkeypatch):
    monkeypatch.setattr(dependencies, "installed_version", lambda dist: None)
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" fails
    monkeypatch.setattr(install.subprocess, "check_call", lambda cmd: pytest.fail("pip must not run"))
    with pytest.raises(SystemExit, match="needs PyTorch"):
        install.pip_install()


def test_only_workflows_is_a_comfyui_template_folder():
    """ComfyUI serves the first of these folders it finds as the pack's workflow templates (one static route per
    folder, same URL): any other one next to workflows/ hides the templates (404), as examples/ once did."""
    comfy_template_folders = ("example_workflows", "example", "examples", "workflow", "workflows")
    present = [name for name in comfy_template_folders if (ROOT / name).is_dir()]
    assert present == ["workflows"]
