"""The node pack inside a real ComfyUI (``COMFYUI_ROOT``: a Comfy-Org/ComfyUI checkout, 2025-10, or hiddenswitch's
pip-packaged ComfyUI, 2026-02, which also has HunyuanVideo-1.5), on CPU with tiny checkpoints in ComfyUI's weight
layout loaded through ``comfy.sd.load_diffusion_model`` and sampled through ``comfy.sample.sample``; and a headless
``PromptExecutor`` run of the workflow the pack ships. Skipped, with the reason, when ``COMFYUI_ROOT`` is unset.

    COMFYUI_ROOT=/path/to/ComfyUI python -m pytest -q -rs tests/comfyui/test_real_comfyui.py
"""

import json
from pathlib import Path

import pytest
import torch

from conftest import checkout_root

ROOT = checkout_root("COMFYUI_ROOT", "ComfyUI (Comfy-Org/ComfyUI; hiddenswitch/pip-and-uv-installable-ComfyUI for 1.5)")

import comfy_host as H  # noqa: E402
from standin_host import REPO, load_custom_node  # noqa: E402

import teacache_sample_video as tc  # noqa: E402

C = H.import_comfy(ROOT)
ON = 2.0  # random weights change the indicator more than trained ones: a threshold that skips some calls
SAMPLERS = ["euler", "uni_pc", "heun", "dpm_2", "dpmpp_2s_ancestral"]
HAS_15 = "vision_in_dim" in C.model.HunyuanVideoParams.__dataclass_fields__
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")


def _folder_paths():
    try:
        import folder_paths
    except ImportError:
        from comfy.cmd import folder_paths
    return folder_paths


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    fp = _folder_paths()
    fp.add_model_folder_path("teacache_profiles", str(base / "teacache_profiles"))
    fp.set_output_directory(str(base / "output"))
    module = load_custom_node(REPO / "comfyui", "custom_nodes_teacache_real")
    module.base = base
    return module


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    kinds = ["t2v", "i2v"] + (["v15"] if HAS_15 else [])
    return {k: H.load(H.write_checkpoint(folder / f"{k}.safetensors", k, C), C) for k in kinds}


def sample(model, kind="t2v", steps=8, cfg=1.0, sampler="euler", scheduler="simple", seed=1, callback=None,
           v2=False, positive=None):
    channels = 32 if kind == "v15" else 16
    lat = torch.zeros(1, channels, 3, 8, 8)
    extra, mask = {}, None
    if kind == "i2v":
        extra = {"concat_latent_image": torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(5)),
                 "concat_mask": torch.cat([torch.zeros(1, 1, 1, 8, 8), torch.ones(1, 1, 2, 8, 8)], 2)}
    if v2:  # I2V v2: the first latent frame is the image, guiding_frame_index on the positive only
        lat[:, :, :1] = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(6))
        extra = {"guiding_frame_index": 0}
        mask = torch.cat([torch.zeros(1, 1, 1, 8, 8), torch.ones(1, 1, 2, 8, 8)], 2)
    pos, neg = H.conditioning(C, kind, **extra) if positive is None else positive
    noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return C.sample.sample(model, noise, steps, cfg, sampler, scheduler, pos, neg, lat, noise_mask=mask,
                               seed=seed, callback=callback, disable_pbar=True)


def teacache(pack, model, thresh, **options):
    return pack.NODE_CLASS_MAPPINGS["TeaCacheHunyuanVideo"]().patch(model, thresh, **options)[0]


def report_of(patched):
    return patched.get_wrappers("outer_sample", "teacache_hunyuanvideo")[0].reports[-1]


def clean(model):
    dm = model.model.diffusion_model
    return not any("forward" in vars(b) for b in list(dm.double_blocks) + list(dm.single_blocks)) \
        and not hasattr(dm, "_teacache")


def test_detection(models):
    assert type(models["t2v"].model).__name__ == "HunyuanVideo"
    assert type(models["i2v"].model).__name__ == "HunyuanVideoI2V"
    assert tc.find_model(models["t2v"].model.diffusion_model).name.startswith("ComfyUI HunyuanVideo (")
    assert tc.find_model(models["i2v"].model.diffusion_model).version == "1.0"
    if HAS_15:
        assert type(models["v15"].model).__name__ == "HunyuanVideo15"
        assert tc.find_model(models["v15"].model.diffusion_model).name == "ComfyUI HunyuanVideo 1.5"


