"""Write a random-weight checkpoint that ComfyUI loads as SDXL, small enough to sample on a CPU.

Run it with ComfyUI's Python: ``python make_tiny_sdxl.py COMFYUI_DIR OUT.safetensors``. ComfyUI recognises SDXL
from the UNet's key layout (model_channels 320, transformer depths [0, 0, 2, 2, 10, 10], context 2048, ADM 2816);
the channel multipliers are read from the weight shapes, so using [1, 1, 1] instead of [1, 2, 4] keeps it SDXL while
cutting the UNet to ~0.2 B parameters. The two text encoders (CLIP-L, OpenCLIP bigG) and the VAE keep their real
sizes (ComfyUI builds them from fixed configs). The model is built with ComfyUI's own classes and saved in the
original checkpoint layout (``model.diffusion_model.*``, ``conditioner.embedders.*``, ``first_stage_model.*``),
in float16: ~2 GB. The weights are random (normal, std 0.02; norms 1, biases 0): the pictures are noise.
"""
from __future__ import annotations

import os
import sys


def main(comfy_dir: str, out: str) -> None:
    sys.path.insert(0, comfy_dir)
    os.chdir(comfy_dir)
    from comfy.cli_args import args

    args.cpu = True
    import torch

    import comfy.ldm.models.autoencoder as autoencoder
    import comfy.model_detection
    import comfy.sd
    import comfy.supported_models as supported
    import comfy.utils

    unet_config = {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
        "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
        "channel_mult": [1, 1, 1], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
        "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }
    config = supported.SDXL(unet_config)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    clip = comfy.sd.CLIP(config.clip_target())
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    vae_model = autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=4)

    gen = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def randomize(module: torch.nn.Module) -> None:
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)  # normalisation gains (norm*.weight, ln_*.weight, …)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)

    randomize(model.diffusion_model)
    randomize(clip.cond_stage_model)
    randomize(vae_model)
    # keywords: ComfyUI 0.33 made the UNet state dict the first positional parameter
    sd = model.state_dict_for_saving(unet_state_dict=model.diffusion_model.state_dict(), clip_state_dict=clip.get_sd(),
                                     vae_state_dict=vae_model.state_dict())
    sd = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    detected = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    if type(detected).__name__ != "SDXL":
        raise SystemExit(f"ComfyUI would not load this as SDXL (detected {type(detected).__name__})")
    tmp = out + ".tmp"
    comfy.utils.save_torch_file(sd, tmp, metadata={"note": "random tiny SDXL-format test checkpoint"})
    os.replace(tmp, out)
    print(f"wrote {out}: {sum(v.numel() for v in sd.values()) / 1e9:.2f} B parameters, detected as SDXL")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2]))
