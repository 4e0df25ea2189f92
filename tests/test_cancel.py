"""Cancellation (trellis2_core/cancel.py): the poll mechanism itself, then a cancel at a chosen point of every stage
of ``image_to_glb`` (background matting, DINOv3, each sampler, decoding, each export step) on the tiny pipeline.

Each stage test uses a progress object whose ``cancelled()`` turns true at its n-th poll inside one stage and
checks that CancelledError comes promptly: no further progress event after the poll said yes (so no further
sampler step, block or export step ran to completion), well under a second, and no output file.
"""
from __future__ import annotations

import time

import pytest
import torch
from PIL import Image
from torch import nn

from tests.tools.glb_checks import asset_images, loaded_tiny_pipeline
from tests.tools.matting_fixture import build_tiny_matting
from trellis2_core import image_to_glb
from trellis2_core.cancel import cancel_on_forward, cancel_requested, cancel_scope, checkpoint, hook_points
from trellis2_core.errors import CancelledError, InputError
from trellis2_core.pipeline.pipeline import Pipeline
from trellis2_core.postprocess import ExportConfig


# ---------------------------------------------------------------------------------------------- the mechanism
def test_checkpoint_without_a_scope_does_nothing():
    checkpoint("anything")
    assert not cancel_requested()


def test_scopes_nest_and_any_active_poll_cancels():
    inner_calls = []
    with cancel_scope(lambda: False, interval=0):
        with cancel_scope(lambda: inner_calls.append(1) or True, interval=0):
            with pytest.raises(CancelledError, match="cancelled during step 3"):
                checkpoint("step 3")
        checkpoint("outer only")  # the inner poll is gone again
    assert inner_calls == [1]
    with cancel_scope(None):  # None keeps the outer state (here: nothing)
        checkpoint("no poll")


def test_polls_are_rate_limited_latched_and_forced_at_boundaries():
    calls = []

    def poll() -> bool:
        calls.append(time.monotonic())
        return len(calls) >= 3

    with cancel_scope(poll, interval=3600):
        for _ in range(100):
            checkpoint("tight loop")  # only the first call reaches the poll within the interval
        assert len(calls) == 1
        checkpoint("boundary", force=True)
        assert len(calls) == 2
        with pytest.raises(CancelledError):
            checkpoint("boundary", force=True)
        with pytest.raises(CancelledError):
            checkpoint("later")  # latched: no new poll needed
    assert len(calls) == 3


def test_a_bad_poll_is_an_input_error():
    with pytest.raises(InputError, match="function"):
        with cancel_scope(True):  # type: ignore[arg-type]
            pass


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU())  # inside a block: never hooked

    def forward(self, x):
        return self.inner(x)


class _Net(nn.Module):
    def __init__(self, depth: int = 6) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.blocks = nn.ModuleList(_Block() for _ in range(depth))
        self.ran = 0

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
            self.ran += 1
        return x


def test_hook_points_are_the_root_and_the_outermost_blocks():
    net = _Net(3)
    points = hook_points(net)
    assert points[0] is net and set(map(id, points[1:])) == set(map(id, net.blocks))
    assert all(id(m) not in set(map(id, points)) for b in net.blocks for m in b.modules() if m is not b)


def test_cancel_on_forward_stops_between_blocks_and_removes_its_hooks():
    net = _Net(6)
    polls = []

    def poll() -> bool:
        polls.append(1)
        return len(polls) >= 4  # root, block 0, block 1 answer no; block 2 answers yes

    with pytest.raises(CancelledError, match="during the test net"):
        with cancel_scope(poll, interval=0), cancel_on_forward(net, where="the test net"):
            net(torch.zeros(1, 4))
    assert net.ran == 2 and len(polls) == 4  # blocks 0 and 1 ran, block 2 never started
    net(torch.zeros(1, 4))  # hooks are gone: a later forward runs every block
    assert net.ran == 8
    assert all(not m._forward_pre_hooks for m in net.modules())