@pytest.mark.parametrize("cfg", [1.0, 4.0])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers(pack, models, sampler, cfg):
    """Every sampler: threshold 0 bit-identical; a positive threshold skips calls, places each in its step and
    leaves nothing on the model."""
    model = models["t2v"]
    plain = sample(model, cfg=cfg, sampler=sampler)
    off = teacache(pack, model, 0.0)
    assert torch.equal(sample(off, cfg=cfg, sampler=sampler), plain)
    assert clean(model)
    on = teacache(pack, model, ON)
    out = sample(on, cfg=cfg, sampler=sampler)
    report = report_of(on)
    assert clean(model) and torch.isfinite(out).all()
    assert report["num_branches"] == 1  # cond and uncond batched in one call at cfg > 1: one branch
    steps = report["steps"]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 7 and report["num_steps"] == 8
    per_step = {"euler": 1, "uni_pc": 1, "heun": 2, "dpm_2": 2, "dpmpp_2s_ancestral": 2}[sampler]
    assert len(steps) in range(8 * per_step - 2, 8 * per_step + 1)  # second-order: the last step has one call
    assert report["skipped_steps"], report["rel_l1"]
    assert not torch.equal(out, plain)


@pytest.mark.parametrize("indicator,skip", [(i, "blocks") for i in tc.INDICATORS] +
                         [("transformation-rate", "call"), ("residual-rate", "call")])
def test_every_indicator(pack, models, indicator, skip):
    model = models["t2v"]
    plain = sample(model, cfg=4.0, sampler="heun")
    assert torch.equal(sample(teacache(pack, model, 0.0, indicator=indicator, skip=skip), cfg=4.0, sampler="heun"),
                       plain)
    patched = teacache(pack, model, ON, indicator=indicator, skip=skip)
    out = sample(patched, cfg=4.0, sampler="heun")
    report = report_of(patched)
    assert report["indicator"] == indicator and report["skip"] == skip and torch.isfinite(out).all() and clean(model)
    assert report["skipped_steps"]


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_whole_call_skip_returns_the_latent_plus_the_residual(pack, models, kind):
    """With skip "call" a skipped call runs nothing of ComfyUI's model: no block runs, and its output has the video
    latent's channels (I2V v1 concatenates the image latent to the model's input)."""
    model = models[kind]
    dm = model.model.diffusion_model
    blocks = [0]
    dm.double_blocks[0].register_forward_pre_hook(lambda *_: blocks.__setitem__(0, blocks[0] + 1))
    patched = teacache(pack, model, ON, indicator="transformation-rate", skip="call", rule="fitted")
    out = sample(patched, kind=kind, cfg=4.0)
    report = report_of(patched)
    assert report["skipped_steps"] and torch.isfinite(out).all()
    assert blocks[0] == report["computed_calls"] < report["transformer_calls"]


def test_euler_decisions_equal_reference_rule(pack, models):
    for thresh in (0.5, 2.0, 5.0):
        patched = teacache(pack, models["t2v"], thresh)
        sample(patched, steps=12, cfg=4.0)
        report = report_of(patched)
        assert report["steps"] == list(range(12))
        assert report["computed_steps"] == tc.replay(report["rel_l1"], tc.TeaCacheConfig(rel_l1_thresh=thresh))


def test_i2v_v1_concat(pack, models):
    model = models["i2v"]
    plain = sample(model, kind="i2v", cfg=4.0)
    assert torch.equal(sample(teacache(pack, model, 0.0), kind="i2v", cfg=4.0), plain)
    patched = teacache(pack, model, ON)
    sample(patched, kind="i2v", cfg=4.0)
    report = report_of(patched)
    assert report["setting"]["image_condition"] == "concat" and report["model"]["comfyui_model"] == "HunyuanVideoI2V"
    assert report["computed_steps"] == tc.replay(report["rel_l1"], tc.TeaCacheConfig(rel_l1_thresh=ON))
    assert report["skipped_steps"] and clean(model)


@pytest.mark.parametrize("first_frame", ["include", "exclude"])
def test_i2v_v2_token_replace(pack, models, first_frame):
    model = models["t2v"]
    plain = sample(model, cfg=4.0, v2=True)
    assert torch.equal(sample(teacache(pack, model, 0.0, first_frame=first_frame), cfg=4.0, v2=True), plain)
    patched = teacache(pack, model, ON, first_frame=first_frame)
    sample(patched, cfg=4.0, v2=True)
    report = report_of(patched)
    assert report["setting"]["image_condition"] == "token_replace" and report["first_frame"] == first_frame
    assert report["num_branches"] == 2  # only the positive carries guiding_frame_index: ComfyUI splits the calls
    for branch in report["branches"]:
        assert branch["computed_steps"] == tc.replay(branch["rel_l1"], tc.TeaCacheConfig(rel_l1_thresh=ON))
    assert clean(model)


def test_i2v_v2_first_frame_changes_the_indicator(pack, models):
    traces = []
    for first_frame in ("include", "exclude"):
        patched = teacache(pack, models["t2v"], ON, first_frame=first_frame)
        sample(patched, cfg=1.0, v2=True)
        traces.append(report_of(patched)["rel_l1"])
    assert traces[0][1:] != traces[1][1:]
    with pytest.raises(ValueError, match="token replace"):
        sample(teacache(pack, models["t2v"], ON, first_frame="exclude"))


