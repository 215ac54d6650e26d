"""The drop-in inside a Tencent-Hunyuan/HunyuanVideo-1.5 checkout, against its own ``generate.py``.

Needs a checkout of the public repository outside this one: ``HUNYUANVIDEO_15_ROOT=/path/to/HunyuanVideo-1.5``.
Skipped (with that reason) when it is unset, as in CI. Both scripts run whole on CPU through
``tests/support/run_cpu15.py`` (its CPU stand-ins), on a tiny model base with every part ``generate.py`` loads
(``tests/support/tiny_v15_base.py``: text-to-video, image-to-video, a step-distilled image-to-video transformer
and the 720p super-resolution stage), each run once per module.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT as REPO, checkout_root

ROOT = str(checkout_root("HUNYUANVIDEO_15_ROOT", "Tencent-Hunyuan/HunyuanVideo-1.5"))  # the checkout

from reference_rule import decision_margin, reference_computed_steps  # noqa: E402
from support.launch import run_worker  # noqa: E402
from tinyhv.upstream_cpu import free_port  # noqa: E402

RUNNER = REPO / "tests" / "support" / "run_cpu15.py"
DROP_IN = REPO / "teacache_sample_video.py"
STEPS, THRESH = 8, 0.3
TIMEOUT_S = 300


class _Runs:
    """Runs of ``generate.py`` or of ours on the tiny base, each once per module: ``runs(script, *flags, nproc=1)``
    gives ``(output video path, log)``; with ``nproc`` 2 it runs under ``torchrun`` (1.5's sequence parallelism)."""

    def __init__(self, base: dict, image: Path, tmp: Path):
        self.base, self.image, self.tmp, self.done = base, image, tmp, {}

    def __call__(self, script: str, *flags: str, nproc: int = 1):
        key = (script, flags, nproc)
        if key not in self.done:
            out = self.tmp / f"run{len(self.done)}"
            video = out / "video.mp4"
            path = DROP_IN if script == "ours" else Path(ROOT) / "generate.py"
            cli = [str(RUNNER), str(path), *self.base["cli_args"], "--prompt", "a cat walks on the grass",
                   "--resolution", "480p", "--video_length", "5", "--num_inference_steps", str(STEPS), "--seed", "1",
                   "--output_path", str(video), *flags]
            launch = [sys.executable]
            if nproc > 1:
                launch += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master-addr=127.0.0.1",
                           f"--master-port={free_port()}"]
            env = {"HUNYUANVIDEO_15_ROOT": ROOT, "PYTHONPATH": "", "HYVIDEO_CPU_SAVE_FRAMES": str(out)}
            self.done[key] = video, run_worker(launch + cli, f"{script} {' '.join(flags)}", TIMEOUT_S, env)
        return self.done[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from PIL import Image

    tmp = tmp_path_factory.mktemp("v15_generate")
    out = run_worker([sys.executable, "-m", "tests.support.tiny_v15_base", str(tmp / "base")],
                     "tiny 1.5 model base", TIMEOUT_S, {"HUNYUANVIDEO_15_ROOT": ROOT})
    base = json.loads(out[out.index("{"):])
    image = tmp / "first_frame.png"
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype("uint8")).save(image)
    return _Runs(base, image, tmp)


def _frames(video: Path, suffix: str = "") -> np.ndarray:
    """The uint8 frames the run encoded (run_cpu15's HYVIDEO_CPU_SAVE_FRAMES)."""
    return np.load(video.with_name(f"{video.stem}{suffix}.npy"))


def _report(video: Path) -> dict:
    return json.loads(video.with_name(f"{video.stem}_teacache.json").read_text())


def _run_ours(*flags, cwd=None):
    """Ours alone (no model base needed: what is refused before loading), with the CPU stand-ins."""
    env = {**os.environ, "HUNYUANVIDEO_15_ROOT": ROOT, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(RUNNER), str(DROP_IN), *flags], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S, cwd=cwd)


# -- text-to-video -------------------------------------------------------------------------------------------------

