"""The drop-in's diffusers path end to end: a tiny HunyuanVideoPipeline saved locally (no downloads)."""

import json

import imageio.v3 as iio
import pytest

import teacache_sample_video as tc
from reference_rule import reference_computed_steps
from tiny_diffusers import make_tiny_pipeline


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return make_tiny_pipeline(tmp_path_factory.mktemp("tiny_pipeline"))


def run(pipeline_dir, save, *extra):
    return tc.main(["--diffusers-model", str(pipeline_dir), "--prompt", "a cat walks on the grass",
                    "--video-size", "32", "32", "--video-length", "5", "--infer-steps", "8", "--seed", "3",
                    "--save-path", str(save), *extra])


def test_writes_each_video_with_its_report(pipeline_dir, tmp_path):
    assert run(pipeline_dir, tmp_path, "--num-videos", "2", "--rel-l1-thresh", "0.3") == 0
    videos = sorted(tmp_path.glob("*.mp4"))
    assert len(videos) == 2
    reports = [json.loads(v.with_suffix(".json").read_text()) for v in videos]
    assert sorted(r["seed"] for r in reports) == [3, 4]
    for video, r in zip(videos, reports):
        assert iio.imread(video).shape == (5, 32, 32, 3)
        assert r["num_steps"] == 8 and sorted(r["computed_steps"] + r["skipped_steps"]) == list(range(8))
        assert r["rel_l1_thresh"] == 0.3 and r["diffusers_args"]["diffusers_model"] == str(pipeline_dir)
        assert r["num_branches"] == 1 and r["transformer_calls"] == 8
        assert r["computed_steps"] == reference_computed_steps(r["rel_l1"], 0.3)


def test_true_cfg_reports_two_branches(pipeline_dir, tmp_path):
    assert run(pipeline_dir, tmp_path, "--cfg-scale", "3", "--neg-prompt", "blurry", "--rel-l1-thresh", "0.3") == 0
    (video,) = tmp_path.glob("*.mp4")
    r = json.loads(video.with_suffix(".json").read_text())
    assert r["num_branches"] == 2 and r["transformer_calls"] == 16 and len(r["branches"]) == 2
    for branch in r["branches"]:  # each branch as the reference would decide on its own indicator
        assert branch["computed_steps"] == reference_computed_steps(branch["rel_l1"], 0.3)


def test_threshold_zero_matches_the_plain_pipeline(pipeline_dir, tmp_path):
    import torch
    from diffusers import HunyuanVideoPipeline

    assert run(pipeline_dir, tmp_path, "--rel-l1-thresh", "0") == 0
    (video,) = tmp_path.glob("*.mp4")
    pipe = HunyuanVideoPipeline.from_pretrained(pipeline_dir)
    frames = pipe(prompt="a cat walks on the grass", height=32, width=32, num_frames=5, num_inference_steps=8,
                  generator=torch.Generator("cpu").manual_seed(3), output_type="pt").frames[0]
    plain = tmp_path / "plain.mp4"
    tc.save_video(frames.permute(1, 0, 2, 3), plain)
    assert (iio.imread(video) == iio.imread(plain)).all()


def test_bad_threshold_is_refused(pipeline_dir, tmp_path):
    with pytest.raises(SystemExit) as exc:
        run(pipeline_dir, tmp_path, "--rel-l1-thresh", "-0.5")
    assert exc.value.code == 2 and not any(tmp_path.iterdir())


