// trellis2-comfy GLB viewer: orbit camera, image-based lighting from a generated room environment (no HDRI
// download), channel views (PBR / base colour / roughness / metallic / alpha / normals / UV checker), wireframe
// overlay, face and vertex counts, reset view and download. three.js comes from ../vendor (install.py), never a CDN.
// Renders on demand only (after loading, camera moves and toggles), so idle previews cost nothing.
import * as THREE from "../vendor/three.module.min.mjs";
import { OrbitControls } from "../vendor/OrbitControls.mjs";
import { RoomEnvironment } from "../vendor/RoomEnvironment.mjs";
import { GLTFLoader } from "../vendor/GLTFLoader.mjs";

export const MODES = [
  ["pbr", "PBR", "Full PBR material under the studio lighting"],
  ["basecolor", "Base colour", "Base-colour texture only, unlit"],
  ["roughness", "Roughness", "Roughness channel as grey (white = rough)"],
  ["metallic", "Metallic", "Metallic channel as grey (white = metal)"],
  ["alpha", "Alpha", "Alpha channel as grey (white = opaque)"],
  ["normals", "Normals", "Shading normals as colours"],
  ["uv", "UV checker", "A checker texture on the UVs: shows stretching and seams"],
];
const BACKGROUND = 0x30343a;
const WIRE_COLOR = 0x101010;

const CHANNEL_VERT = `
varying vec2 vUv;
void main() {
  vUv = uv;
  gl_Position = projectionMatrix * modelViewMatrix * vec4(position, 1.0);
}`;
const CHANNEL_FRAG = `
uniform sampler2D map;
uniform vec4 channel;
uniform float fallback;
uniform bool hasMap;
varying vec2 vUv;
void main() {
  float v = hasMap ? dot(texture2D(map, vUv), channel) : fallback;
  gl_FragColor = vec4(vec3(v), 1.0);
  #include <colorspace_fragment>
}`;

function checkerTexture(size = 512, cells = 16) {
  const data = new Uint8Array(size * size * 4);
  const step = size / cells;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const cx = Math.floor(x / step), cy = Math.floor(y / step);
      const dark = (cx + cy) % 2 === 0;
      const i = (y * size + x) * 4;
      // hue varies across the atlas so that charts can be told apart; the checker shows stretching
      data[i] = dark ? 40 : 90 + Math.round(160 * cx / cells);
      data[i + 1] = dark ? 40 : 230 - Math.round(120 * cy / cells);
      data[i + 2] = dark ? 40 : 220;
      data[i + 3] = 255;
    }
  }
  const tex = new THREE.DataTexture(data, size, size, THREE.RGBAFormat);
  tex.colorSpace = THREE.SRGBColorSpace;
  tex.wrapS = tex.wrapT = THREE.RepeatWrapping;
  tex.magFilter = THREE.NearestFilter;
  tex.minFilter = THREE.LinearMipmapLinearFilter;
  tex.generateMipmaps = true;
  tex.needsUpdate = true;
  return tex;
}

function channelMaterial(map, channelIndex, fallback, side) {
  const channel = new THREE.Vector4(0, 0, 0, 0).setComponent(channelIndex, 1);
  return new THREE.ShaderMaterial({
    uniforms: { map: { value: map || null }, channel: { value: channel }, fallback: { value: fallback },
                hasMap: { value: !!map } },
    vertexShader: CHANNEL_VERT, fragmentShader: CHANNEL_FRAG, side,
    polygonOffset: true, polygonOffsetFactor: 1, polygonOffsetUnits: 1,
  });
}