@pytest.mark.skipif(not HAS_15, reason="this ComfyUI has no HunyuanVideo 1.5 (hiddenswitch's 2026-02 source has)")
@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_hunyuanvideo_15(pack, models, cfg):
    model = models["v15"]
    plain = sample(model, kind="v15", cfg=cfg)
    assert torch.equal(sample(teacache(pack, model, 0.0), kind="v15", cfg=cfg), plain)
    patched = teacache(pack, model, ON)
    out = sample(patched, kind="v15", cfg=cfg)
    report = report_of(patched)
    assert report["model_spec"] == "ComfyUI HunyuanVideo 1.5" and report["model"]["comfyui_model"] == "HunyuanVideo15"
    assert report["computed_steps"] == tc.replay(report["rel_l1"], tc.TeaCacheConfig(rel_l1_thresh=ON))
    assert report["skipped_steps"] and torch.isfinite(out).all() and clean(model)


def test_blocks_restored_after_an_error(pack, models):
    model = models["t2v"]
    patched = teacache(pack, model, ON)
    seen = []

    def fail(step, x0, x, total):
        seen.append("forward" in vars(model.model.diffusion_model.double_blocks[0]))
        if step == 2:
            raise RuntimeError("stopped by the test")

    with pytest.raises(RuntimeError, match="stopped by the test"):
        sample(patched, callback=fail)
    assert seen == [True, True, True] and clean(model)
    assert torch.isfinite(sample(patched)).all()


def test_composes_with_weight_patches(pack, tmp_path):
    """A LoRA-like weight patch on the same ModelPatcher (a model of its own: ComfyUI may leave a shared model
    patched after a run): the cache runs on the patched weights."""
    base = H.load(H.write_checkpoint(tmp_path / "lora_base.safetensors", "t2v", C), C)
    unpatched = sample(base, cfg=4.0)
    model = base.clone()
    key = "diffusion_model.double_blocks.0.img_attn.qkv.weight"
    weight = model.model.state_dict()[key]
    model.add_patches({key: (torch.randn(weight.shape, generator=torch.Generator().manual_seed(3)) * 0.05,)}, 1.0)
    plain = sample(model, cfg=4.0)
    assert not torch.equal(plain, unpatched)  # the patch is applied
    assert torch.equal(sample(teacache(pack, model, 0.0), cfg=4.0), plain)
    on = teacache(pack, model, ON)
    sample(on, cfg=4.0)
    assert report_of(on)["skipped_steps"] and clean(model)


def test_calibration_round_trip(pack, models):
    model = models["t2v"]
    plain = sample(model, steps=10, cfg=4.0)
    calibrate = pack.NODE_CLASS_MAPPINGS["TeaCacheCalibrateHunyuanVideo"]().patch(model, "real comfy")[0]
    assert torch.equal(sample(calibrate, steps=10, cfg=4.0), plain)  # outputs unchanged
    sample(calibrate, steps=10, cfg=4.0, seed=2)
    profile = json.loads((pack.base / "teacache_profiles" / "real_comfy.json").read_text())
    assert profile["runs"] == 2 and len(profile["coefficients"]) == 5
    assert profile["model"]["comfyui_model"] == "HunyuanVideo" and profile["model"]["host"] == "comfyui"
    setting = profile["setting"]
    assert (setting["steps"], setting["sampler"], setting["scheduler"], setting["cfg"], setting["shift"],
            setting["resolution"], setting["frames"]) == (10, "euler", "simple", 4.0, 7.0, [64, 64], 9)
    patched = teacache(pack, model, 0.15, profile="real_comfy.json", target_speedup=2.0)
    sample(patched, steps=10, cfg=4.0)
    report = report_of(patched)
    assert report["coefficients"] == profile["coefficients"] and report["target_speedup"] == 2.0
    with pytest.raises(ValueError, match="recorded for"):  # the I2V model is another ComfyUI model class
        sample(teacache(pack, models["i2v"], 0.15, profile="real_comfy.json"), kind="i2v", steps=10, cfg=4.0)
    assert clean(model) and clean(models["i2v"])


def test_headless_workflow(pack, models, tmp_path):
    """The shipped example workflow through ``execution.PromptExecutor``: the text encoders and the VAE (which need
    real weights) are replaced by a conditioning node and SaveLatent; the UNET is the tiny checkpoint."""
    import workflow_runner
    workflow = json.loads((REPO / "comfyui" / "example_workflow_api.json").read_text())
    result = workflow_runner.run(C, workflow, tmp_path, pack)
    assert result["success"], result["messages"]
    plain = workflow_runner.run(C, workflow, tmp_path, pack, thresh=0.0)
    uncached = workflow_runner.run(C, workflow, tmp_path, pack, bypass=True)
    assert torch.equal(plain["latent"], uncached["latent"])
    assert not torch.equal(result["latent"], uncached["latent"])
    assert result["reports"] and result["reports"][-1]["skipped_steps"]