def test_calibration_runs_uncached_and_is_identical_to_generate_py(runs):
    profile = runs.tmp / "v15.json"
    video, _ = runs("ours", "--sr", "false", "--teacache_calibrate", str(profile))
    upstream, _ = runs("generate.py", "--sr", "false")
    assert _frames(video).shape == (5, 480, 848, 3) and (_frames(video) == _frames(upstream)).all()
    report = _report(video)
    assert list(report["stages"]) == ["base"] and report["stages"]["base"]["skipped_steps"] == []
    assert report["generate_args"]["prompt"] == "a cat walks on the grass"
    made = json.loads(profile.read_text())
    assert made["num_steps"] == STEPS and made["model"]["class"] == "HunyuanVideo_1_5_DiffusionTransformer"
    assert made["setting"]["transformer_version"] == "480p_t2v" and len(made["coefficients"]) == 5
    assert upstream.with_name("video_config.json").exists()  # generate.py's own saving still happens


def test_skips_by_the_reference_rule_and_warns_that_no_coefficients_are_published(runs):
    video, log = runs("ours", "--sr", "false", "--rel_l1_thresh", str(THRESH))
    report = _report(video)["stages"]["base"]
    assert report["computed_steps"] == reference_computed_steps(report["rel_l1"], THRESH)
    assert report["skipped_steps"], f"retune THRESH: {report['rel_l1']}"
    assert "no coefficients are published for HunyuanVideo 1.5" in log and "base stage: TeaCache" in log
    assert (_frames(video) != _frames(runs("generate.py", "--sr", "false")[0])).any()


def test_a_profile_and_a_target_speedup_pick_the_threshold(runs):
    profile = runs.tmp / "v15.json"
    runs("ours", "--sr", "false", "--teacache_calibrate", str(profile))
    video, log = runs("ours", "--sr", "false", "--teacache_profile", str(profile), "--teacache_speedup", "1.6")
    report = _report(video)["stages"]["base"]
    assert report["profile"] == str(profile) and report["target_speedup"] == 1.6
    # replayed on the uncached trace of this prompt and seed; once a step is skipped the trajectory moves a little
    assert abs(len(report["computed_steps"]) - report["predicted_computed_steps"]) <= 1
    assert report["skipped_steps"]
    assert "no coefficients are published" not in log


def test_under_torchrun_ranks_reduce_over_its_sp_group_and_rank_0_saves(runs):
    single, _ = runs("ours", "--sr", "false", "--rel_l1_thresh", str(THRESH))
    sp, log = runs("ours", "--sr", "false", "--rel_l1_thresh", str(THRESH), nproc=2)
    assert log.count("base stage: TeaCache") == 2  # both ranks denoised
    assert sorted(p.name for p in sp.parent.iterdir()) == ["video.mp4", "video.npy", "video_config.json",
                                                           "video_teacache.json"]
    one, two = _report(single)["stages"]["base"], _report(sp)["stages"]["base"]
    assert decision_margin(one["rel_l1"], THRESH) > 1e-3, "retune THRESH"
    assert two["sequence_parallel_reduced"] and not one["sequence_parallel_reduced"]
    assert two["computed_steps"] == one["computed_steps"]
    assert two["rel_l1"][1:] == pytest.approx(one["rel_l1"][1:], rel=1e-3)
    assert abs(_frames(single).astype(int) - _frames(sp).astype(int)).max() <= 2


def test_with_offloading_and_group_offloading_it_takes_the_same_decisions_and_frames(runs):
    """generate.py's defaults on a small GPU: the model offloaded, the blocks group-offloaded (diffusers' hooks on
    each block, which the cache wraps); on CPU both devices are the CPU, so the frames must not change."""
    plain, _ = runs("ours", "--sr", "false", "--rel_l1_thresh", str(THRESH))
    offloaded, _ = runs("ours", "--sr", "false", "--rel_l1_thresh", str(THRESH), "--offloading", "true",
                        "--group_offloading", "true")
    one, two = _report(plain)["stages"]["base"], _report(offloaded)["stages"]["base"]
    assert _report(offloaded)["generate_args"]["group_offloading"] is True
    assert two["computed_steps"] == one["computed_steps"] and two["skipped_steps"]
    assert (_frames(plain) == _frames(offloaded)).all()


# -- image-to-video, step-distilled (meanflow) ---------------------------------------------------------------------

