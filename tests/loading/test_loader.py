"""Checkpoint loading (spec §4.1, §13.11): sources, pipeline.json, strict safetensors loading, ModelStore."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from trellis2_core.errors import InputError, WeightsError
from trellis2_core.loading import (
    KEY_FIXES, ModelStore, Normalization, PipelineConfig, check_model, load_model, read_model_json,
    resolve_model_files, resolve_pipeline_dir,
)
from trellis2_core.loading.safetensors_io import dtype_mismatch, read_strict

KEYS = [
    "sparse_structure_flow_model", "sparse_structure_decoder", "shape_slat_flow_model_512",
    "shape_slat_flow_model_1024", "shape_slat_decoder", "tex_slat_flow_model_512", "tex_slat_flow_model_1024",
    "tex_slat_decoder",
]
SS_DEC = "ckpts/ss_dec_conv3d_16l8_fp16"


@pytest.fixture(scope="module")
def tiny(golden_dir) -> Path:
    return golden_dir / "tiny-pipeline"


@pytest.fixture()
def pipe_copy(tmp_path, tiny) -> Path:
    """A writable copy of the tiny pipeline (checkpoints only, no DINOv3)."""
    dst = tmp_path / "pipe"
    shutil.copytree(tiny, dst, copy_function=shutil.copyfile, ignore=shutil.ignore_patterns("dinov3-tiny"))
    return dst


def test_pipeline_config(tiny):
    cfg = PipelineConfig.from_pipeline_json(tiny / "pipeline.json")
    assert cfg.root == tiny and set(cfg.models) == set(KEYS)
    assert cfg.models["sparse_structure_decoder"] == SS_DEC
    assert set(cfg.samplers) == {"sparse_structure", "shape_slat", "tex_slat"}
    ss = cfg.sampler("sparse_structure")
    assert ss.name == "FlowEulerGuidanceIntervalSampler" and ss.args["sigma_min"] == 1e-5
    assert ss.params["steps"] == 12 and ss.params["rescale_t"] == 5.0
    norm = cfg.normalization("shape_slat")
    assert norm.channels == 32 and norm.mean[0] == pytest.approx(0.781296)
    x = torch.randn(5, 32)
    assert torch.allclose(norm.denormalize(norm.normalize(x)), x, atol=1e-5)
    assert cfg.image_cond_model == "dinov3-tiny" and cfg.image_cond_model_class == "DinoV3FeatureExtractor"
    assert cfg.rembg_model == "briaai/RMBG-2.0" and cfg.default_pipeline_type == "1024_cascade"
    assert PipelineConfig.from_pipeline_json(tiny) == cfg  # the folder works too
    with pytest.raises(WeightsError, match="no model 'nope'"):
        cfg.model_ref("nope")


@pytest.mark.parametrize("key", KEYS)
def test_every_tiny_model_strict_loads(tiny, key):
    model = load_model(tiny, key)
    assert not model.training
    cfg = PipelineConfig.from_pipeline_json(tiny)
    _, st = resolve_model_files(tiny, cfg.models[key])
    ref = load_file(str(st))
    sd = model.state_dict()
    assert set(sd) == set(ref) - {"rope_phases"}
    for k, v in sd.items():
        assert not v.is_meta and v.device.type == "cpu"
        assert torch.equal(v, ref[k].to(v.dtype)), k
    assert all(not p.requires_grad for p in model.parameters())


def test_dtype_override_follows_the_model_policy(tiny):
    flow = load_model(tiny, "shape_slat_flow_model_512", dtype_override=torch.bfloat16)
    dtypes = {k: v.dtype for k, v in flow.state_dict().items()}
    assert dtypes["blocks.0.self_attn.to_qkv.weight"] == torch.bfloat16
    assert dtypes["t_embedder.mlp.0.weight"] == torch.float32
    assert dtypes["blocks.0.norm2.weight"] == torch.float32
    dec = load_model(tiny, "tex_slat_decoder", dtype_override="float16")
    assert {p.dtype for p in dec.parameters()} >= {torch.float16, torch.float32}
    # the VAEs' only precision switch is use_fp16: bfloat16 (asked for to avoid fp16 overflow) runs them in float32
    dec = load_model(tiny, "tex_slat_decoder", dtype_override=torch.bfloat16)
    assert {p.dtype for p in dec.parameters()} == {torch.float32}
    with pytest.raises(InputError, match="dtype override"):
        load_model(tiny, "tex_slat_decoder", dtype_override="int8")


def test_resolve_local_sources(tiny, tmp_path):
    assert resolve_pipeline_dir(tiny) == tiny
    assert resolve_pipeline_dir(tiny / "pipeline.json") == tiny
    models = tmp_path / "models"
    (models / "trellis2").mkdir(parents=True)
    (models / "trellis2" / "tiny").symlink_to(tiny, target_is_directory=True)
    assert resolve_pipeline_dir("tiny", models_dir=models) == models / "trellis2" / "tiny"
    assert resolve_pipeline_dir("someone/tiny", models_dir=models, offline=True) == models / "trellis2" / "tiny"


def test_nothing_found_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError) as err:
        resolve_pipeline_dir("acme/missing", models_dir=tmp_path / "models", offline=True)
    msg = str(err.value)
    assert str(tmp_path / "models" / "trellis2" / "acme" / "missing") in msg
    assert "Hugging Face repo acme/missing" in msg and "microsoft/TRELLIS.2-4B" in msg


def _fake_hub_repo(cache: Path, repo: str, files: dict[str, Path | str]) -> Path:
    """An HF cache entry ``models--owner--name`` with one snapshot holding ``files`` (path -> source/text)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    for rel, src in files.items():
        dst = snap / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Path):
            shutil.copyfile(src, dst)
        else:
            dst.write_text(src)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    return snap


