"""``python -m trellis2_core batch``: dispatch beside the single-image command, options, messages, exit codes."""
from __future__ import annotations

import pytest

from tests.batch.conftest import CLI_FAST
from trellis2_core.__main__ import build_parser, main
from trellis2_core.cli_batch import build_parser as batch_parser


def test_rerun_through_the_cli_skips_finished_images_and_reports_the_broken_one(local_batch, batch_inputs, capsys):
    _, out, _ = local_batch
    rc = main(["batch", str(batch_inputs), "-o", str(out), *CLI_FAST, "-q"])
    captured = capsys.readouterr()
    assert rc == 1  # one image failed
    assert "0 made, 4 already done, 1 failed" in captured.out
    assert "failed: broken.png: InputError: cannot read image" in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("case", ["missing_input", "glb_output", "bad_threads", "missing_weights"])
def test_mistakes_are_one_error_line_with_exit_2(tmp_path, batch_inputs, capsys, case):
    src, out, extra = str(batch_inputs), str(tmp_path / "out"), []
    if case == "missing_input":
        src = str(tmp_path / "nowhere")
    elif case == "glb_output":
        out = str(tmp_path / "model.glb")
    elif case == "bad_threads":
        extra = ["--threads", "0"]
    else:
        extra = ["--pipeline", str(tmp_path / "no-such-pipeline")]
    rc = main(["batch", src, "-o", out, *CLI_FAST, *extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err
    assert {"missing_input": "INPUT_DIR", "glb_output": "-o/--output", "bad_threads": "--threads",
            "missing_weights": "no-such-pipeline"}[case] in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written before the mistake was found


def test_single_image_command_is_unchanged_and_batch_shares_its_options():
    single = build_parser().parse_args(["in.png", "-o", "out.glb", "--mask", "m.png", "--seed", "3"])
    assert (single.image, single.output, single.mask, single.seed) == ("in.png", "out.glb", "m.png", 3)
    batch = batch_parser().parse_args(["in", "-o", "out", "--seed", "3", "--texture-size", "512", "--workers", "ray",
                                       "--ray-workers", "2", "--seed-per-image", "--no-resume"])
    assert (batch.input_dir, batch.output, batch.seed, batch.texture_size) == ("in", "out", 3, 512)
    assert batch.workers == "ray" and batch.ray_workers == 2 and batch.seed_per_image and not batch.resume
    single_flags = {a.dest for a in build_parser()._actions} - {"image", "mask"}
    batch_flags = {a.dest for a in batch_parser()._actions}
    assert single_flags <= batch_flags and "mask" not in batch_flags


def test_help_states_the_seed_policy(capsys):
    with pytest.raises(SystemExit) as done:
        main(["batch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0
    assert "every image gets --seed" in text and "--seed-per-image" in text and "manifest.json" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "batch: a folder of images" in " ".join(capsys.readouterr().out.split())


def test_an_image_file_named_batch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "batch").write_bytes(b"an image without extension")
    with pytest.raises(SystemExit):  # the subcommand runs (and misses its INPUT_DIR) ...
        main(["batch", "-o", "x.glb"])
    assert "for the image file of that name write ./batch" in capsys.readouterr().err  # ... and says so
    assert build_parser().parse_args(["./batch", "-o", "x.glb"]).image == "./batch"