@pytest.mark.parametrize("distilled", [False, True], ids=["i2v", "i2v_step_distilled"])
def test_image_to_video_threshold_zero_is_identical_and_skips_by_the_rule(runs, distilled):
    flags = ("--sr", "false", "--image_path", str(runs.image), *(("--enable_step_distill",) if distilled else ()))
    (exact, _), (upstream, _) = runs("ours", *flags, "--rel_l1_thresh", "0"), runs("generate.py", *flags)
    assert (_frames(exact) == _frames(upstream)).all()
    thresh = 0.5 if distilled else THRESH  # (the distilled model's indicator is larger: 0.3 skips nothing)
    video, _ = runs("ours", *flags, "--rel_l1_thresh", str(thresh))
    report = _report(video)["stages"]["base"]
    assert report["computed_steps"] == reference_computed_steps(report["rel_l1"], thresh)
    assert report["skipped_steps"], f"retune the threshold: {report['rel_l1']}"
    assert _report(video)["stages"]["base"]["num_steps"] == STEPS
    assert _report(video)["generate_args"]["enable_step_distill"] is distilled


# -- the super-resolution stage ----------------------------------------------------------------------------------

def test_super_resolution_has_its_own_state_and_is_not_cached_by_default(runs):
    (ours, log), (upstream, _) = runs("ours", "--rel_l1_thresh", "0.3"), runs("generate.py")
    stages = _report(ours)["stages"]
    assert list(stages) == ["base", "sr"] and stages["base"]["skipped_steps"]
    assert stages["sr"]["skipped_steps"] == [] and stages["sr"]["num_steps"] == 6  # upstream's 720p SR default
    assert stages["sr"]["model"] != stages["base"]["model"]  # another transformer, another state
    assert "sr stage: TeaCache" in log
    # calibrating traces both stages uncached: generate.py's frames, and a profile per stage
    profile = runs.tmp / "with_sr.json"
    exact, _ = runs("ours", "--teacache_calibrate", str(profile))
    assert _frames(exact).shape[1:3] == (720, 1280) and (_frames(exact) == _frames(upstream)).all()
    base, sr = (json.loads(p.read_text()) for p in (profile, profile.with_name("with_sr_sr.json")))
    assert (base["setting"]["stage"], sr["setting"]["stage"]) == ("base", "sr")
    assert (base["num_steps"], sr["num_steps"]) == (STEPS, 6) and sr["model"] == stages["sr"]["model"]


def test_super_resolution_is_cached_with_its_own_threshold(runs):
    video, _ = runs("ours", "--rel_l1_thresh", "0", "--teacache_sr_rel_l1_thresh", "0.5")
    stages = _report(video)["stages"]
    assert stages["base"]["skipped_steps"] == []
    sr = stages["sr"]
    assert sr["rel_l1_thresh"] == 0.5 and sr["computed_steps"] == reference_computed_steps(sr["rel_l1"], 0.5)
    assert sr["skipped_steps"], f"retune the SR threshold: {sr['rel_l1']}"


# -- refused before any model is loaded -----------------------------------------------------------------------------

def test_the_builtin_cache_is_refused_in_one_line():
    proc = _run_ours("--prompt", "a cat", "--resolution", "480p", "--model_path", "/nonexistent", "--enable_cache")
    assert proc.returncode != 0
    (line,) = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert "--enable_cache" in line and "not combined with TeaCache" in line and "Traceback" not in proc.stderr


def test_an_existing_output_is_not_overwritten(tmp_path):
    taken = tmp_path / "out.mp4"
    taken.write_bytes(b"x")
    proc = _run_ours("--prompt", "a cat", "--resolution", "480p", "--model_path", "/nonexistent", "--output_path",
                     str(taken))
    assert proc.returncode != 0 and f"{taken} exists" in proc.stderr and taken.read_bytes() == b"x"
    assert "Traceback" not in proc.stderr


def test_teacache_flags_in_its_spelling_are_checked_first_and_help_lists_both():
    proc = _run_ours("--prompt", "a cat", "--rel_l1_thresh", "-1")
    assert proc.returncode == 2 and "--rel_l1_thresh" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run_ours("--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in ("--resolution", "--enable_cache", "--rel_l1_thresh", "--teacache_speedup",
                 "--teacache_sr_rel_l1_thresh"):
        assert flag in proc.stdout
