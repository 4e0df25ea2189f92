"""``python -m trellis2_core IMAGE -o OUT.glb``: options, progress bars, exit codes and messages."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.tools.glb_checks import REPO_ROOT, asset_images, assert_valid_glb, require_tiny_pipeline
from tests.tools.matting_fixture import build_tiny_matting
from trellis2_core.__main__ import _stage_overrides, build_parser, main


def _image():
    images = asset_images()
    if not images:
        pytest.skip("shared/assets/images not found")
    return images[0]


def _fast(tiny, *extra: str) -> list[str]:
    return ["--pipeline", str(tiny), "--type", "512", "--steps", "2", "--texture-size", "256", "--faces", "5000",
            "--offline", *extra]


def test_cli_writes_a_valid_glb_with_progress_bars(tmp_path, capsys):
    tiny = require_tiny_pipeline()
    out = tmp_path / "cli.glb"
    rc = main([str(_image()), "-o", str(out), *_fast(tiny), "--seed", "7", "--texture-format", "png"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert out.is_file() and str(out) in captured.out and "faces" in captured.out
    for stage in ("condition", "sparse_structure", "shape", "tex", "decode", "export"):
        assert f"{stage}:" in captured.err  # one tqdm bar per stage
    assert "2/2" in captured.err  # per-step bars of the sampler stages
    assert_valid_glb(out, 256)


def test_cli_background_removal_with_a_local_model(tmp_path, capsys):
    from PIL import Image

    tiny = require_tiny_pipeline()
    folder = build_tiny_matting(tmp_path / "TinyMatting", (255, 255, 255))
    with Image.open(_image()) as src:
        rgba = src.convert("RGBA")
    photo = tmp_path / "photo.png"
    Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB").save(photo)
    out = tmp_path / "matted.glb"
    rc = main([str(photo), "-o", str(out), *_fast(tiny), "--background", "model", "--rembg-model", str(folder),
               "-q", "--steps", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert out.is_file() and captured.err.strip() == ""  # --quiet: no bars, no info logs


def _run_cli(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "trellis2_core", *args], capture_output=True, text=True,
                          cwd=str(tmp_path), env=env, timeout=300)


def test_cli_missing_weights_is_a_clear_message_with_exit_code_2(tmp_path):
    image = _image()
    proc = _run_cli([str(image), "-o", str(tmp_path / "o.glb"), "--pipeline", str(tmp_path / "no-such-folder")],
                    tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert any(line.startswith("error: cannot find the TRELLIS.2 pipeline") for line in proc.stderr.splitlines())
    assert "no-such-folder" in proc.stderr and "Where to put the weights" in proc.stderr
    # the default Hugging Face id, offline with an empty cache
    proc = _run_cli([str(image), "-o", str(tmp_path / "o.glb"), "--offline"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "microsoft/TRELLIS.2-4B" in proc.stderr
    assert not (tmp_path / "o.glb").exists()


def test_cli_bad_inputs_exit_2(tmp_path, capsys):
    tiny = require_tiny_pipeline()
    assert main([str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.glb"), *_fast(tiny)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(_image()), "-o", str(tmp_path / "o.obj"), *_fast(tiny)]) == 2  # missing folders are created
    assert "must end in '.glb'" in capsys.readouterr().err
    assert main([str(_image()), "-o", str(tmp_path / "o.glb"), *_fast(tiny), "--texture-size", "7"]) == 2
    assert "texture_size" in capsys.readouterr().err
    assert main([str(_image()), "-o", str(tmp_path / "o.glb"), *_fast(tiny), "--type", "777"]) == 2
    assert "pipeline type" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(_image())])  # -o is required
    assert exc.value.code == 2


def test_cli_options_map_to_sampler_overrides():
    args = build_parser().parse_args(["in.png", "-o", "o.glb", "--ss-steps", "3", "--tex-guidance", "2.5",
                                      "--shape-steps", "8", "--shape-guidance", "5"])
    assert _stage_overrides(args) == {"sparse_structure": {"steps": 3},
                                      "shape_slat": {"steps": 8, "guidance_strength": 5.0},
                                      "tex_slat": {"guidance_strength": 2.5}}
    assert args.pipeline == "microsoft/TRELLIS.2-4B" and args.seed == 42 and args.device == "auto"
    assert args.faces == 500_000 and args.texture_size == 2048 and args.background == "auto"


def test_cli_remesh_flag_writes_a_single_sided_remeshed_glb(tmp_path, capsys):
    import json
    import struct

    assert build_parser().parse_args(["in.png", "-o", "o.glb"]).remesh is False  # default: official branch B
    tiny = require_tiny_pipeline()
    out = tmp_path / "remeshed.glb"
    rc = main([str(_image()), "-o", str(out), *_fast(tiny), "--remesh", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert_valid_glb(out, 256)
    raw = out.read_bytes()
    gltf = json.loads(raw[20:20 + struct.unpack_from("<I", raw, 12)[0]])
    assert gltf["materials"][0].get("doubleSided", False) is False  # §9.6: doubleSided = not remesh


def test_cli_help_runs():
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


def test_cli_checks_options_before_looking_for_the_pipeline(tmp_path):
    """A real process: a bad option is reported (exit 2, one line, no traceback) before the pipeline is resolved,
    even when the pipeline does not exist either."""
    proc = _run_cli([str(_image()), "-o", str(tmp_path / "o.glb"), "--pipeline", str(tmp_path / "nothing"),
                     "--max-tokens", "0"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: --max-tokens must be in 1..1000000, got 0; token cap of the "
                                                "1536/2048 cascades (official 49152; lower it when out of memory)"]
