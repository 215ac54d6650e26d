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


def test_calibrate_then_run_a_searched_schedule(pipeline_dir, tmp_path):
    profile = tmp_path / "profile.json"
    assert run(pipeline_dir, tmp_path / "calib", "--teacache-calibrate", str(profile)) == 0
    p = json.loads(profile.read_text())
    assert sorted(p["schedules"]) == sorted(tc.RULES) and p["schedule_search"]["runs"] == 1
    steps = p["schedules"]["extrapolate"]["4"]
    assert len(steps) == 4 and steps[0] == 0 and steps[-1] == 7
    assert run(pipeline_dir, tmp_path / "fast", "--teacache-profile", str(profile), "--teacache-budget", "4",
               "--teacache-rule", "extrapolate") == 0
    (report,) = [json.loads(f.read_text()) for f in (tmp_path / "fast").glob("*.json")]
    assert report["computed_steps"] == report["fixed_steps"] == steps and report["budget"] == 4
    with pytest.raises(SystemExit, match="no searched schedule of 9 computed steps"):
        run(pipeline_dir, tmp_path / "x", "--teacache-profile", str(profile), "--teacache-budget", "9")


@pytest.mark.parametrize("indicator", ["transformation-rate", "residual-rate"])
def test_whole_call_skip_calibrates_and_replays_its_own_profile(pipeline_dir, tmp_path, indicator):
    """``--teacache-skip call``: the profile is traced on the call (its residuals and the rate's distances), a
    target speedup picks a threshold on it, its searched schedule of a budget runs as it is, and a run that skips
    only the blocks refuses it."""
    profile = tmp_path / "profile.json"
    call = ["--teacache-indicator", indicator, "--teacache-skip", "call"]
    assert run(pipeline_dir, tmp_path / "calib", *call, "--teacache-calibrate", str(profile)) == 0
    p = json.loads(profile.read_text())
    assert p["skip"] == "call" and p["indicator"] == indicator and p["traces"][0]["pairwise"]
    assert run(pipeline_dir, tmp_path / "budget", *call, "--teacache-profile", str(profile), "--teacache-budget", "4",
               "--teacache-rule", "fitted") == 0
    (report,) = [json.loads(f.read_text()) for f in (tmp_path / "budget").glob("*.json")]
    assert report["skip"] == "call"
    assert report["computed_steps"] == report["fixed_steps"] == p["schedules"]["fitted"]["4"]
    assert run(pipeline_dir, tmp_path / "fast", *call, "--teacache-profile", str(profile), "--teacache-speedup", "2",
               "--teacache-rule", "fitted") == 0
    (report,) = [json.loads(f.read_text()) for f in (tmp_path / "fast").glob("*.json")]
    assert report["skip"] == "call" and report["skipped_steps"] and report["target_speedup"] == 2.0
    assert report["coefficients"] == p["coefficients"] and report["rel_l1_thresh"] > 0
    with pytest.raises(ValueError, match="profile traced with --teacache-skip call, this run uses blocks"):
        run(pipeline_dir, tmp_path / "x", "--teacache-indicator", indicator, "--teacache-profile", str(profile))


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
    (["--teacache-budget", "4"], "needs --teacache-profile"),
    (["--teacache-skip", "call"], "--teacache-skip call decides before the transformer runs"),
    (["--teacache-steps", "0", "3", "3", "7"], "--teacache-steps: fixed_steps must be increasing"),
    (["--teacache-steps", "0", "7", "--teacache-speedup", "2", "--teacache-profile", "x.json"], "--teacache-speedup"),
])
def test_inconsistent_flags_are_refused_before_loading(pipeline_dir, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        run(pipeline_dir, tmp_path, *flags)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--infer-steps", "0"], "--infer-steps must be >= 1"),
    (["--video-length", "0"], "--video-length"),
    (["--video-size", "30", "32"], "multiples of 16"),
    (["--num-videos", "0"], "--num-videos"),
])
def test_bad_sampling_values_are_refused_in_one_line_before_loading(pipeline_dir, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        run(pipeline_dir, tmp_path, *flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not list(tmp_path.iterdir())  # nothing loaded, nothing written


def test_an_unwritable_save_path_is_refused_before_loading(pipeline_dir, tmp_path, capsys):
    taken = tmp_path / "a_file"
    taken.write_text("")
    for save in (taken, taken / "below"):  # a file where the folder should be; a folder below a file
        with pytest.raises(SystemExit) as exc:
            run(pipeline_dir, save)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and "--save-path" in err[0], err


@pytest.mark.parametrize("model,message", [
    ("no such folder", "neither a local pipeline folder nor a hub id"),
    ("owner/name/extra", "neither a local pipeline folder nor a hub id"),
    (".", "no model_index.json"),
])
def test_a_bad_diffusers_model_is_refused_in_one_line(tmp_path, capsys, model, message):
    with pytest.raises(SystemExit) as exc:
        tc.main(["--diffusers-model", model, "--prompt", "x", "--save-path", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and message in err[0], err


def test_without_diffusers_it_names_the_install_command(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['diffusers'] = None; import teacache_sample_video as tc; "
            f"tc.main(['--diffusers-model', 'owner/name', '--prompt', 'x', '--save-path', {str(tmp_path)!r}])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=str(tc.Path(tc.__file__).parent))
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and 'pip install "teacache-hunyuanvideo[diffusers]"' in err[0], err


def test_video_names_have_no_spaces_or_colons(pipeline_dir, tmp_path):
    assert run(pipeline_dir, tmp_path, "--prompt", "a cat: walks / on the grass") == 0
    (video,) = tmp_path.glob("*.mp4")
    assert not set(video.name) & set(" :/\\"), video.name
    assert "a_cat__walks___on_the_grass" in video.name


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        tc.main(["--diffusers-model", "x", "--help"])
    out = capsys.readouterr().out
    assert "(default: 50)" in out and "(default: 0.15)" in out and "(default: reuse)" in out


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