/** Viewer bound to `container` (a sized element); returns the control object. */
export function createViewer(container, { onStats } = {}) {
  const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
  renderer.toneMapping = THREE.NeutralToneMapping;
  renderer.outputColorSpace = THREE.SRGBColorSpace;
  renderer.domElement.style.display = "block";
  renderer.domElement.style.width = "100%";
  renderer.domElement.style.height = "100%";
  container.appendChild(renderer.domElement);

  const scene = new THREE.Scene();
  scene.background = new THREE.Color(BACKGROUND);
  const pmrem = new THREE.PMREMGenerator(renderer);
  const envTarget = pmrem.fromScene(new RoomEnvironment(), 0.04);
  scene.environment = envTarget.texture;

  const camera = new THREE.PerspectiveCamera(35, 1, 0.001, 100);
  const controls = new OrbitControls(camera, renderer.domElement);
  const root = new THREE.Group();
  scene.add(root);
  const checker = checkerTexture();
  const state = { mode: "pbr", wireframe: false, meshes: [], faces: 0, vertices: 0, home: null };
  let pending = false;

  function render() {
    pending = false;
    renderer.render(scene, camera);
  }
  function requestRender() {
    if (!pending) { pending = true; requestAnimationFrame(render); }
  }
  controls.addEventListener("change", requestRender);

  function resize() {
    const w = Math.max(container.clientWidth, 16), h = Math.max(container.clientHeight, 16);
    renderer.setSize(w, h, false);
    camera.aspect = w / h;
    camera.updateProjectionMatrix();
    requestRender();
  }
  const observer = new ResizeObserver(resize);
  observer.observe(container);

  function displayMaterial(entry) {
    const m = entry.original, side = m.side;
    switch (state.mode) {
      case "basecolor":
        return new THREE.MeshBasicMaterial({ map: m.map || null, color: m.color, side,
          polygonOffset: true, polygonOffsetFactor: 1, polygonOffsetUnits: 1 });
      case "roughness": return channelMaterial(m.roughnessMap, 1, m.roughness ?? 1, side);
      case "metallic": return channelMaterial(m.metalnessMap, 2, m.metalness ?? 0, side);
      case "alpha": return channelMaterial(m.map, 3, m.opacity ?? 1, side);
      case "normals": return new THREE.MeshNormalMaterial({ side, polygonOffset: true, polygonOffsetFactor: 1,
        polygonOffsetUnits: 1 });
      case "uv": return new THREE.MeshStandardMaterial({ map: checker, roughness: 0.7, metalness: 0, side,
        polygonOffset: true, polygonOffsetFactor: 1, polygonOffsetUnits: 1 });
      default: return m;
    }
  }

  function applyMode() {
    for (const entry of state.meshes) {
      if (entry.mesh.material !== entry.original) entry.mesh.material.dispose();
      entry.mesh.material = displayMaterial(entry);
      entry.wire.visible = state.wireframe;
    }
    requestRender();
  }

  function frame() {
    const box = new THREE.Box3().setFromObject(root);
    if (box.isEmpty()) return;
    const center = box.getCenter(new THREE.Vector3());
    const radius = Math.max(box.getSize(new THREE.Vector3()).length() / 2, 1e-3);
    const dist = radius / Math.sin(THREE.MathUtils.degToRad(camera.fov / 2)) * 1.05;
    const dir = new THREE.Vector3(0.8, 0.55, 1.0).normalize();
    camera.position.copy(center).addScaledVector(dir, dist);
    camera.near = dist / 100;
    camera.far = dist * 100;
    camera.updateProjectionMatrix();
    controls.target.copy(center);
    controls.update();
    requestRender();
  }

  function clear() {
    for (const entry of state.meshes) {
      if (entry.mesh.material !== entry.original) entry.mesh.material.dispose();
      entry.wire.geometry.dispose();
    }
    root.traverse((o) => {
      if (o.isMesh) {
        o.geometry.dispose();
        for (const mat of [].concat(o.material)) {
          for (const key of ["map", "roughnessMap", "metalnessMap", "normalMap"]) mat[key]?.dispose?.();
          mat.dispose();
        }
      }
    });
    root.clear();
    state.meshes = [];
  }

  async function load(url) {
    const gltf = await new GLTFLoader().loadAsync(url);
    clear();
    root.add(gltf.scene);
    let faces = 0, vertices = 0;
    gltf.scene.traverse((o) => {
      if (!o.isMesh) return;
      const g = o.geometry;
      faces += (g.index ? g.index.count : g.attributes.position.count) / 3;
      vertices += g.attributes.position.count;
      const original = Array.isArray(o.material) ? o.material[0] : o.material;
      original.polygonOffset = true;
      original.polygonOffsetFactor = 1;
      original.polygonOffsetUnits = 1;
      const wire = new THREE.LineSegments(new THREE.WireframeGeometry(g),
        new THREE.LineBasicMaterial({ color: WIRE_COLOR, transparent: true, opacity: 0.55 }));
      wire.visible = state.wireframe;
      o.add(wire);
      state.meshes.push({ mesh: o, original, wire });
    });
    state.faces = faces;
    state.vertices = vertices;
    applyMode();
    frame();
    onStats?.({ faces, vertices });
    return { faces, vertices };
  }

  return {
    canvas: renderer.domElement,
    load,
    setMode(mode) {
      if (!MODES.some(([m]) => m === mode)) throw new Error(`unknown view mode ${mode}`);
      state.mode = mode;
      applyMode();
    },
    get mode() { return state.mode; },
    setWireframe(on) { state.wireframe = !!on; applyMode(); },
    get wireframe() { return state.wireframe; },
    resetView: frame,
    get stats() { return { faces: state.faces, vertices: state.vertices }; },
    renderNow: render,
    resize,
    dispose() {
      observer.disconnect();
      controls.dispose();
      clear();
      checker.dispose();
      envTarget.dispose();
      pmrem.dispose();
      renderer.dispose();
      renderer.domElement.remove();
    },
  };
}

