"""``python -m trellis2_core.loading.random_pipeline FOLDER --size tiny``: writes once, then reuses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trellis2_core.loading.random_pipeline import is_random_pipeline, main


def test_cli_writes_then_reuses(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "pipe"
    assert main([str(folder), "--size", "tiny", "--seed", "3"]) == 0
    assert "written" in capsys.readouterr().out
    assert (folder / "pipeline.json").is_file() and (folder / "dinov3" / "model.safetensors").is_file()
    assert is_random_pipeline(folder, size="tiny", seed=3)
    assert not is_random_pipeline(folder, size="tiny", seed=4) and not is_random_pipeline(folder, size="full", seed=3)
    assert json.loads((folder / "random_pipeline.json").read_text())["seed"] == 3
    assert main([str(folder), "--size", "tiny", "--seed", "3"]) == 0
    assert "reused" in capsys.readouterr().out


def test_cli_rejects_negative_seed(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path / "p"), "--seed", "-1"])
