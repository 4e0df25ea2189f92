// ComfyUI extension: the 3D preview widget of trellis2-comfy's Export GLB, Image to 3D and Preview GLB nodes.
// The node's ui output `trellis2_glb` ([{filename, subfolder, type}]) is loaded through ComfyUI's /view route into
// the three.js viewer in ./viewer/viewer.mjs, which is imported only when a preview node exists (three.js is
// served from ./vendor, installed by install.py; nothing comes from a CDN).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPES = new Set(["Trellis2ExportGLB", "Trellis2ImageTo3D", "Trellis2PreviewGLB", "Trellis2BakeOntoMesh"]);
const UI_KEY = "trellis2_glb";
const WIDGET = "trellis2_preview";
const MIN_HEIGHT = 320;

let viewerModule = null;
function loadViewer() {
  viewerModule ??= import(new URL("./viewer/viewer.mjs", import.meta.url).href);
  return viewerModule;
}

function fileUrl(f) {
  const q = new URLSearchParams({ filename: f.filename, subfolder: f.subfolder || "", type: f.type || "output" });
  return api.apiURL(`/view?${q}`);
}

function attachPreview(node) {
  const container = document.createElement("div");
  container.style.width = "100%";
  container.style.height = "100%";
  const widget = node.addDOMWidget(WIDGET, WIDGET, container, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => MIN_HEIGHT,
  });
  widget.serialize = false; // not part of widgets_values: saved workflows keep one value per node input
  node.trellis2 = { container, preview: null, pending: null };
  node.setSize([Math.max(node.size[0], 420), Math.max(node.size[1], node.computeSize()[1])]);
  loadViewer().then((mod) => {
    node.trellis2.preview = mod.createPreview(container);
    if (node.trellis2.pending) node.trellis2.preview.setFiles(node.trellis2.pending).catch(console.warn);
  }).catch((err) => {
    container.textContent = "3D preview unavailable: three.js is missing from web/vendor " +
      "(run `python install.py` in the trellis2-comfy folder). " + (err?.message || err);
    container.style.color = "#e88";
  });
}

function showFiles(node, files) {
  const list = files.map((f) => ({ url: fileUrl(f), filename: f.filename }));
  if (!node.trellis2) return;
  node.trellis2.pending = list;
  node.trellis2.preview?.setFiles(list).catch(console.warn);
}

app.registerExtension({
  name: "trellis2comfy.preview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      attachPreview(this);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const files = output?.[UI_KEY];
      if (Array.isArray(files) && files.length) showFiles(this, files);
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.trellis2?.preview?.dispose();
      return onRemoved?.apply(this, arguments);
    };
  },
});
