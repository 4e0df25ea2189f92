"""The ComfyUI core nodes our workflows use: their input/output schema (ComfyUI 0.33.0) and CPU stand-ins.

Schemas follow the core ``INPUT_TYPES`` / ``RETURN_TYPES`` (names, order, types, bounds), so the workflow tests can
check links and widget values without ComfyUI. The stand-ins let the graphs execute in-process: SDXL is replaced
by a fixed picture (an asset image composited on white), LoadImage reads the test's input folder exactly like
ComfyUI does (``MASK = 1 − alpha``, a 64×64 zero mask when there is no alpha). The real-ComfyUI test
(``tests/comfyui``) runs the same workflows against the real nodes; ``test_core_table.py`` checks these schemas
against 0.33.0's source (since 0.33 Preview Image passes its images on as an output; 0.3.64 had none).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["CORE_SCHEMAS", "CORE_OUTPUTS", "CORE_OUTPUT_NODES", "SAMPLERS", "SCHEDULERS", "make_core_stubs"]

_MAX = 0xFFFFFFFFFFFFFFFF
PREVIEW3D_TYPES = "STRING,FILE_3D_GLB,FILE_3D_GLTF,FILE_3D_FBX,FILE_3D_OBJ,FILE_3D_STL,FILE_3D_USDZ,FILE_3D"
SAMPLERS = ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
            "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
            "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
            "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
            "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
            "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim",
            "uni_pc", "uni_pc_bh2"]
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
              "linear_quadratic", "kl_optimal"]

CORE_SCHEMAS: dict[str, dict[str, Any]] = {
    "LoadImage": {"required": {"image": (["example.png"], {"image_upload": True})}},
    "CheckpointLoaderSimple": {"required": {"ckpt_name": (["sd_xl_base_1.0.safetensors"],)}},
    "CLIPTextEncode": {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": ""}),
                                    "clip": ("CLIP",)}},
    "EmptyLatentImage": {"required": {"width": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
                                      "height": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
                                      "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}},
    "KSampler": {"required": {
        "model": ("MODEL",),
        "seed": ("INT", {"default": 0, "min": 0, "max": _MAX, "control_after_generate": True}),
        "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
        "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1}),
        "sampler_name": (SAMPLERS,), "scheduler": (SCHEDULERS,),
        "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "latent_image": ("LATENT",),
        "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})}},
    "VAEDecode": {"required": {"samples": ("LATENT",), "vae": ("VAE",)}},
    "PreviewImage": {"required": {"images": ("IMAGE",)}},
    # SaveGLB: the frontend adds its 3D viewer widget 'image' after filename_prefix (the backend ignores it)
    "SaveGLB": {"required": {"mesh": ("MESH",), "filename_prefix": ("STRING", {"default": "mesh/ComfyUI"})},
                "optional": {"image": ("STRING", {"default": ""})}},
    # Preview3D (ComfyUI 0.33.0, V3): model_file takes a path string or a 3D file object; the frontend adds its
    # viewer widget 'image' after it (the backend ignores it)
    "Preview3D": {"required": {"model_file": (PREVIEW3D_TYPES, {"default": "", "widgetType": "STRING"})},
                  "optional": {"camera_info": ("LOAD3D_CAMERA", {"advanced": True}),
                               "bg_image": ("IMAGE", {"advanced": True}), "image": ("STRING", {"default": ""})}},
    "FillHoles": {"required": {"mesh": ("MESH",),
                               "max_perimeter": ("FLOAT", {"default": 0.03, "min": 0.0, "step": 0.0001}),
                               "weld_epsilon_rel": ("FLOAT", {"default": 1e-5, "min": 0.0, "step": 1e-6}),
                               "max_vertices": ("INT", {"default": 16, "min": 3, "max": 1024}),
                               "fill_chains": ("BOOLEAN", {"default": False})}},
}
CORE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "LoadImage": ("IMAGE", "MASK"), "CheckpointLoaderSimple": ("MODEL", "CLIP", "VAE"),
    "CLIPTextEncode": ("CONDITIONING",), "EmptyLatentImage": ("LATENT",), "KSampler": ("LATENT",),
    "VAEDecode": ("IMAGE",), "PreviewImage": ("IMAGE",), "SaveGLB": (), "Preview3D": (), "FillHoles": ("MESH",),
}
CORE_OUTPUT_NODES = {"PreviewImage", "SaveGLB", "Preview3D"}


def _stub(name: str, function) -> type:
    return type(name, (), {"FUNCTION": "run", "OUTPUT_NODE": name in CORE_OUTPUT_NODES,
                           "INPUT_TYPES": classmethod(lambda cls: CORE_SCHEMAS[name]),
                           "RETURN_TYPES": CORE_OUTPUTS[name], "run": lambda self, **kw: function(**kw)})


def make_core_stubs(input_dir: Path, sdxl_picture: Image.Image, calls: dict[str, list]) -> dict[str, type]:
    """CPU stand-ins keyed by core node type; ``calls`` records each call's inputs per type."""

    def record(kind: str, **kw: Any) -> None:
        calls.setdefault(kind, []).append(kw)

    def load_image(image: str) -> tuple:
        record("LoadImage", image=image)
        img = Image.open(input_dir / image)
        rgb = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]
        if "A" in img.getbands():
            mask = 1.0 - torch.from_numpy(np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0)[None]
        else:
            mask = torch.zeros(1, 64, 64)
        return rgb, mask

    def vae_decode(samples: Any, vae: Any) -> tuple:
        record("VAEDecode")
        return (torch.from_numpy(np.asarray(sdxl_picture.convert("RGB"), dtype=np.float32) / 255.0)[None],)

    def save_glb(mesh: Any, filename_prefix: str, image: str = "") -> dict:
        record("SaveGLB", vertices=tuple(mesh.vertices.shape), faces=tuple(mesh.faces.shape))
        return {"ui": {"3d": []}, "result": ()}

    def preview_3d(model_file: Any, image: str = "", **_: Any) -> dict:
        """Like core Preview3D with a path: the file must lie in the output folder (the frontend loads it there)."""
        record("Preview3D", model_file=model_file, exists=(input_dir.parent / "output" / str(model_file)).is_file())
        return {"ui": {"result": [model_file, None, None]}, "result": ()}
    def fill_holes(mesh: Any, **settings: Any) -> tuple:  # our core_mesh is hole-filled already: passes through
        record("FillHoles", counts=getattr(mesh, "vertex_counts", None), **settings)
        return (mesh,)

    def preview(images: Any) -> dict:
        record("PreviewImage", shape=tuple(images.shape))
        return {"ui": {"images": []}, "result": ()}

    functions = {
        "LoadImage": load_image,
        "FillHoles": fill_holes,
        "CheckpointLoaderSimple": lambda ckpt_name: (record("Checkpoint", name=ckpt_name) or "MODEL", "CLIP", "VAE"),
        "CLIPTextEncode": lambda text, clip: (("CONDITIONING", text),),
        "EmptyLatentImage": lambda width, height, batch_size: ({"samples": torch.zeros(batch_size, 4, height // 8,
                                                                                        width // 8)},),
        "KSampler": lambda **kw: (kw["latent_image"],),
        "VAEDecode": vae_decode,
        "PreviewImage": preview,
        "SaveGLB": save_glb,
        "Preview3D": preview_3d,
    }
    return {name: _stub(name, fn) for name, fn in functions.items()}
