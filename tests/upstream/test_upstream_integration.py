"""TeaCache on Tencent's own HunyuanVideo code (tiny random weights, CPU).

Needs a checkout of the public Tencent/HunyuanVideo repository outside this one:
``HUNYUANVIDEO_ROOT=/path/to/HunyuanVideo``. Skipped (with that reason) when it is unset, as in CI.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT as REPO, checkout_root

HYV = checkout_root("HUNYUANVIDEO_ROOT", "Tencent/HunyuanVideo")

import imageio.v3 as iio  # noqa: E402
import torch  # noqa: E402

from reference_rule import HYVIDEO, ReferenceTeaCache, reference_computed_steps  # noqa: E402
from support.tiny_checkpoints import make_tiny_model_base  # noqa: E402
from tinyhv.upstream_cpu import hyvideo_cpu as hc  # noqa: E402

RUNNER = REPO / "tests" / "support" / "run_cpu.py"
STEPS = 12

hc.add_hunyuanvideo_to_path()
hc.install_cpu_standins()

import teacache_sample_video as tc  # noqa: E402
from hyvideo.diffusion.schedulers import FlowMatchDiscreteScheduler  # noqa: E402


def denoise(call, inputs, steps=STEPS, outputs=None):
    """Upstream's scheduler, one transformer call per step with batched CFG (batch 2), as upstream."""
    scheduler = FlowMatchDiscreteScheduler(shift=7.0, reverse=True, solver="euler")
    scheduler.set_timesteps(steps)
    kw = dict(inputs)
    x = kw.pop("x")
    kw.pop("t")
    for t in scheduler.timesteps:
        out = call(x, t.expand(x.shape[0]), **kw)["x"]
        if outputs is not None:
            outputs.append(out)
        x = scheduler.step(out, t, x, return_dict=False)[0]
    return x


def model_and_inputs(**overrides):
    model, _ = hc.make_tiny_transformer(seed=0, **overrides)
    return model, hc.make_tiny_inputs(model, batch=2, t=2, h=8, w=8, text_len=8, seed=0)


@torch.no_grad()
def test_threshold_zero_is_bit_identical_to_unpatched():
    model, inputs = model_and_inputs()
    plain_model, _ = model_and_inputs()
    cache = tc.enable_teacache(model, 0.0, num_steps=STEPS)
    outs, plain_outs = [], []
    assert torch.equal(denoise(model, inputs, outputs=outs), denoise(plain_model, inputs, outputs=plain_outs))
    assert all(torch.equal(a, b) for a, b in zip(outs, plain_outs))
    assert cache.stats()["computed_steps"] == list(range(STEPS))


@pytest.mark.parametrize("thresh", [0.1, 0.3, 0.6])
@torch.no_grad()
def test_decisions_and_outputs_match_the_reference_rule(thresh):
    model, inputs = model_and_inputs()
    cache = tc.enable_teacache(model, thresh, num_steps=STEPS)
    outs = []
    final = denoise(model, inputs, outputs=outs)
    ref_model, _ = model_and_inputs()
    ref = ReferenceTeaCache(ref_model, STEPS, thresh, **HYVIDEO)
    ref_outs = []
    ref_final = denoise(ref, inputs, outputs=ref_outs)
    assert [i for i, c in enumerate(ref.decisions) if not c] == cache.stats()["skipped_steps"]
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, ref_final, rtol=1e-5, atol=1e-5)
    if thresh >= 0.3:
        assert cache.stats()["skipped_steps"], "the trajectory should exercise skipping"