def test_hf_cache_offline_with_cross_repo_decoder(tmp_path, tiny, monkeypatch):
    cache = tmp_path / "hub"
    cfg = json.loads((tiny / "pipeline.json").read_text())
    cfg["args"]["models"]["sparse_structure_decoder"] = "acme/trellis-v1/ckpts/ss_dec_conv3d_16l8_fp16"
    files: dict[str, Path | str] = {"pipeline.json": json.dumps(cfg)}
    for key, ref in cfg["args"]["models"].items():
        if key != "sparse_structure_decoder":
            for ext in (".json", ".safetensors"):
                files[ref + ext] = tiny / (ref + ext)
    snap = _fake_hub_repo(cache, "acme/tiny-trellis2", files)
    _fake_hub_repo(cache, "acme/trellis-v1", {SS_DEC + ext: tiny / (SS_DEC + ext) for ext in (".json", ".safetensors")})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = resolve_pipeline_dir("acme/tiny-trellis2")
    assert root == snap
    store = ModelStore(root)
    dec = store.get("sparse_structure_decoder")  # from the other repo, via the cache
    assert type(dec).__name__ == "SparseStructureDecoder"
    assert type(store.get("shape_slat_flow_model_512")).__name__ == "SLatFlowModel"


def test_cross_repo_reference_resolves_inside_a_self_contained_folder(pipe_copy, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    js, st = resolve_model_files(pipe_copy, "microsoft/TRELLIS-image-large/" + SS_DEC, offline=True)
    assert js == pipe_copy / (SS_DEC + ".json") and st == pipe_copy / (SS_DEC + ".safetensors")
    (pipe_copy / (SS_DEC + ".safetensors")).unlink()
    with pytest.raises(WeightsError) as err:
        resolve_model_files(pipe_copy, "microsoft/TRELLIS-image-large/" + SS_DEC, offline=True)
    assert "ss_dec_conv3d_16l8_fp16.safetensors" in str(err.value)
    assert "Hugging Face microsoft/TRELLIS-image-large" in str(err.value)


def _edit(pipe: Path, ref: str, change) -> Path:
    path = pipe / (ref + ".safetensors")
    sd = load_file(str(path))
    save_file(change(sd), str(path))
    return path


def test_missing_checkpoint_file(pipe_copy):
    (pipe_copy / "ckpts" / "tex_dec_next_dc_f16c32_fp16.safetensors").unlink()
    with pytest.raises(WeightsError, match="tex_dec_next_dc_f16c32_fp16.safetensors"):
        load_model(pipe_copy, "tex_slat_decoder", offline=True)


def test_truncated_checkpoint(pipe_copy):
    path = pipe_copy / (SS_DEC + ".safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match=r"ss_dec_conv3d_16l8_fp16\.safetensors.*re-download"):
        load_model(pipe_copy, "sparse_structure_decoder")


def test_wrong_shape_extra_and_missing_keys(pipe_copy):
    ref = "ckpts/slat_flow_img2shape_dit_1_3B_512_bf16"
    _edit(pipe_copy, ref, lambda sd: {**sd, "out_layer.bias": torch.zeros(31)})
    with pytest.raises(WeightsError, match=r"out_layer\.bias: expected \[32\], found \[31\]") as err:
        load_model(pipe_copy, "shape_slat_flow_model_512")
    assert "slat_flow_img2shape_dit_1_3B_512_bf16.safetensors" in str(err.value)
    _edit(pipe_copy, ref, lambda sd: {**sd, "out_layer.bias": torch.zeros(32), "blocks.9.bogus": torch.zeros(2)})
    with pytest.raises(WeightsError, match=r"1 unexpected keys: blocks\.9\.bogus"):
        load_model(pipe_copy, "shape_slat_flow_model_512")
    _edit(pipe_copy, ref, lambda sd: {k: v for k, v in sd.items()
                                      if k not in ("blocks.9.bogus", "blocks.1.norm2.weight")})
    with pytest.raises(WeightsError, match=r"1 missing keys: blocks\.1\.norm2\.weight"):
        load_model(pipe_copy, "shape_slat_flow_model_512")


def test_rope_phases_are_dropped(pipe_copy):
    assert KEY_FIXES["SparseStructureFlowModel"] == {"rope_phases": None}
    _edit(pipe_copy, "ckpts/ss_flow_img_dit_1_3B_64_bf16", lambda sd: {**sd, "rope_phases": torch.zeros(4096, 64)})
    model = load_model(pipe_copy, "sparse_structure_flow_model")
    assert "rope_phases" not in model.state_dict()


def test_read_strict_renames_and_casts(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"old.w": torch.ones(2, 3, dtype=torch.float16), "gone": torch.zeros(1)}, str(path))
    expected = {"new.w": torch.empty(2, 3, dtype=torch.float32, device="meta")}
    sd = read_strict(path, expected, fixes={"old.w": "new.w", "gone": None})
    assert list(sd) == ["new.w"] and sd["new.w"].dtype == torch.float32


def test_bad_model_json(pipe_copy):
    js = pipe_copy / "ckpts" / "tex_dec_next_dc_f16c32_fp16.json"
    js.write_text("{not json")
    with pytest.raises(WeightsError, match="tex_dec_next_dc_f16c32_fp16.json"):
        load_model(pipe_copy, "tex_slat_decoder")
    js.write_text(json.dumps({"name": "SparseUnetVaeDecoder", "args": {"bogus_arg": 1}}))
    with pytest.raises(WeightsError, match="cannot build SparseUnetVaeDecoder"):
        load_model(pipe_copy, "tex_slat_decoder")
    js.write_text(json.dumps({"name": "NoSuchModel", "args": {}}))
    with pytest.raises(WeightsError, match="NoSuchModel"):
        load_model(pipe_copy, "tex_slat_decoder")
    js.write_text(json.dumps(["name"]))
    with pytest.raises(WeightsError, match="ClassName"):
        read_model_json(js)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: "{oops", "not valid JSON"),
    (lambda d: json.dumps({"name": "X"}), "'name' and 'args'"),
    (lambda d: json.dumps({**d, "args": {**d["args"], "models": {}}}), "args.models"),
    (lambda d: json.dumps({**d, "args": {**d["args"], "models": {"a": 3}}}), "model 'a'"),
    (lambda d: json.dumps({**d, "args": {**d["args"], "shape_slat_normalization": {"mean": [1.0], "std": [1.0, 2.0]}}}),
     "mean has 1 values but std has 2"),
    (lambda d: json.dumps({**d, "args": {**d["args"], "tex_slat_sampler": {"args": {}}}}), "tex_slat_sampler"),
    (lambda d: json.dumps({**d, "args": {**d["args"], "default_pipeline_type": "huge"}}), "default_pipeline_type"),
])
def test_malformed_pipeline_json(pipe_copy, mutate, match):
    path = pipe_copy / "pipeline.json"
    path.write_text(mutate(json.loads(path.read_text())))
    with pytest.raises(WeightsError, match=match) as err:
        PipelineConfig.from_pipeline_json(path)
    assert str(path) in str(err.value)


