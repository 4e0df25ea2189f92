"""Browser test (headless Chromium): the preview widget renders a GLB we exported, and every toggle changes it.

The GLB comes from our own exporter (``export_glb``) on a sphere whose PBR voxels vary by side (colour gradient,
metallic on +x, rough on top, translucent on one side), so every channel view must look different. The widget
(``web/viewer/viewer.mjs`` with three.js from ``web/vendor``) is served by a local HTTP server. Screenshots are
saved as test artefacts in ``tests/web/artifacts/`` (git-ignored) or ``$TRELLIS2_ARTIFACTS``.
"""
from __future__ import annotations

import functools
import http.server
import io
import math
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.web.cdp import Browser, chromium_path

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
MODES = ["basecolor", "roughness", "metallic", "alpha", "normals", "uv"]
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>trellis2 preview test</title>
<style>body{margin:0;background:#202020} #box{width:720px;height:600px;padding:8px}</style></head>
<body><div id="box"></div>
<script type="module">
window.T2 = {done: false};
try {
  const mod = await import("./web/viewer/viewer.mjs");
  const p = mod.createPreview(document.getElementById("box"));
  window.T2.preview = p;
  await p.setFiles([{url: "./model.glb", filename: "model.glb"}]);
  window.T2.stats = p.viewer.stats;
  window.T2.statsText = document.querySelector(".t2-stats").textContent;
} catch (e) { window.T2.error = String(e && e.stack || e); }
window.T2.done = true;
</script></body></html>"""
SHOT = """(async () => {
  const p = window.T2.preview;
  %s
  await new Promise(r => setTimeout(r, 50));
  p.viewer.renderNow();
  return p.viewer.canvas.toDataURL("image/png");
})()"""


def artifacts_dir() -> Path:
    out = Path(os.environ.get("TRELLIS2_ARTIFACTS") or ROOT / "tests" / "web" / "artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _sphere(n_lat: int = 40, n_lon: int = 80, r: float = 0.4):
    from trellis2_core.mesh.types import Mesh

    th = torch.linspace(0, math.pi, n_lat + 1)[1:-1]
    ph = torch.linspace(0, 2 * math.pi, n_lon + 1)[:-1]
    ring = torch.stack([torch.sin(th)[:, None] * torch.cos(ph), torch.sin(th)[:, None] * torch.sin(ph),
                        torch.cos(th)[:, None].expand(-1, n_lon)], -1).reshape(-1, 3) * r
    verts = torch.cat([torch.tensor([[0, 0, r]]), ring, torch.tensor([[0, 0, -r]])])
    idx = lambda i, j: 1 + i * n_lon + (j % n_lon)  # noqa: E731
    faces = [[0, idx(0, j), idx(0, j + 1)] for j in range(n_lon)]
    for i in range(n_lat - 2):
        for j in range(n_lon):
            faces += [[idx(i, j), idx(i + 1, j), idx(i, j + 1)], [idx(i, j + 1), idx(i + 1, j), idx(i + 1, j + 1)]]
    last = len(verts) - 1
    faces += [[last, idx(n_lat - 2, j + 1), idx(n_lat - 2, j)] for j in range(n_lon)]
    return Mesh(verts.float(), torch.tensor(faces, dtype=torch.int32))


def _voxels(res: int = 64, r: float = 0.4):
    from trellis2_core.mesh.types import PbrVoxels

    g = torch.stack(torch.meshgrid(*(torch.arange(res),) * 3, indexing="ij"), -1).reshape(-1, 3)
    p = (g.float() + 0.5) / res - 0.5
    keep = (p.norm(dim=1) - r).abs() < 3.0 / res
    g, p = g[keep], p[keep]
    attrs = torch.stack([0.5 + p[:, 0] / r * 0.5, 0.5 + p[:, 1] / r * 0.5, 0.5 - p[:, 2] / r * 0.5,
                         (p[:, 0] > 0).float(), torch.where(p[:, 2] > 0, 0.9, 0.15),
                         torch.where(p[:, 1] > 0, 1.0, 0.35)], 1)
    return PbrVoxels(g.to(torch.int32), attrs.float(), res)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if chromium_path() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    if not (WEB / "vendor" / "three.module.min.mjs").is_file():
        pytest.skip("three.js is not installed in web/vendor (run: python install.py --skip-pip)")
    from trellis2_core.postprocess import ExportConfig, export_glb

    root = tmp_path_factory.mktemp("site")
    report = export_glb(_sphere(), _voxels(), root / "model.glb", ExportConfig(texture_size=512, target_faces=0))
    (root / "index.html").write_text(PAGE)
    (root / "web").symlink_to(WEB, target_is_directory=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{server.server_address[1]}/index.html", "report": report}
    server.shutdown()
    server.server_close()


def _image(data_url: str) -> np.ndarray:
    import base64

    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.float32)


def test_widget_renders_the_glb_and_each_toggle_changes_it(site):
    out = artifacts_dir()
    with Browser(width=760, height=720) as browser:
        browser.navigate(site["url"])
        browser.wait_for("window.T2 && window.T2.done", timeout=60)
        error = browser.evaluate("window.T2.error || null")
        assert error is None, f"viewer failed: {error}; console: {browser.console[-10:]}"
        stats = browser.evaluate("window.T2.stats")
        assert stats == {"faces": site["report"].faces, "vertices": site["report"].vertices}
        assert "faces" in browser.evaluate("window.T2.statsText")
        shots = {"pbr": _image(browser.evaluate(SHOT % ""))}
        for mode in MODES:
            shots[mode] = _image(browser.evaluate(SHOT % f'p.buttons["{mode}"].click();'))
        shots["wireframe"] = _image(browser.evaluate(SHOT % 'p.buttons["uv"].click(); p.buttons["wireframe"].click();'))
        shots["reset"] = _image(browser.evaluate(SHOT % 'p.viewer.canvas.dispatchEvent(new WheelEvent("wheel", '
                                                        '{deltaY: 400, bubbles: true})); p.buttons["reset"].click();'))
        browser.screenshot(out / "widget.png")
        assert browser.evaluate("document.querySelector('a.t2-btn').download") == "model.glb"
    background = shots["pbr"][2, 2]
    for name, img in shots.items():
        Image.fromarray(img.astype(np.uint8)).save(out / f"viewer_{name}.png")
        covered = (np.abs(img - background).sum(-1) > 30).mean()
        assert 0.05 < covered < 0.9, f"{name}: the canvas looks blank ({covered:.1%} of pixels differ from background)"
    order = ["pbr", *MODES, "wireframe"]
    for a, b in zip(order, order[1:]):
        diff = np.abs(shots[a] - shots[b]).mean()
        assert diff > 1.0, f"toggling {a} -> {b} did not change the picture (mean diff {diff:.2f})"
    assert np.abs(shots["reset"] - shots["wireframe"]).mean() < 1.0, "reset view returns to the framed view"
