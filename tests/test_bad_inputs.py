"""Adversarial inputs to the library and the CLI: every user mistake is one clear error, raised before any model loads.

The ``no_loading`` fixture replaces everything that loads a model (pipeline folder resolution included) with a
function that fails the test, so an error that comes "too late" fails here; ``Reached`` marks the point where a
valid request would start loading.
"""
from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

import trellis2_core.api as api
import trellis2_core.arguments as arguments
import trellis2_core.loading.loader as loader
import trellis2_core.optional as optional
import trellis2_core.pipeline.pipeline as pipeline_mod
from trellis2_core import image_to_glb
from trellis2_core.__main__ import main
from trellis2_core.errors import BackendError, InputError
from trellis2_core.postprocess import ExportConfig


class Reached(BaseException):
    """Raised where the pipeline would start loading: everything before it passed (a BaseException, so that the
    CLI's catch-all for unexpected errors lets it through)."""


def _load_forbidden(*_a, **_k):
    raise AssertionError("a model or pipeline was loaded before the bad input was reported")


@pytest.fixture()
def no_loading(monkeypatch):
    """Fail the test if anything is loaded (models, DINOv3, matting, the pipeline folder)."""
    monkeypatch.setattr(pipeline_mod.Pipeline, "from_pretrained", classmethod(lambda *a, **k: _load_forbidden()))
    monkeypatch.setattr(loader, "load_model", _load_forbidden)
    monkeypatch.setattr(pipeline_mod, "load_image_cond_model", _load_forbidden)
    monkeypatch.setattr(api, "load_matting_model", _load_forbidden)


@pytest.fixture()
def reach(monkeypatch, no_loading):
    """Like ``no_loading``, but resolving the pipeline raises :class:`Reached` (the request was accepted)."""
    def reached(*_a, **_k):
        raise Reached()

    monkeypatch.setattr(pipeline_mod.Pipeline, "from_pretrained", classmethod(lambda *a, **k: reached()))


def _rgba(size: int = 64, box: int = 32) -> Image.Image:
    arr = np.zeros((size, size, 4), np.uint8)
    arr[..., :3] = 200
    lo = (size - box) // 2
    arr[lo:lo + box, lo:lo + box, 3] = 255
    return Image.fromarray(arr, "RGBA")


@pytest.fixture()
def good_png(tmp_path):
    path = tmp_path / "object.png"
    _rgba().save(path)
    return path