def test_model_store_is_lazy_and_releases(tiny):
    calls = []

    def loader(config, key, **kw):
        calls.append(key)
        return torch.nn.Linear(1, 1)

    store = ModelStore(tiny, loader=loader)
    assert store.loaded == () and set(store.keys) == set(KEYS)
    a = store.get("tex_slat_decoder")
    assert store.get("tex_slat_decoder") is a and calls == ["tex_slat_decoder"]
    store("sparse_structure_decoder")
    assert store.loaded == ("tex_slat_decoder", "sparse_structure_decoder") and "tex_slat_decoder" in store
    assert "params" in store.summary()["tex_slat_decoder"]
    assert store.release("tex_slat_decoder") and not store.release("tex_slat_decoder")
    store.release_all()
    assert store.loaded == ()
    store.get("tex_slat_decoder")
    assert calls == ["tex_slat_decoder", "sparse_structure_decoder", "tex_slat_decoder"]


# ---------------------------------------------------------------------------------------------- corrupted weights
SHAPE_512 = "ckpts/slat_flow_img2shape_dit_1_3B_512_bf16"


@pytest.mark.parametrize("bad_dtype, found", [(torch.int32, "int32"), (torch.bool, "bool"),
                                              (torch.float8_e4m3fn, "float8_e4m3fn"), (torch.int8, "int8")])