def test_cancel_on_forward_accepts_wrappers_and_none():
    class Wrapper:
        def __init__(self) -> None:
            self.model = _Net(2)

    wrapper = Wrapper()
    with cancel_on_forward(wrapper, None, where="a wrapper", poll=lambda: True):
        with pytest.raises(CancelledError, match="a wrapper"):
            wrapper.model(torch.zeros(1, 4))
    assert wrapper.model.ran == 0


# ---------------------------------------------------------------------------------------------- every stage
class CancelAt:
    """``cancelled()`` turns true at its ``polls``-th call made while the current stage starts with ``stage``."""

    def __init__(self, stage: str, polls: int = 1) -> None:
        self.target, self.polls = stage, polls
        self.current = ""
        self.events: list[tuple[str, int, int]] = []
        self.seen = 0
        self.fired_at: float | None = None
        self.events_when_fired = -1

    def step(self, stage: str, i: int, n: int) -> None:
        self.events.append((stage, i, n))
        self.current = stage

    def cancelled(self) -> bool:
        if self.fired_at is None and self.current.startswith(self.target):
            self.seen += 1
            if self.seen >= self.polls:
                self.fired_at = time.perf_counter()
                self.events_when_fired = len(self.events)
        return self.fired_at is not None


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return loaded_tiny_pipeline()


@pytest.fixture(scope="module")
def image() -> Image.Image:
    images = asset_images()
    if not images:
        pytest.skip("shared/assets/images not found")
    with Image.open(images[0]) as src:
        return src.convert("RGBA").resize((256, 256))


@pytest.fixture(autouse=True)
def _every_checkpoint_polls(monkeypatch):
    """Poll at every checkpoint (no rate limit), so 'the n-th poll' is a fixed point of the run."""
    from trellis2_core import cancel

    monkeypatch.setattr(cancel, "DEFAULT_INTERVAL", 0.0)


def _cancel(pipe, image, tmp_path, progress: CancelAt, **kw) -> CancelledError:
    out = tmp_path / "out" / "c.glb"
    with pytest.raises(CancelledError) as info:
        image_to_glb(image, out, pipeline=pipe, pipeline_type="512", steps=3, progress=progress,
                     export=ExportConfig(target_faces=5_000, texture_size=256), **kw)
    raised = time.perf_counter()
    assert progress.fired_at is not None, "the poll never turned true in that stage"
    assert raised - progress.fired_at < 1.0, f"cancel took {raised - progress.fired_at:.2f} s"
    assert len(progress.events) == progress.events_when_fired, (
        f"progress went on after the cancel: {progress.events[progress.events_when_fired:]}")
    assert not out.exists() and not any(tmp_path.rglob("*.glb")) and not any(tmp_path.rglob("*.part"))
    return info.value


@pytest.mark.parametrize("stage, polls, where", [
    ("condition", 2, "image conditioning"),  # inside the DINOv3 forward, between its blocks
    ("sparse_structure", 3, "sparse_structure"),
    ("shape", 3, "shape"),
    ("tex", 3, "tex"),
    ("decode", 4, "decoding"),  # between the decoders' blocks
])
def test_cancel_inside_each_generation_stage(pipe, image, tmp_path, stage, polls, where):
    err = _cancel(pipe, image, tmp_path, CancelAt(stage, polls))
    assert where in str(err)


def test_cancel_inside_the_matting_model(pipe, image, tmp_path):
    folder = build_tiny_matting(tmp_path / "TinyMatting", (255, 255, 255))
    rgb = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    # the tiny matting net has no blocks: its root forward hook is the one poll inside the stage
    err = _cancel(pipe, rgb, tmp_path, CancelAt("background", 1), matting_model=folder, offline=True)
    assert "background removal" in str(err)


@pytest.mark.parametrize("stage", ["export:fill_holes", "export:clean", "export:decimate", "export:unwrap",
                                   "export:bake"])
def test_cancel_inside_each_export_step(pipe, image, tmp_path, stage):
    # a poll after the report of step X comes from the work of the step after it (export:clean → decimation).
    # 'export:start' does no work any more: hole filling, clean-up and decimation begin when the shape is decoded,
    # while the material is sampled (test_cancel_inside_each_generation_stage's 'tex' cancels during them)
    _cancel(pipe, image, tmp_path, CancelAt(stage, 2))