# ---------------------------------------------------------------------------------------------- library parameters
BAD_PARAMETERS = [
    ({"max_num_tokens": 0}, InputError, "max_num_tokens must be in 1..1000000, got 0"),
    ({"max_num_tokens": -5}, InputError, "max_num_tokens"),
    ({"max_num_tokens": 10 ** 12}, InputError, "max_num_tokens"),
    ({"max_num_tokens": 4096.0}, InputError, "max_num_tokens must be a whole number"),
    ({"steps": 0}, InputError, "steps must be in 1..500"),
    ({"steps": -3}, InputError, "steps"),
    ({"steps": 10 ** 9}, InputError, "steps"),
    ({"steps": 2.5}, InputError, "steps must be a whole number"),
    ({"steps": True}, InputError, "steps"),
    ({"guidance": float("nan")}, InputError, "guidance must be a finite number"),
    ({"guidance": float("inf")}, InputError, "guidance"),
    ({"guidance": -1.0}, InputError, r"guidance must be in \[0, 50\]"),
    ({"guidance": 1e30}, InputError, "guidance"),
    ({"guidance": "7.5"}, InputError, "guidance must be a number"),
    ({"seed": -1}, InputError, "seed must be in 0..18446744073709551615"),
    ({"seed": 2 ** 64}, InputError, "seed"),
    ({"seed": 4.2}, InputError, "seed must be a whole number"),
    ({"seed": "42"}, InputError, "seed"),
    ({"pipeline_type": "1024000_cascade"}, InputError, "largest cascade is '2048_cascade'"),
    ({"pipeline_type": "2176_cascade"}, InputError, "2048"),
    ({"pipeline_type": "1100_cascade"}, InputError, "1024 \\+ k·128"),
    ({"pipeline_type": "768"}, InputError, "pipeline_type: pipeline type '768' does not exist"),
    ({"pipeline_type": "huge"}, InputError, "unknown pipeline type"),
    ({"pipeline_type": 512}, InputError, "pipeline_type"),
    ({"samplers": {"texture": {"steps": 2}}}, InputError, "unknown sampler stage 'texture'"),
    ({"samplers": {"shape_slat": {"stepz": 3}}}, InputError, "unknown sampler parameter"),
    ({"samplers": {"shape_slat": {"steps": 0}}}, InputError, r"samplers\['shape_slat'\]\['steps'\]"),
    ({"samplers": {"tex_slat": {"rescale_t": 0}}}, InputError, "rescale_t"),
    ({"samplers": {"sparse_structure": {"guidance_rescale": 2}}}, InputError, "guidance_rescale"),
    ({"samplers": {"shape_slat": {"guidance_interval": (0.9, 0.1)}}}, InputError, "must not exceed end"),
    ({"samplers": {"shape_slat": {"guidance_interval": 0.5}}}, InputError, "guidance_interval"),
    ({"samplers": {"shape_slat": {"sigma_min": float("nan")}}}, InputError, "sigma_min"),
    ({"samplers": "fast"}, InputError, "samplers must be a dict"),
    ({"export": {"texture_size": 7}}, InputError, r"export\['texture_size'\]: texture_size"),
    ({"export": {"texture_size": 10 ** 6}}, InputError, "texture_size"),
    ({"export": {"target_faces": -1}}, InputError, r"export\['target_faces'\] must be in 0..16777216"),
    ({"export": {"target_faces": 2 ** 40}}, InputError, "target_faces"),
    ({"export": {"alpha_mode": "GLOW"}}, InputError, "alpha_mode"),
    ({"export": {"textures": 1024}}, InputError, "unknown export setting"),
    ({"export": 1024}, InputError, "export must be an ExportConfig or a dict"),
    ({"export": ExportConfig(target_faces=2 ** 30)}, InputError, "export.target_faces"),
    ({"device": "cuda:7"}, BackendError, "device 'cuda:7'"),
    ({"device": "gpu"}, InputError, "unknown device 'gpu'"),
    ({"device": 0}, InputError, "device must be a device name"),
    ({"dtype": "int8"}, InputError, "dtype must be None"),
    ({"dtype": torch.float64}, InputError, "dtype"),
    ({"background": "erase"}, InputError, "background must be one of"),
    ({"vram_preset": "huge"}, InputError, "vram_preset must be one of"),
    ({"offline": "yes"}, InputError, "offline must be True or False"),
    ({"fast": "fast"}, InputError, "fast must be a FastPathConfig"),
    ({"progress": object()}, InputError, "progress must have a step"),
    ({"matting_model": 3}, InputError, "matting_model must be"),
    ({"pipeline": ""}, InputError, "pipeline must be"),
    ({"pipeline": 3}, InputError, "pipeline must be"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_PARAMETERS, ids=lambda v: repr(v)[:40])
def test_bad_parameter_is_reported_before_loading(no_loading, tmp_path, kwargs, error, match, monkeypatch):
    if "cuda" in str(kwargs.get("device", "")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(error, match=match):
        image_to_glb(_rgba(), tmp_path / "out.glb", **kwargs)
    assert not (tmp_path / "out.glb").exists()


def test_missing_cuda_index_names_the_devices_there_are(no_loading, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(BackendError, match=r"device 'cuda:7': this machine has 2 CUDA device\(s\) \(cuda:0 .. cuda:1\)"):
        image_to_glb(_rgba(), tmp_path / "out.glb", device="cuda:7")


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_bad_models_dir(no_loading, tmp_path, kind):
    models = tmp_path / "models"
    if kind == "file":
        models.write_text("x")
    with pytest.raises(InputError, match="models_dir: .*(does not exist|is a file)"):
        image_to_glb(_rgba(), tmp_path / "out.glb", models_dir=models)


def test_export_may_be_a_dict_of_fields(reach, tmp_path):
    cfg = arguments.export_config({"texture_size": 512, "target_faces": 0, "alpha_mode": "BLEND"})
    assert cfg == ExportConfig(texture_size=512, target_faces=0, alpha_mode="BLEND")
    with pytest.raises(Reached):  # accepted: the run goes on to load the pipeline
        image_to_glb(_rgba(), tmp_path / "out.glb", export={"texture_size": 512}, pipeline_type="2048_cascade",
                     seed=2 ** 64 - 1, steps=500, guidance=50.0, max_num_tokens=1, dtype=torch.bfloat16)


def test_valid_extremes_pass_the_checks():
    from trellis2_core.params import check_run_options, parse_pipeline_type

    run = check_run_options(seed=0, steps=1, guidance=0.0, samplers={"tex_slat": {"guidance_interval": [0, 1]}},
                            max_num_tokens=1_000_000, pipeline_type="1024")
    assert run["samplers"] == {"tex_slat": {"guidance_interval": (0.0, 1.0)}}
    assert [parse_pipeline_type(f"{r}_cascade") for r in range(1024, 2049, 128)][-1] == (2048, True)


# ---------------------------------------------------------------------------------------------- images (library)
def _exif_rotated(path, orientation: int) -> Image.Image:
    """Save a 60x30 RGBA picture whose EXIF says 'rotate'; returns the picture as stored."""
    img = _rgba(60, 20).crop((0, 0, 60, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes())
    return img


def test_exif_orientation_is_applied_to_image_and_mask_files(tmp_path):
    stored = _exif_rotated(tmp_path / "phone.png", 6)  # 6: rotate 90° clockwise to view
    loaded = api.load_image(tmp_path / "phone.png")
    assert stored.size == (60, 30) and loaded.size == (30, 60)
    assert np.array_equal(np.asarray(loaded), np.asarray(stored.transpose(Image.Transpose.ROTATE_270)))
    assert 0x0112 not in loaded.getexif()
    _exif_rotated(tmp_path / "mask.png", 6)
    assert api.load_mask(tmp_path / "mask.png").size == (30, 60)
    assert api.load_image(stored) is stored  # a PIL image is used as given


@pytest.mark.parametrize("name, content, match", [
    ("missing.png", None, "does not exist"),
    ("garbage.png", b"not an image at all", "cannot read image"),
    ("empty.png", b"", "cannot read image"),
    ("truncated.png", "truncated", "cannot read image"),
    ("folder.png", "dir", "is a folder"),
])
def test_unreadable_image_files(no_loading, tmp_path, name, content, match):
    path = tmp_path / name
    if content == "truncated":
        buf = io.BytesIO()
        _rgba(256, 128).save(buf, format="PNG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        image_to_glb(path, tmp_path / "out.glb")


def test_decompression_bomb_is_refused(no_loading, tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGBA", (200, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 000 px is then far beyond twice the limit
    with pytest.raises(InputError, match="too large to open safely"):
        image_to_glb(path, tmp_path / "out.glb")


@pytest.mark.parametrize("image, match", [
    (Image.new("RGBA", (0, 0)), "empty"),
    (Image.new("RGBA", (0, 16)), "empty"),
    (Image.new("RGBA", (1, 1), (255, 255, 255, 255)), "too small"),
    (Image.new("RGBA", (1, 1), (255, 0, 0, 0)), "too small|empty foreground"),
    (_rgba(64, 2), "foreground too small"),
    (_rgba(64, 1), "foreground too small"),
    (Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "empty foreground"),
])
def test_empty_or_tiny_foreground_before_loading(no_loading, tmp_path, image, match):
    with pytest.raises(InputError, match=match):
        image_to_glb(image, tmp_path / "out.glb")


def test_masks_that_mark_nothing_or_do_not_fit(no_loading, tmp_path):
    rgb = Image.new("RGB", (64, 64), (90, 90, 90))
    with pytest.raises(InputError, match="empty foreground"):
        image_to_glb(rgb, tmp_path / "out.glb", mask=np.zeros((64, 64), np.float32))
    with pytest.raises(InputError, match="mask"):
        image_to_glb(rgb, tmp_path / "out.glb", mask=np.ones((10, 10), np.float32))
    Image.new("L", (64, 64), 0).save(tmp_path / "black.png")
    with pytest.raises(InputError, match="empty foreground"):
        image_to_glb(rgb, tmp_path / "out.glb", mask=tmp_path / "black.png")
    with pytest.raises(InputError, match="mask file .* does not exist"):
        image_to_glb(rgb, tmp_path / "out.glb", mask=tmp_path / "nope.png")
    with pytest.raises(InputError, match="a mask was given together with background='none'"):
        image_to_glb(rgb, tmp_path / "out.glb", mask=np.ones((64, 64)), background="none")


def _mode_image(mode: str) -> Image.Image:
    base = _rgba(64, 32)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
        assert img.mode == "I;16"
        return img
    if mode == "F":
        return Image.fromarray(np.asarray(base.convert("L")).astype(np.float32) / 255.0, "F")
    if mode == "P+transparency":
        p = base.convert("RGB").quantize(8)
        alpha = np.asarray(base.getchannel("A"))
        arr = np.asarray(p).copy()
        arr[alpha == 0] = 7
        out = Image.fromarray(arr, "P")
        out.putpalette(p.getpalette())
        out.info["transparency"] = 7
        return out
    return base.convert(mode)


@pytest.mark.parametrize("mode, background", [
    ("RGBA", "auto"), ("LA", "keep"), ("P+transparency", "keep"), ("CMYK", "auto"), ("I;16", "auto"),
    ("F", "none"), ("I;16", "none"), ("1", "auto"), ("RGB", "model"),
])
def test_odd_image_modes_are_accepted(reach, tmp_path, mode, background):
    img = _mode_image(mode)
    path = tmp_path / ("in.tif" if mode in ("F", "CMYK") else "in.png")
    img.save(path)
    with pytest.raises(Reached):
        image_to_glb(path, tmp_path / "out.glb", background=background)


def test_modes_without_alpha_and_keep_say_what_to_do(no_loading, tmp_path):
    with pytest.raises(InputError, match="needs an image with an alpha channel"):
        image_to_glb(_mode_image("CMYK"), tmp_path / "out.glb", background="keep")
    nan = Image.fromarray(np.full((16, 16), math.nan, np.float32), "F")
    with pytest.raises(InputError, match="NaN"):
        image_to_glb(nan, tmp_path / "out.glb", background="none")


# ---------------------------------------------------------------------------------------------- optional packages
def test_missing_too_old_or_broken_packages_are_backend_errors(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "trimesh", None)  # import trimesh -> ImportError
    with pytest.raises(BackendError) as err:
        optional.require("trimesh", "GLB export")
    msg = str(err.value)
    assert "GLB export needs trimesh>=4.5,<6" in msg and "fails to import" in msg and "pip install" in msg
    monkeypatch.setattr(optional, "installed_version", lambda dist: "4.40.0" if dist == "transformers" else None)
    with pytest.raises(BackendError, match=r"transformers>=4.56,<6, but transformers 4.40.0 is installed, which is "
                                           r"too old: run .*pip install 'transformers>=4.56,<6'"):
        optional.require("transformers", "DINOv3 conditioning")
    monkeypatch.setattr(optional, "installed_version", lambda dist: None)
    monkeypatch.setitem(__import__("sys").modules, "fast_simplification", None)
    with pytest.raises(BackendError, match="fast-simplification is not installed"):
        optional.require("fast_simplification", "decimation")

    def broken(name):
        raise RuntimeError("compiled for another numpy")

    monkeypatch.setattr(optional.importlib, "import_module", broken)
    with pytest.raises(BackendError, match="importing it fails with RuntimeError: compiled for another numpy"):
        optional.require("huggingface_hub", "downloads")


def test_missing_export_package_fails_before_loading(no_loading, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "trimesh", None)
    with pytest.raises(BackendError, match="GLB export needs trimesh"):
        image_to_glb(_rgba(), tmp_path / "out.glb")


def test_dinov3_without_transformers(monkeypatch):
    from trellis2_core.models import dinov3

    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    with pytest.raises(BackendError, match="DINOv3 conditioning needs transformers>=4.56,<6"):
        dinov3._transformers()


# ---------------------------------------------------------------------------------------------- CLI
def _cli(capsys, *args: str) -> tuple[int, str]:
    rc = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


CLI_CASES = [
    (["--max-tokens", "0"], "--max-tokens must be in 1..1000000"),
    (["--steps", "0"], "--steps must be in 1..500"),
    (["--ss-steps", "-2"], "--ss-steps"),
    (["--tex-guidance", "nan"], "--tex-guidance must be a finite number"),
    (["--guidance", "-3"], "--guidance must be in"),
    (["--guidance", "1e300"], "--guidance"),
    (["--seed", "-1"], "--seed must be in 0..18446744073709551615"),
    (["--seed", str(2 ** 64)], "--seed"),
    (["--type", "1024000_cascade"], "--type: .*largest cascade is '2048_cascade'"),
    (["--type", "cascade"], "--type: unknown pipeline type"),
    (["--device", "cuda:7"], "--device 'cuda:7'"),
    (["--device", "tpu"], "--device: unknown device"),
    (["--models-dir", "/no/such/folder"], "--models-dir: folder '/no/such/folder' does not exist"),
    (["--faces", "-1"], "--faces must be in 0..16777216"),
    (["--faces", str(10 ** 15)], "--faces"),
    (["--texture-size", "100000"], "--texture-size: texture_size"),
    (["--texture-size", "0"], "--texture-size"),
]


@pytest.mark.parametrize("extra, match", CLI_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_cli_bad_options_exit_2_before_loading(no_loading, good_png, tmp_path, capsys, monkeypatch, extra, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, err = _cli(capsys, str(good_png), "-o", str(tmp_path / "o.glb"), "-q", *extra)
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert __import__("re").search(match, lines[0]), lines[0]


@pytest.mark.parametrize("image, match", [
    ("missing.png", "IMAGE file .* does not exist"),
    ("garbage.png", "cannot read IMAGE"),
    ("folder", "IMAGE .* is a folder"),
    ("dot.png", "foreground too small"),
])
def test_cli_bad_image_files_exit_2(reach, tmp_path, capsys, image, match):
    path = tmp_path / image
    if image == "garbage.png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif image == "folder":
        path.mkdir()
    elif image == "dot.png":
        _rgba(64, 1).save(path)
    rc, err = _cli(capsys, str(path), "-o", str(tmp_path / "o.glb"), "-q")
    assert rc == 2 and __import__("re").search(match, err), err


def test_cli_bad_mask_and_output_exit_2(no_loading, good_png, tmp_path, capsys):
    rc, err = _cli(capsys, str(good_png), "-o", str(tmp_path / "o.glb"), "-q", "--mask", str(tmp_path / "m.png"))
    assert rc == 2 and "--mask file" in err
    (tmp_path / "plain").write_text("a file, not a folder")
    rc, err = _cli(capsys, str(good_png), "-o", str(tmp_path / "plain" / "o.glb"), "-q")
    assert rc == 2 and "error:" in err and "plain" in err and "Traceback" not in err, err
    assert (tmp_path / "plain").read_text() == "a file, not a folder"


@pytest.mark.parametrize("raised, status, match", [
    (OSError(28, "No space left on device"), 2, "error: OSError: .*No space left"),
    (KeyError("alpha"), 2, "error: unexpected KeyError: 'alpha' \\(run with -v for the traceback\\)"),
    (ZeroDivisionError("division by zero"), 2, "unexpected ZeroDivisionError"),
])
def test_cli_unexpected_errors_are_one_line(good_png, tmp_path, capsys, monkeypatch, raised, status, match):
    def fail(*_a, **_k):
        raise raised

    monkeypatch.setattr(api, "image_to_glb", fail)
    rc, err = _cli(capsys, str(good_png), "-o", str(tmp_path / "o.glb"), "-q")
    assert rc == status and __import__("re").search(match, err), err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


def test_cli_verbose_shows_the_traceback(good_png, tmp_path, capsys, monkeypatch):
    def fail(*_a, **_k):
        raise KeyError("alpha")

    monkeypatch.setattr(api, "image_to_glb", fail)
    rc = main([str(good_png), "-o", str(tmp_path / "o.glb"), "-q", "-v"])
    assert rc == 2 and "Traceback" in capsys.readouterr().err


def test_cli_accepts_valid_extremes_up_to_loading(reach, good_png, tmp_path, capsys):
    with pytest.raises(Reached):
        main([str(good_png), "-o", str(tmp_path / "o.glb"), "-q", "--type", "2048_cascade", "--seed",
              str(2 ** 64 - 1), "--max-tokens", "1", "--faces", "0", "--texture-size", "256", "--steps", "500",
              "--guidance", "0", "--dtype", "bfloat16"])


# ---------------------------------------------------------------------------------------------- logging
def test_library_warnings_with_their_own_handler_are_printed_once(monkeypatch):
    from trellis2_core.logs import dedupe_root_handlers

    root, hub = logging.getLogger(), logging.getLogger("huggingface_hub")
    ours, theirs = io.StringIO(), io.StringIO()
    root_handler, hub_handler = logging.StreamHandler(ours), logging.StreamHandler(theirs)
    monkeypatch.setattr(root, "handlers", [root_handler])
    monkeypatch.setattr(hub, "handlers", [hub_handler])  # what huggingface_hub installs on import
    monkeypatch.setattr(hub, "propagate", True)
    logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
    assert ours.getvalue().count("Retrying") == 1 and theirs.getvalue().count("Retrying") == 1  # the bug: twice
    assert dedupe_root_handlers() == 1 and dedupe_root_handlers() == 0
    logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 2s [Retry 2/5].")
    logging.getLogger("trellis2_core.api").warning("our own line")
    assert "Retry 2/5" not in ours.getvalue() and theirs.getvalue().count("Retry 2/5") == 1
    assert "our own line" in ours.getvalue()