def test_float_weight_stored_with_a_lossy_dtype_is_a_weights_error(pipe_copy, bad_dtype, found):
    key = "blocks.0.self_attn.to_qkv.weight"
    _edit(pipe_copy, SHAPE_512, lambda sd: {**sd, key: sd[key].to(bad_dtype)})
    for check in (check_model, load_model):  # the header check (before loading) and the loader agree
        with pytest.raises(WeightsError) as err:
            check(pipe_copy, "shape_slat_flow_model_512")
        msg = str(err.value)
        assert "slat_flow_img2shape_dit_1_3B_512_bf16.safetensors" in msg and "re-download" in msg
        assert f"{key}: expected float32" in msg and f"found {found}" in msg


def test_lossless_float_dtypes_still_load(pipe_copy):
    _edit(pipe_copy, SHAPE_512, lambda sd: {k: v.to(torch.float64) for k, v in sd.items()})
    model = load_model(pipe_copy, "shape_slat_flow_model_512")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_read_strict_refuses_wrong_dtype_families(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"w": torch.ones(2, dtype=torch.int64), "idx": torch.ones(2)}, str(path))
    expected = {"w": torch.empty(2, device="meta"), "idx": torch.empty(2, dtype=torch.int64, device="meta")}
    with pytest.raises(WeightsError, match=r"2 keys with the wrong dtype .*: idx: expected int64, found float32, "
                                           r"w: expected float32, found int64"):
        read_strict(path, expected)


