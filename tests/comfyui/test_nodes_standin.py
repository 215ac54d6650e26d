"""The node pack on a stand-in with ComfyUI's calling convention and wrapper semantics (no ComfyUI needed):
node interface, one-run attachment, bit-identical threshold 0, decisions of the reference rule, second-order
samplers, guidance branches, both joint-stream layouts, in-place blocks, errors, calibration, loading."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from standin_host import REPO, conds, latent, load_custom_node, make_model, standin

import teacache_sample_video as tc

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def env(tmp_path):
    with standin() as c:
        c.folder_paths.set_base(tmp_path)
        pack = load_custom_node(REPO / "comfyui")
        c.pack = pack
        c.nodes = pack.NODE_CLASS_MAPPINGS
        yield c


def run(c, patcher, steps=8, cfg=1.0, sampler="euler", positive=None, batch_conds=True, **kw):
    torch.manual_seed(0)
    pos, neg = conds(**kw) if positive is None else positive
    lat, noise = latent()
    with torch.no_grad():
        return c.samplers.sample(patcher, noise, steps, cfg, sampler, pos, neg, lat, batch_conds=batch_conds)


def teacache(c, model, thresh=0.15, **options):
    return c.nodes["TeaCacheHunyuanVideo"]().patch(model, thresh, **options)[0]


def last_report(c, patched):
    return patched.get_wrappers("outer_sample", "teacache_hunyuanvideo")[0].reports[-1]


def clean(dm):
    """Nothing of the cache left on the model: no instance forward on any block, no handle."""
    blocks = list(dm.double_blocks) + list(dm.single_blocks)
    return not any("forward" in vars(b) for b in blocks) and not hasattr(dm, "_teacache")


def test_interface(env):
    c = env
    assert set(c.nodes) == {"TeaCacheHunyuanVideo", "TeaCacheCalibrateHunyuanVideo"}
    assert set(c.pack.NODE_DISPLAY_NAME_MAPPINGS) == set(c.nodes)
    types = c.nodes["TeaCacheHunyuanVideo"].INPUT_TYPES()
    assert list(types["required"]) == ["model", "rel_l1_thresh"] and types["required"]["rel_l1_thresh"][0] == "FLOAT"
    assert set(types["optional"]) == {"target_speedup", "rule", "indicator", "skip", "profile", "warmup_steps",
                                      "max_consecutive_skips", "first_frame"}
    assert all("default" in spec[1] for spec in types["optional"].values())
    assert types["optional"]["rule"][0] == list(tc.RULES) and types["optional"]["indicator"][0] == list(tc.INDICATORS)
    assert types["optional"]["profile"][0][0] == "published"
    model = make_model(c)
    out = c.nodes["TeaCacheHunyuanVideo"]().patch(model, 0.1)
    assert isinstance(out, tuple) and out[0] is not model and out[0].model is model.model
    assert not model.wrappers and out[0].get_wrappers("outer_sample", "teacache_hunyuanvideo")  # input untouched
    with pytest.raises(TypeError):  # any other model is refused when the node runs, not at sampling time
        c.nodes["TeaCacheHunyuanVideo"]().patch(c.model_patcher.ModelPatcher(
            c.model_patcher.BaseModel(torch.nn.Linear(2, 2), None)), 0.1)


@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_threshold_zero_bit_identical_and_detached(env, cfg):
    c = env
    model = make_model(c)
    plain, _ = run(c, model, cfg=cfg)
    patched = teacache(c, model, 0.0)
    cached, _ = run(c, patched, cfg=cfg)
    assert torch.equal(plain, cached)
    assert clean(model.model.diffusion_model)
    assert last_report(c, patched)["computed_calls"] == 8


def test_euler_decisions_equal_reference_rule(env):
    c = env
    model = make_model(c)
    plain, _ = run(c, model, steps=12, cfg=5.0)
    patched = teacache(c, model, 0.3)
    cached, guider = run(c, patched, steps=12, cfg=5.0)
    report = last_report(c, patched)
    assert report["num_branches"] == 1 and all(w == [0, 1] for w, _ in guider.calls)  # batched: one branch
    assert 0 < len(report["skipped_steps"]) < 10
    config = tc.TeaCacheConfig(rel_l1_thresh=0.3)
    assert report["computed_steps"] == tc.replay(report["rel_l1"], config)
    assert not torch.equal(plain, cached) and torch.isfinite(cached).all()
    assert clean(model.model.diffusion_model)


@pytest.mark.parametrize("sampler", ["heun", "dpm_2"])
def test_second_order_samplers_place_calls_in_steps(env, sampler):
    c = env
    model = make_model(c)
    patched = teacache(c, model, 0.3)
    out, guider = run(c, patched, steps=8, sampler=sampler)
    report = last_report(c, patched)
    steps = report["steps"]
    assert len(steps) == len(guider.calls) > 8 and steps == sorted(steps) and steps[-1] == 7
    # every call in its step: the one whose sigma interval holds it
    sigmas = c.samplers.calculate_sigmas(c.samplers.ModelSamplingFlow(7.0), "simple", 8).tolist()
    for (_, sigma), step in zip(guider.calls, steps):
        assert sigmas[step] >= sigma - 1e-6 and (step == 7 or sigma > sigmas[step + 1] + 1e-9)
    assert report["skipped_steps"] and torch.isfinite(out).all()
    assert [s for s in steps if s in (0, 7)] == [s for s in report["computed_steps"] if s in (0, 7)]


def test_split_guidance_branches(env):
    c = env
    model = make_model(c)
    patched = teacache(c, model, 0.3)
    _, guider = run(c, patched, cfg=5.0, batch_conds=False)
    report = last_report(c, patched)
    assert report["num_branches"] == 2 and {w for w, _ in [(tuple(w), s) for w, s in guider.calls]} == {(0,), (1,)}
    for b in report["branches"]:  # each branch decided on its own inputs
        assert b["computed_steps"] == tc.replay(b["rel_l1"], tc.TeaCacheConfig(rel_l1_thresh=0.3))


def test_joint_stream_layouts_and_in_place_blocks_agree(env):
    """cat(img, txt), cat(txt, img) with img_slice, and double blocks that add into img in place: the same model
    (attention has no positions here, so the layout does not change the math) gives the same cached output."""
    c = env
    outs = []
    for kwargs in ({}, {"txt_first": True}, {"inplace_img": True}):
        patched = teacache(c, make_model(c, **kwargs), 0.3)
        outs.append(run(c, patched, cfg=5.0)[0])
        assert last_report(c, patched)["skipped_steps"]
    assert torch.allclose(outs[0], outs[1], atol=1e-5) and torch.allclose(outs[0], outs[2], atol=1e-5)


def test_token_replace_first_frame(env):
    c = env
    model = make_model(c)
    v2 = conds(guiding_frame_index=0)
    patched = teacache(c, model, 0.3, first_frame="exclude")
    _, guider = run(c, patched, cfg=5.0, positive=v2)
    report = last_report(c, patched)
    assert report["num_branches"] == 2  # cond carries guiding_frame_index, uncond not: ComfyUI splits them
    assert report["first_frame"] == "exclude" and report["setting"]["image_condition"] == "token_replace"
    included = teacache(c, model, 0.3)
    run(c, included, cfg=5.0, positive=v2)
    assert last_report(c, included)["rel_l1"] != report["rel_l1"]  # the first frame's tokens left out
    with pytest.raises(ValueError, match="token replace"):  # exclude without a first frame
        run(c, teacache(c, model, 0.3, first_frame="exclude"))
    assert clean(model.model.diffusion_model)


def test_blocks_restored_after_an_error(env):
    c = env
    model = make_model(c)
    patched = teacache(c, model, 0.3)
    dm = model.model.diffusion_model
    calls = []

    def broken(model_fn, x, sigmas):
        model_fn(x, sigmas[0])
        calls.append("forward" in vars(dm.double_blocks[0]))  # wrapped during the run
        raise RuntimeError("sampler failed")

    c.samplers.SAMPLERS["broken"] = broken
    with pytest.raises(RuntimeError, match="sampler failed"):
        run(c, patched, sampler="broken")
    assert calls == [True] and clean(dm)  # wrapped during the run, and nothing is left after it
    out, _ = run(c, patched)  # and the next run works
    assert torch.isfinite(out).all()


def test_calibration_profile_round_trip(env, tmp_path):
    c = env
    model = make_model(c)
    plain, _ = run(c, model, steps=10, cfg=5.0)
    calibrate = c.nodes["TeaCacheCalibrateHunyuanVideo"]().patch(model, "my profile")[0]
    for seed in (0, 1):
        out, _ = run(c, calibrate, steps=10, cfg=5.0, seed=seed)
        if seed == 0:
            assert torch.equal(out, plain)  # outputs unchanged
    path = tmp_path / "models" / "teacache_profiles" / "my_profile.json"
    profile = json.loads(path.read_text())
    assert profile["runs"] == 2 and len(profile["traces"]) == 2 and len(profile["coefficients"]) == 5
    assert profile["model"]["host"] == "comfyui" and profile["model"]["comfyui_model"] == "HunyuanVideo"
    assert {k: profile["setting"][k] for k in ("steps", "sampler", "scheduler", "cfg", "shift", "frames")} == \
        {"steps": 10, "sampler": "euler", "scheduler": "simple", "cfg": 5.0, "shift": 7.0, "frames": 9}
    assert profile["setting"]["resolution"] == [32, 32]
    assert "my_profile.json" in c.nodes["TeaCacheHunyuanVideo"].INPUT_TYPES()["optional"]["profile"][0]
    patched = teacache(c, model, 0.15, profile="my_profile.json", target_speedup=2.0)
    run(c, patched, steps=10, cfg=5.0)
    report = last_report(c, patched)
    assert report["coefficients"] == profile["coefficients"] and report["profile"] == "my_profile.json"
    assert report["target_speedup"] == 2.0 and report["rel_l1_thresh"] != 0.15
    with pytest.raises(ValueError, match="10 steps"):  # another step count: refused before sampling
        run(c, patched, steps=12, cfg=5.0)
    other = make_model(c, depth=3)  # another architecture: refused
    with pytest.raises(ValueError, match="recorded for"):
        run(c, teacache(c, other, 0.15, profile="my_profile.json"), steps=10, cfg=5.0)
    with pytest.raises(ValueError, match="calibration profile"):
        teacache(c, model, 0.15, target_speedup=2.0)
    profile["model"]["host"] = "cli"  # a CLI profile never applies here
    path.write_text(json.dumps(profile))
    with pytest.raises(ValueError, match="recorded for"):
        run(c, teacache(c, model, 0.15, profile="my_profile.json"), steps=10, cfg=5.0)
    assert clean(model.model.diffusion_model)


def test_report_written_and_summary_logged(env, tmp_path, caplog):
    c = env
    patched = teacache(c, make_model(c), 0.3)
    with caplog.at_level("INFO", logger="teacache_hunyuanvideo"):
        run(c, patched)
    assert any("TeaCache(rel_l1_thresh=0.3" in r.message for r in caplog.records)
    files = list((tmp_path / "output" / "teacache").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["computed_steps"] == last_report(c, patched)["computed_steps"]


def test_loads_symlinked_or_cloned(tmp_path):
    """Symlinked pack folder, and the whole repository cloned (its top-level __init__.py) into custom_nodes."""
    custom = tmp_path / "custom_nodes"
    custom.mkdir()
    os.symlink(REPO / "comfyui", custom / "teacache_hunyuanvideo")
    clone = custom / "TeaCache-HunyuanVideo"
    clone.mkdir()
    for item in ("__init__.py", "teacache_sample_video.py"):
        shutil.copy(REPO / item, clone / item)
    shutil.copytree(REPO / "comfyui", clone / "comfyui", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in (custom / "teacache_hunyuanvideo", clone):
        with standin():
            saved = sys_modules_engine()
            try:
                module = load_custom_node(folder)
                assert set(module.NODE_CLASS_MAPPINGS) == {"TeaCacheHunyuanVideo", "TeaCacheCalibrateHunyuanVideo"}
                engine = module.NODE_CLASS_MAPPINGS["TeaCacheHunyuanVideo"].__module__
                assert engine
            finally:
                restore_engine(saved)


def sys_modules_engine():
    import sys
    return sys.modules.pop("teacache_sample_video", None)


def restore_engine(saved):
    import sys
    sys.modules.pop("teacache_sample_video", None)
    if saved is not None:
        sys.modules["teacache_sample_video"] = saved


def test_registry_metadata_and_example_workflow():
    """comfyui/pyproject.toml has what ComfyUI's registry reads; the example workflow uses the node with every
    input it declares."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    meta = tomllib.loads((REPO / "comfyui" / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "teacache-hunyuanvideo" and meta["project"]["version"].count(".") == 2
    assert "Repository" in meta["project"]["urls"] and "DisplayName" in meta["tool"]["comfy"]
    workflow = json.loads((REPO / "comfyui" / "example_workflow_api.json").read_text())
    node, = [n for n in workflow.values() if n["class_type"] == "TeaCacheHunyuanVideo"]
    with standin():
        types = load_custom_node(REPO / "comfyui").NODE_CLASS_MAPPINGS["TeaCacheHunyuanVideo"].INPUT_TYPES()
    assert set(node["inputs"]) == set(types["required"]) | set(types["optional"])


@pytest.mark.parametrize("indicator,skip", [(i, "blocks") for i in tc.INDICATORS] +
                         [("transformation-rate", "call"), ("residual-rate", "call")])
def test_every_indicator(env, indicator, skip):
    """Every decision signal the engine offers (the node lists them all), and the whole-call skip: threshold 0
    bit-identical, a run that skips calls with batched and split guidance, nothing left on the model."""
    c = env
    model = make_model(c)
    plain, _ = run(c, model, cfg=5.0)
    assert torch.equal(run(c, teacache(c, model, 0.0, indicator=indicator, skip=skip), cfg=5.0)[0], plain)
    for batch in (True, False):
        patched = teacache(c, model, 0.3, indicator=indicator, skip=skip)
        out, _ = run(c, patched, cfg=5.0, steps=12, batch_conds=batch)
        report = last_report(c, patched)
        assert report["indicator"] == indicator and report["skip"] == skip
        assert report["num_branches"] == (1 if batch else 2) and report["skipped_steps"]
        assert torch.isfinite(out).all() and clean(model.model.diffusion_model)
