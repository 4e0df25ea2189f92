"""install.py: pinned three.js from an npm tarball, integrity-checked, imports rewritten to local files (offline)."""
from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

import install


def _tarball(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture()
def fake_three(tmp_path, monkeypatch):
    files = {member: f"// {member}\nimport {{ A }} from 'three';\n" for member in install.FILES}
    files["package/examples/jsm/loaders/GLTFLoader.js"] += "import { t } from '../utils/BufferGeometryUtils.js';\n"
    data = _tarball(files)
    path = tmp_path / "three.tgz"
    path.write_bytes(data)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    monkeypatch.setattr(install, "THREE_INTEGRITY", integrity)
    monkeypatch.setattr(install, "VENDOR", str(tmp_path / "vendor"))
    return path


def test_vendor_three_installs_and_rewrites_imports(fake_three, tmp_path, monkeypatch):
    folder = install.vendor_three(str(fake_three))
    names = sorted(p.name for p in (tmp_path / "vendor").iterdir())
    assert names == sorted([*install.FILES.values(), install.STAMP])
    gltf = (tmp_path / "vendor" / "GLTFLoader.mjs").read_text()
    assert "from './three.module.min.mjs';" in gltf and "from './BufferGeometryUtils.mjs';" in gltf
    assert "'three'" not in gltf
    monkeypatch.setattr(install, "_download", lambda: pytest.fail("must not download when installed"))
    assert install.vendor_three() == folder


def test_integrity_mismatch_installs_nothing(fake_three, tmp_path):
    fake_three.write_bytes(fake_three.read_bytes() + b"tampered")
    with pytest.raises(SystemExit, match="integrity mismatch"):
        install.vendor_three(str(fake_three))
    assert not (tmp_path / "vendor").exists()


def test_pinned_version_matches_the_viewer():
    viewer = (Path(install.HERE) / "web" / "viewer" / "viewer.mjs").read_text()
    for name in ("three.module.min.mjs", "OrbitControls.mjs", "RoomEnvironment.mjs", "GLTFLoader.mjs"):
        assert f"../vendor/{name}" in viewer
        assert name in install.FILES.values()
    assert install.THREE_URL.endswith(f"three-{install.THREE_VERSION}.tgz")


@pytest.mark.parametrize("cuda, req", [("13.0", f"flash-attn-4[cu13]=={install.FA4_VERSION}"),
                                       ("12.8", f"flash-attn-4=={install.FA4_VERSION}")])
def test_fa4_requirement_follows_torch_cuda(cuda, req):
    assert install.fa4_requirement(cuda) == req


@pytest.mark.parametrize("cuda, match", [(None, "no CUDA support"), ("11.8", "CUDA 12 or 13")])
def test_fa4_refused_without_a_suitable_torch(cuda, match):
    with pytest.raises(SystemExit, match=match):
        install.fa4_requirement(cuda)


def test_fa4_flag_installs_the_pinned_wheel_only(fake_three, monkeypatch):
    calls = []

    def record(cmd):  # the constraints file is gone once pip returns: read it now
        constraints = Path(cmd[cmd.index("-c") + 1]).read_text().split()
        calls.append(([c for i, c in enumerate(cmd) if "-c" not in cmd[max(i - 1, 0):i + 1]], constraints))

    monkeypatch.setattr(install.subprocess, "check_call", record)
    monkeypatch.setattr("torch.version.cuda", "13.0")
    assert install.main(["--skip-pip", "--fa4", "--tarball", str(fake_three)]) == 0
    (cmd, constraints), = calls
    assert cmd == [install.sys.executable, "-m", "pip", "install", "--only-binary=:all:",
                   f"flash-attn-4[cu13]=={install.FA4_VERSION}"]
    import torch

    assert any(c.startswith("torch==") and c.split("==")[1] in torch.__version__ for c in constraints), (
        "flash-attn-4 must not be allowed to replace the installed torch")