/** Full widget: viewer + toolbar (modes, wireframe, reset, download) + counts, inside `container`. */
export function createPreview(container) {
  container.classList.add("trellis2-preview");
  const style = document.createElement("style");
  style.textContent = `
    .trellis2-preview { display: flex; flex-direction: column; gap: 4px; font: 12px sans-serif; color: #ddd;
      box-sizing: border-box; overflow: hidden; }
    .trellis2-preview .t2-view { position: relative; flex: 1 1 auto; min-height: 120px; border-radius: 4px;
      overflow: hidden; background: #30343a; }
    .trellis2-preview .t2-stats { position: absolute; left: 6px; bottom: 4px; pointer-events: none;
      text-shadow: 0 0 3px #000; }
    .trellis2-preview .t2-bar { display: flex; flex-wrap: wrap; gap: 3px; flex: 0 0 auto; }
    .trellis2-preview button, .trellis2-preview a.t2-btn { background: #3a3f46; color: #ddd; border: 1px solid #555;
      border-radius: 3px; padding: 2px 6px; cursor: pointer; font: inherit; text-decoration: none; }
    .trellis2-preview button.on { background: #4a78c2; border-color: #6a98e2; color: #fff; }
    .trellis2-preview select { background: #3a3f46; color: #ddd; border: 1px solid #555; font: inherit; }`;
  container.appendChild(style);
  const view = document.createElement("div");
  view.className = "t2-view";
  const stats = document.createElement("div");
  stats.className = "t2-stats";
  stats.textContent = "no model yet: run the workflow";
  view.appendChild(stats);
  const bar = document.createElement("div");
  bar.className = "t2-bar";
  container.append(bar, view);  // toolbar first: a short node shrinks the picture, never hides the buttons

  const viewer = createViewer(view, {
    onStats: ({ faces, vertices }) => {
      stats.textContent = `${faces.toLocaleString()} faces · ${vertices.toLocaleString()} vertices`;
    },
  });
  view.insertBefore(viewer.canvas, stats);
  const buttons = {};
  const mkButton = (key, label, title, onClick) => {
    const b = document.createElement("button");
    b.textContent = label;
    b.title = title;
    b.dataset.key = key;
    b.addEventListener("click", onClick);
    bar.appendChild(b);
    buttons[key] = b;
    return b;
  };
  const refresh = () => {
    for (const [m] of MODES) buttons[m].classList.toggle("on", viewer.mode === m);
    buttons.wireframe.classList.toggle("on", viewer.wireframe);
  };
  for (const [mode, label, title] of MODES) {
    mkButton(mode, label, title, () => { viewer.setMode(viewer.mode === mode ? "pbr" : mode); refresh(); });
  }
  mkButton("wireframe", "Wireframe", "Show the triangle edges", () => { viewer.setWireframe(!viewer.wireframe);
    refresh(); });
  mkButton("reset", "Reset view", "Frame the whole model again", () => viewer.resetView());
  const download = document.createElement("a");
  download.className = "t2-btn";
  download.textContent = "Download";
  download.title = "Download the GLB file";
  bar.appendChild(download);
  const picker = document.createElement("select");
  picker.style.display = "none";
  bar.appendChild(picker);
  refresh();

  let files = [];
  async function show(index) {
    const f = files[index];
    if (!f) return;
    download.href = f.url;
    download.download = f.filename;
    stats.textContent = "loading…";
    try {
      await viewer.load(f.url);
    } catch (err) {
      stats.textContent = `cannot load ${f.filename}: ${err?.message || err}`;
      throw err;
    }
  }
  return {
    viewer,
    buttons,
    /** files: [{url, filename}] — shows the first, a picker chooses among several. */
    async setFiles(list) {
      files = list;
      picker.replaceChildren(...list.map((f, i) => new Option(f.filename, String(i))));
      picker.style.display = list.length > 1 ? "" : "none";
      picker.onchange = () => show(Number(picker.value));
      await show(0);
    },
    dispose: () => viewer.dispose(),
  };
}