def test_dtype_mismatch_rules():
    assert dtype_mismatch("k", torch.bfloat16, torch.float32) is None
    assert dtype_mismatch("k", "F64", torch.float16) is None
    assert dtype_mismatch("k", "I32", torch.int64) is None
    assert "found int32" in dtype_mismatch("k", "I32", torch.float32)
    assert "found float8_e5m2" in dtype_mismatch("k", torch.float8_e5m2, torch.bfloat16)
    assert "found float32" in dtype_mismatch("k", torch.float32, torch.bool)


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, None])
def test_corrupt_safetensors_found_by_the_header_check(pipe_copy, content):
    path = pipe_copy / (SS_DEC + ".safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if content is None else content)
    with pytest.raises(WeightsError, match=r"ss_dec_conv3d_16l8_fp16\.safetensors: unreadable, truncated or corrupt.*"
                                           r"re-download it"):
        check_model(pipe_copy, "sparse_structure_decoder")


@pytest.mark.parametrize("arg, value", [("model_channels", "64"), ("num_blocks", -1), ("num_heads", 0),
                                        ("in_channels", 1.5), ("cond_channels", [1]), ("dtype", "int8"),
                                        ("pe_mode", "ape"), ("model_channels", 10**12)])
def test_model_json_with_wrong_types_names_the_file(pipe_copy, arg, value):
    """Unbuildable args fail while building (on the meta device); buildable but wrong ones against the header."""
    js = pipe_copy / (SHAPE_512 + ".json")
    data = json.loads(js.read_text())
    assert arg in data["args"]
    data["args"][arg] = value
    js.write_text(json.dumps(data))
    with pytest.raises(WeightsError) as err:
        check_model(pipe_copy, "shape_slat_flow_model_512")
    assert str(js) in str(err.value) and "re-download" in str(err.value)


def test_missing_model_json_says_where_to_put_it(pipe_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    (pipe_copy / (SHAPE_512 + ".json")).unlink()
    with pytest.raises(WeightsError) as err:
        check_model(pipe_copy, "shape_slat_flow_model_512", offline=True)
    msg = str(err.value)
    assert "missing slat_flow_img2shape_dit_1_3B_512_bf16.json" in msg and str(pipe_copy / "ckpts") in msg


def test_pipeline_check_ready_finds_a_broken_checkpoint_before_any_model_loads(pipe_copy, tiny, monkeypatch):
    import trellis2_core.loading.loader as loader
    from trellis2_core.pipeline.pipeline import Pipeline

    def no_loading(*_a, **_k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loader, "load_model", no_loading)
    shutil.copytree(tiny / "dinov3-tiny", pipe_copy / "dinov3-tiny", copy_function=shutil.copyfile)
    pipe = Pipeline.from_pretrained(pipe_copy, offline=True)
    assert pipe.check_ready("512").name == "512"
    tex_dec = "ckpts/tex_dec_next_dc_f16c32_fp16.safetensors"
    _edit(pipe_copy, tex_dec[:-12], lambda sd: {k: v.to(torch.int32) for k, v in sd.items()})
    with pytest.raises(WeightsError, match="tex_dec_next_dc_f16c32_fp16.safetensors.*found int32"):
        pipe.check_ready("512")
    shutil.copyfile(tiny / tex_dec, pipe_copy / tex_dec)
    with pytest.raises(InputError, match="pipeline type"):
        pipe.check_ready("2176_cascade")
    shutil.rmtree(pipe_copy / "dinov3-tiny")
    with pytest.raises(WeightsError, match="dinov3"):
        Pipeline.from_pretrained(pipe_copy, offline=True).check_ready("512")


def test_dinov3_weights_with_int_dtype(tiny, tmp_path):
    from trellis2_core.models.dinov3 import DinoV3FeatureExtractor

    folder = tmp_path / "dinov3"
    shutil.copytree(tiny / "dinov3-tiny", folder, copy_function=shutil.copyfile)
    st = folder / "model.safetensors"
    sd = load_file(str(st))
    key = sorted(k for k in sd if k.endswith("weight"))[0]
    save_file({**sd, key: sd[key].to(torch.int32)}, str(st))
    with pytest.raises(WeightsError, match=rf"{key}: expected float32.*found int32"):
        DinoV3FeatureExtractor.from_folder(folder)


def test_normalisation_of_the_wrong_width_is_a_weights_error():
    norm = Normalization((0.0, 0.0), (1.0, 1.0))
    with pytest.raises(WeightsError, match="pipeline.json"):
        norm.normalize(torch.zeros(3, 5))


def test_hub_download_errors(monkeypatch):
    import sys

    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    from trellis2_core.errors import BackendError
    from trellis2_core.loading.sources import HubMiss, hub_download

    def missing_entry(*_a, **_k):
        raise EntryNotFoundError("404: ckpts/x.json not in acme/repo")  # no OSError in huggingface_hub >= 1

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", missing_entry)
    with pytest.raises(HubMiss, match="EntryNotFoundError: 404"):
        hub_download("acme/repo", "ckpts/x.json", offline=True)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(BackendError, match=r"getting acme/repo/ckpts/x.json from Hugging Face needs "
                                           r"huggingface_hub>=0.24.*pip install"):
        hub_download("acme/repo", "ckpts/x.json", offline=True)