def test_calibrate_then_target_a_speedup(pipeline_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat walks on the grass\n\na dog runs along a sunny beach\n")
    profile = tmp_path / "profile.json"
    assert run(pipeline_dir, tmp_path / "calib", "--teacache-prompts", str(prompts),
               "--teacache-calibrate", str(profile)) == 0
    p = json.loads(profile.read_text())
    assert p["num_steps"] == 8 and len(p["traces"]) == 2 and len(p["coefficients"]) == 5
    assert p["model"]["class"] == "HunyuanVideoTransformer3DModel" and p["setting"]["video_size"] == [32, 32]
    calib_reports = [json.loads(f.read_text()) for f in (tmp_path / "calib").glob("*.json")]
    assert len(calib_reports) == 2 and all(r["skipped_steps"] == [] for r in calib_reports)

    assert run(pipeline_dir, tmp_path / "fast", "--teacache-profile", str(profile), "--teacache-speedup", "2",
               "--teacache-max-skips", "2", "--teacache-rule", "extrapolate") == 0
    (report,) = [json.loads(f.read_text()) for f in (tmp_path / "fast").glob("*.json")]
    assert report["profile"] == str(profile) and report["target_speedup"] == 2.0
    assert report["coefficients"] == p["coefficients"] and report["rule"] == "extrapolate"
    assert report["max_consecutive_skips"] == 2 and report["ideal_speedup"] > 1


def test_a_profile_for_other_steps_is_refused(pipeline_dir, tmp_path):
    profile = tmp_path / "profile.json"
    assert run(pipeline_dir, tmp_path / "calib", "--teacache-calibrate", str(profile)) == 0
    with pytest.raises(ValueError, match="profile made for 8 steps, this run has 6"):
        run(pipeline_dir, tmp_path / "x", "--teacache-profile", str(profile), "--infer-steps", "6")


@pytest.mark.parametrize("flags,message", [
    (["--teacache-speedup", "2"], "needs --teacache-profile"),
    (["--teacache-speedup", "0.5", "--teacache-profile", "x.json"], "--teacache-speedup"),
    (["--teacache-profile", "missing.json"], "no such file"),
    (["--teacache-schedule", "2", "10", "0"], "INTERVAL must be >= 1"),
    (["--teacache-schedule", "2", "10"], "--teacache-schedule"),
    (["--teacache-schedule", "2", "10", "3", "--teacache-calibrate", "p.json"], "-schedule"),
    (["--teacache-first-frame", "drop"], "--teacache-first-frame"),
])
def test_inconsistent_flags_are_refused_before_loading(pipeline_dir, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        run(pipeline_dir, tmp_path, *flags)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_diffusers_offloading_composes_with_the_cache(pipeline_dir, offload):
    """accelerate's offload hooks replace the transformer's (or every leaf's) forward on the instance; the
    cache must take the same decisions and give the same frames. On this CPU machine the "device" is the CPU
    (the hooks' mechanics are the same as with an accelerator); sequential offload is applied to the transformer
    (accelerate's own sequential offload of the tiny Llama fails on CPU, which has nothing to do with the cache)."""
    import torch
    from accelerate import cpu_offload
    from diffusers import HunyuanVideoPipeline

    def generate(setup):
        pipe = HunyuanVideoPipeline.from_pretrained(pipeline_dir)
        setup(pipe)
        cache = tc.enable_teacache(pipe.transformer, 0.3, num_steps=8)
        frames = pipe(prompt="a cat walks on the grass", height=32, width=32, num_frames=5, num_inference_steps=8,
                      generator=torch.Generator("cpu").manual_seed(3), output_type="pt").frames
        return frames, cache.stats()["skipped_steps"], pipe

    plain, plain_skipped, _ = generate(lambda pipe: None)
    if offload == "model":
        frames, skipped, pipe = generate(lambda pipe: pipe.enable_model_cpu_offload(device="cpu"))
        assert "forward" in vars(pipe.transformer)  # accelerate's hook sits on the instance
    else:
        frames, skipped, pipe = generate(lambda pipe: cpu_offload(pipe.transformer, torch.device("cpu")))
        assert pipe.transformer.transformer_blocks[0].norm1.linear.weight.device.type == "meta"
    assert skipped == plain_skipped != []
    assert torch.equal(frames, plain)


def test_a_fixed_schedule_computes_its_steps_end_to_end(pipeline_dir, tmp_path):
    """--teacache-schedule: HunyuanVideo-1.5's fixed formula instead of the rule, recorded in the report."""
    assert run(pipeline_dir, tmp_path, "--teacache-schedule", "2", "6", "2") == 0
    (video,) = tmp_path.glob("*.mp4")
    report = json.loads(video.with_suffix(".json").read_text())
    assert report["computed_steps"] == tc.fixed_schedule(8, 2, 6, 2) == [0, 1, 2, 4, 6, 7]
    assert report["schedule"] == [2, 6, 2] and len(report["rel_l1"]) == 8
