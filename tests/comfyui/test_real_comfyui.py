"""Real ComfyUI: the pack loads, every shipped workflow runs through ``/prompt`` to a GLB in ``output/``, Cancel
leaves no partial GLB, cached re-runs stay correct, and headless Chromium shows our widget rendering the result.

Runs only when ``$COMFYUI_DIR`` points to a ComfyUI checkout with its dependencies and this pack's requirements
installed (``server.py`` explains the set-up; nothing in that folder is modified). The workflows run as shipped
(tiny golden pipeline in place of TRELLIS.2-4B, 1024_cascade, 12 steps, 2048² textures), except the SDXL picture,
which is sampled at 256×256 with 4 steps from a tiny random SDXL-format checkpoint (a CPU cannot sample a
1024² SDXL image in reasonable time). ``TRELLIS2_COMFY_FAST=1`` also shrinks the TRELLIS.2 settings.
Screenshots go to ``tests/web/artifacts/`` (git-ignored) or ``$TRELLIS2_ARTIFACTS``.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from nodes import NODE_CLASS_MAPPINGS
from tests.web.cdp import Browser, chromium_path
from tests.workflows.graph import ui_to_api
from tests.workflows.test_workflow_files import FILES, schemas
from tests.workflows.test_workflow_run import check_glb

pytestmark = pytest.mark.comfyui

ROOT = Path(__file__).resolve().parents[2]
FAST = {"steps": 1, "resolution": "512", "texture_size": 512, "target_faces": 20000}
SDXL = {"EmptyLatentImage": {"width": 256, "height": 256}, "KSampler": {"steps": 4}}
# a CPU cannot convert and encode a mesh at the 1024 grid in reasonable time: the texturing graph runs at 128
TEXTURING = {"Trellis2EncodeMesh": {"resolution": 128}}


def artifacts_dir() -> Path:
    out = Path(os.environ.get("TRELLIS2_ARTIFACTS") or ROOT / "tests" / "web" / "artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("set COMFYUI_DIR to a ComfyUI checkout to run the real-ComfyUI tests")
    from tests.comfyui.server import ComfyServer

    server = ComfyServer(Path(comfy_dir).resolve(), tmp_path_factory.mktemp("comfy") / "base")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(comfy):
    """The ComfyUI frontend in headless Chromium (None without Chromium: conversions fall back to Python)."""
    if chromium_path() is None:
        yield None
        return
    with Browser(width=1600, height=1000, timeout=120) as browser:
        open_frontend(browser, comfy.url)
        yield browser


def open_frontend(browser, url: str) -> None:
    """Load the frontend and wait for its start-up workflow: a graph loaded while that one is still loading gets
    its node ids renumbered (they collide with the start-up graph's), and the frontend's prompt then differs."""
    browser.navigate(url + "/")
    browser.wait_for("!!(window.comfyAPI && window.comfyAPI.app && window.comfyAPI.app.app.graph)")
    browser.wait_for("window.comfyAPI.app.app.graph._nodes.length > 0", timeout=120)
    time.sleep(1)


def to_api(page, ui: dict) -> dict:
    """UI → API with the real frontend (``app.graphToPrompt``, i.e. what Queue sends), checked against ours."""
    ours = ui_to_api(ui, schemas())
    if page is None:
        return ours
    theirs = page.evaluate("(async () => { const app = window.comfyAPI.app.app; await app.loadGraphData(%s); "
                           "return (await app.graphToPrompt()).output; })()" % json.dumps(ui))
    assert set(theirs) == set(ours)
    for nid, node in theirs.items():
        extra = set(node["inputs"]) - set(ours[nid]["inputs"])
        assert extra <= {"upload", "image"}, f"frontend sent unknown inputs {extra} for {node['class_type']}"
        assert {k: v for k, v in node["inputs"].items() if k not in extra} == ours[nid]["inputs"]
    return theirs


def adjust(prompt: dict) -> dict:
    prompt = json.loads(json.dumps(prompt))
    fast = os.environ.get("TRELLIS2_COMFY_FAST") == "1"
    for node in prompt.values():
        node["inputs"].update(SDXL.get(node["class_type"], {}))
        node["inputs"].update(TEXTURING.get(node["class_type"], {}))
        if fast and node["class_type"].startswith("Trellis2"):
            for k, v in FAST.items():
                if k in node["inputs"] and not isinstance(node["inputs"][k], list) and \
                        k not in TEXTURING.get(node["class_type"], {}):
                    node["inputs"][k] = v
    return prompt


def glbs(comfy) -> set[Path]:
    return {p for p in (comfy.base / "output").rglob("*") if p.suffix in (".glb", ".part")}


def test_pack_loads_with_nodes_widget_and_templates(comfy):
    info = comfy.get("/object_info")
    assert set(NODE_CLASS_MAPPINGS) <= set(info)
    assert all(info[k]["category"].startswith("TRELLIS.2") for k in NODE_CLASS_MAPPINGS)
    assert "TRELLIS.2-4B" in info["Trellis2LoadModel"]["input"]["required"]["source"][0]
    assert f"/extensions/{comfy.pack_name}/trellis2_preview.js" in comfy.get("/extensions")
    for rel in ("viewer/viewer.mjs", "vendor/three.module.min.mjs"):
        status, ctype, _ = comfy.get(f"/extensions/{comfy.pack_name}/{rel}", raw=True)
        assert status == 200 and "javascript" in ctype, (rel, ctype)
    templates = comfy.get("/api/workflow_templates")
    assert sorted(templates[comfy.pack_name]) == sorted(p.stem for p in FILES)
    status, _, body = comfy.get(f"/api/workflow_templates/{comfy.pack_name}/trellis2_simple.json", raw=True)
    assert status == 200 and json.loads(body)["nodes"]
    assert comfy.get("/models/trellis2") is not None


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_workflow_runs_through_prompt_to_a_glb(comfy, page, path):
    ui = json.loads(path.read_text())
    before = glbs(comfy)
    started = time.time()
    entry = comfy.wait(comfy.queue(adjust(to_api(page, ui)), ui))
    errors = [m for kind, m in entry["status"]["messages"] if kind == "execution_error"]
    assert entry["status"]["status_str"] == "success", f"{path.stem} failed: {errors}\n{comfy.log()[-3000:]}"
    files = [f for out in entry["outputs"].values() for f in out.get("trellis2_glb", [])]
    assert len(files) == 1
    rel = Path(files[0]["subfolder"]) / files[0]["filename"]
    new = glbs(comfy) - before
    expected = {comfy.base / "output" / rel}
    for node in ui["nodes"]:  # core SaveGLB on our core MESH outputs writes its own GLB
        if node["type"] == "SaveGLB":
            stem = str(node["widgets_values"][0]).rsplit("/", 1)[-1] + "_"
            core = [p for p in new if p.name.startswith(stem)]
            assert len(core) == 1 and core[0].read_bytes()[:4] == b"glTF", (stem, new)
            expected |= set(core)
    assert new == expected
    check_glb(comfy.base / "output" / rel)
    if path.stem == "trellis2_texture_mesh":
        check_textured_mesh(comfy, entry, rel)
    status, ctype, body = comfy.get(f"/view?filename={files[0]['filename']}&subfolder={files[0]['subfolder']}"
                                    "&type=output", raw=True)
    assert status == 200 and body[:4] == b"glTF"
    print(f"{path.stem}: {rel} in {time.time() - started:.0f} s")


def check_textured_mesh(comfy, entry: dict, rel: Path) -> None:
    """The texturing workflow's GLB: the input mesh's vertices, faces and UVs bit for bit, valid per the Khronos
    validator, and core Preview 3D took its path (its ui ``result`` is what the frontend viewer loads)."""
    import numpy as np
    import trimesh

    from tests.tools.glb_checks import assert_valid_glb
    from tests.workflows.make_workflows import MESH

    a = trimesh.load(comfy.base / "input" / MESH, process=False, force="mesh")
    b = trimesh.load(comfy.base / "output" / rel, process=False, force="mesh")
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)
    assert np.array_equal(a.visual.uv, b.visual.uv)
    previews = [out["result"] for out in entry["outputs"].values() if "result" in out]
    assert [p[0] for p in previews] == [rel.as_posix()], previews
    assert_valid_glb(comfy.base / "output" / rel, 2048)


def test_changing_export_settings_reuses_every_cached_stage(comfy, page):
    path = next(p for p in FILES if p.stem == "trellis2_staged")
    prompt = adjust(to_api(page, json.loads(path.read_text())))
    comfy.wait(comfy.queue(prompt))  # cached already when the workflow test ran first
    export_id = next(k for k, v in prompt.items() if v["class_type"] == "Trellis2ExportGLB")
    prompt[export_id]["inputs"]["alpha_mode"] = "BLEND"
    entry = comfy.wait(comfy.queue(prompt))
    assert entry["status"]["status_str"] == "success"
    cached = next(m["nodes"] for kind, m in entry["status"]["messages"] if kind == "execution_cached")
    assert set(cached) == set(prompt) - {export_id}


def test_cancel_leaves_no_partial_glb(comfy, page):
    path = next(p for p in FILES if p.stem == "trellis2_simple")
    prompt = adjust(to_api(page, json.loads(path.read_text())))
    gen = next(k for k, v in prompt.items() if v["class_type"] == "Trellis2ImageTo3D")
    prompt[gen]["inputs"]["seed"] = 1234  # not cached
    before = glbs(comfy)
    pid = comfy.queue(prompt)
    deadline = time.time() + 120
    while not comfy.get("/queue")["queue_running"] and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(4)
    comfy.post("/interrupt", {})
    entry = comfy.wait(pid)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    time.sleep(1)
    assert glbs(comfy) == before, "an interrupted run must not leave a GLB or a partial file"


def test_widget_renders_in_comfyui(comfy, page):
    if page is None:
        pytest.skip("Chromium is not installed")
    ui = json.loads(next(p for p in FILES if p.stem == "trellis2_simple").read_text())
    open_frontend(page, comfy.url)
    page.evaluate("window.comfyAPI.app.app.loadGraphData(%s)" % json.dumps(ui))
    page.evaluate("window.comfyAPI.app.app.queuePrompt(0, 1)")
    text = page.wait_for("(() => { const t = [...document.querySelectorAll('.t2-stats')].map(e => e.textContent)"
                         ".join(' '); return t.includes('faces') ? t : null })()", timeout=3600)
    page.evaluate("(() => { const app = window.comfyAPI.app.app; const n = app.graph._nodes.find("
                  "x => x.type === 'Trellis2ImageTo3D'); app.canvas.ds.scale = 0.9; app.canvas.centerOnNode(n); "
                  "app.canvas.setDirty(true, true); return true })()")
    time.sleep(3)
    shot = page.screenshot(artifacts_dir() / "comfyui_widget.png")
    page.evaluate("(() => { for (const k of ['normals', 'wireframe']) document.querySelector("
                  "`.trellis2-preview button[data-key=${k}]`).click(); return true })()")
    time.sleep(2)
    page.screenshot(artifacts_dir() / "comfyui_widget_normals.png")
    ours = [c for c in page.console if "trellis2" in c.lower() and ("error" in c.lower() or "exception" in c)]
    assert not ours, ours
    assert "faces" in text and shot.stat().st_size > 10_000


def test_core_preview3d_loads_the_textured_glb(comfy, page):
    """Queued from the real frontend, the texturing workflow's core Preview 3D node takes Bake onto Mesh's path and
    its three.js viewer fetches that GLB from the output folder."""
    if page is None:
        pytest.skip("Chromium is not installed")
    ui = json.loads(next(p for p in FILES if p.stem == "trellis2_texture_mesh").read_text())
    for node in ui["nodes"]:
        if node["type"] == "Trellis2EncodeMesh":  # the CPU grid of adjust(), and a new seed so nothing is cached
            node["widgets_values"][:2] = [TEXTURING["Trellis2EncodeMesh"]["resolution"], 7]
            node.get("widgets_values_named", {}).update(resolution=node["widgets_values"][0], seed=7)
    page.navigate(comfy.url + "/")
    page.wait_for("!!(window.comfyAPI && window.comfyAPI.app && window.comfyAPI.app.app.graph)")
    time.sleep(2)
    page.evaluate("window.comfyAPI.app.app.loadGraphData(%s)" % json.dumps(ui))
    # the page load alone fills the default 250-entry resource timing buffer: empty it, then record every request
    page.evaluate("(() => { performance.clearResourceTimings(); performance.setResourceTimingBufferSize(100000); "
                  "return true })()")
    page.evaluate("window.comfyAPI.app.app.queuePrompt(0, 1)")
    shown = page.wait_for("(() => { const n = window.comfyAPI.app.app.graph._nodes.find(x => x.type === 'Preview3D');"
                          " const f = n && n.properties['Last Time Model File']; return f && f.endsWith('.glb') ? f"
                          " : null })()", timeout=1800)
    assert shown.startswith("trellis2/textured_") and (comfy.base / "output" / shown).is_file()
    name = shown.rsplit("/", 1)[1]
    page.evaluate("(() => { const app = window.comfyAPI.app.app; const n = app.graph._nodes.find("
                  "x => x.type === 'Preview3D'); app.canvas.ds.scale = 1.0; app.canvas.centerOnNode(n); "
                  "app.canvas.setDirty(true, true); return true })()")  # the viewer loads once it is on screen
    fetched = "performance.getEntriesByType('resource').filter(r => r.name.includes('%s'))" % name
    try:
        statuses = page.wait_for("(() => { const e = %s; return e.length ? e.map(r => r.responseStatus) : null })()"
                                 % fetched, timeout=120)
    except TimeoutError:
        seen = page.evaluate("performance.getEntriesByType('resource').map(r => r.name).filter(n => "
                             "n.includes('view') || n.includes('.glb'))")
        raise AssertionError(f"core Preview 3D did not fetch {shown}; requests seen: {seen[-10:]}") from None
    assert 200 in statuses, statuses
    time.sleep(3)
    page.screenshot(artifacts_dir() / "comfyui_preview3d_textured.png")
    failed = [c for c in page.console if "failed to load" in c.lower() or "gltf" in c.lower() and "error" in c]
    assert not failed, failed