@torch.no_grad()
def test_the_second_to_last_step_is_skipped_where_the_reference_skips_it():
    """The reference forces only the first and the last step (its fix of 2024-12-27); 20 steps, as in issue 11."""
    steps = 20
    for thresh in (0.15, 0.3, 0.6, 1.5):
        model, inputs = model_and_inputs()
        cache = tc.enable_teacache(model, thresh, num_steps=steps)
        outs, ref_outs = [], []
        denoise(model, inputs, steps=steps, outputs=outs)
        ref = ReferenceTeaCache(model_and_inputs()[0], steps, thresh, **HYVIDEO)
        denoise(ref, inputs, steps=steps, outputs=ref_outs)
        assert [i for i, c in enumerate(ref.decisions) if c] == cache.stats()["computed_steps"]
        for a, b in zip(outs, ref_outs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        if not ref.decisions[steps - 2]:
            break
    else:
        pytest.fail(f"retune: no threshold skips step {steps - 2}")


@pytest.mark.parametrize("single_blocks", [2, 0])
@torch.no_grad()
def test_skipped_step_adds_exactly_the_cached_residual(single_blocks):
    """Image tokens entering the block stack (img_in out) and leaving it (final_layer in)."""
    model, inputs = model_and_inputs(mm_single_blocks_depth=single_blocks)
    cache = tc.enable_teacache(model, 0.6, num_steps=STEPS)
    seen = []
    model.img_in.register_forward_hook(lambda m, a, out: seen.append([out]))
    model.final_layer.register_forward_pre_hook(lambda m, a: seen[-1].append(a[0]))
    denoise(model, inputs)
    skipped = set(cache.stats()["skipped_steps"])
    assert skipped
    residual = None
    for step, (stack_in, stack_out) in enumerate(seen):
        if step in skipped:
            assert torch.equal(stack_out, stack_in + residual)
        else:
            residual = stack_out - stack_in


@torch.no_grad()
def test_fp8_weights_compose_with_the_cache(tmp_path):
    """upstream's --use-fp8 path: block linears replaced by convert_fp8_linear before the cache wraps the blocks."""
    def fp8_model():
        model, inputs = model_and_inputs()
        return hc.convert_to_fp8_(model, tmp_path / "tiny_fp8.pt"), inputs

    model, inputs = fp8_model()
    assert model.double_blocks[0].img_mod.linear.weight.dtype == torch.float8_e4m3fn
    cache = tc.enable_teacache(model, 0.6, num_steps=STEPS)
    final = denoise(model, inputs)
    ref_model, _ = fp8_model()
    ref = ReferenceTeaCache(ref_model, STEPS, 0.6, **HYVIDEO)
    torch.testing.assert_close(final, denoise(ref, inputs), rtol=1e-5, atol=1e-5)
    assert [i for i, c in enumerate(ref.decisions) if not c] == cache.stats()["skipped_steps"] != []


@torch.no_grad()
def test_accelerate_offload_hooks_compose_with_the_cache():
    """Sequential CPU offload (accelerate's hooks on every leaf module), as --use-cpu-offload installs."""
    from accelerate import cpu_offload

    model, inputs = model_and_inputs()
    cpu_offload(model, execution_device=torch.device("cpu"))
    cache = tc.enable_teacache(model, 0.6, num_steps=STEPS)
    final = denoise(model, inputs)
    plain, _ = model_and_inputs()
    plain_cache = tc.enable_teacache(plain, 0.6, num_steps=STEPS)
    assert torch.equal(final, denoise(plain, inputs))
    assert cache.stats()["skipped_steps"] == plain_cache.stats()["skipped_steps"] != []
    cache.disable()
    assert hasattr(model.double_blocks[0].img_attn_qkv, "_hf_hook")  # offload hooks left in place


# -- the whole CLI ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    return make_tiny_model_base(tmp_path_factory.mktemp("model_base"))


def run_script(script, model_base, save_path, *extra, seed=1):
    env = {**os.environ, **model_base["env"], "PYTHONPATH": ""}
    cmd = [sys.executable, str(RUNNER), str(script), *model_base["cli_args"], "--video-size", "32", "32",
           "--video-length", "5", "--infer-steps", str(STEPS), "--prompt", "a cat walks on the grass",
           "--seed", str(seed), "--flow-reverse", "--save-path", str(save_path), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_writes_every_video_with_a_report(model_base, tmp_path):
    proc = run_script(REPO / "teacache_sample_video.py", model_base, tmp_path, "--num-videos", "3",
                      "--rel-l1-thresh", "0.6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    videos = sorted(tmp_path.glob("*.mp4"))
    assert len(videos) == 3 and len({v.name for v in videos}) == 3
    reports = [json.loads(v.with_suffix(".json").read_text()) for v in videos]
    assert sorted(r["seed"] for r in reports) == [1, 2, 3]
    for r in reports:
        assert r["rel_l1_thresh"] == 0.6 and r["num_steps"] == STEPS
        assert sorted(r["computed_steps"] + r["skipped_steps"]) == list(range(STEPS))
        assert r["skipped_steps"] and r["coefficients"] == list(tc.PUBLISHED_COEFFICIENTS)
        assert r["denoise_time_s"] > 0 and r["upstream_args"]["infer_steps"] == STEPS
        assert r["computed_steps"] == reference_computed_steps(r["rel_l1"], 0.6)
    n = len(reports[0]["computed_steps"])
    assert f"computed {n}/{STEPS} steps, skipped {STEPS - n}" in proc.stderr


def test_cli_threshold_zero_is_identical_to_upstream_sample_video(model_base, tmp_path):
    ours = run_script(REPO / "teacache_sample_video.py", model_base, tmp_path / "ours", "--rel-l1-thresh", "0")
    upstream = run_script(HYV / "sample_video.py", model_base, tmp_path / "upstream")
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert upstream.returncode == 0, upstream.stderr[-3000:]
    (a,), (b,) = list((tmp_path / "ours").glob("*.mp4")), list((tmp_path / "upstream").glob("*.mp4"))
    frames_a, frames_b = iio.imread(a), iio.imread(b)
    assert frames_a.shape == frames_b.shape and (frames_a == frames_b).all()
    assert json.loads(a.with_suffix(".json").read_text())["skipped_steps"] == []


@pytest.mark.parametrize("bad", ["-1", "fast"])
def test_cli_rejects_a_bad_threshold_in_one_line_before_loading(model_base, tmp_path, bad):
    proc = run_script(REPO / "teacache_sample_video.py", model_base, tmp_path, "--rel-l1-thresh", bad)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--rel-l1-thresh" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_cli_calibrates_a_profile_and_hits_a_target_speedup(model_base, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat walks on the grass\na dog runs along a sunny beach\n")
    profile = tmp_path / "profile.json"
    proc = run_script(REPO / "teacache_sample_video.py", model_base, tmp_path / "calib",
                      "--teacache-prompts", str(prompts), "--teacache-calibrate", str(profile))
    assert proc.returncode == 0, proc.stderr[-3000:]
    p = json.loads(profile.read_text())
    assert p["model"]["class"] == "HYVideoDiffusionTransformer" and p["num_steps"] == STEPS
    assert len(p["traces"]) == 2 and len(list((tmp_path / "calib").glob("*.mp4"))) == 2
    proc = run_script(REPO / "teacache_sample_video.py", model_base, tmp_path / "fast",
                      "--teacache-profile", str(profile), "--teacache-speedup", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report,) = [json.loads(f.read_text()) for f in (tmp_path / "fast").glob("*.json")]
    assert report["target_speedup"] == 2.0 and report["coefficients"] == p["coefficients"]
    assert abs(report["predicted_computed_steps"] - STEPS / 2) <= 1
    assert "target 2.0x -> rel_l1_thresh" in proc.stderr
