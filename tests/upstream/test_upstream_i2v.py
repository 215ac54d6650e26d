"""TeaCache on Tencent's own HunyuanVideo-I2V code (tiny random weights, CPU).

Needs a checkout of the public Tencent/HunyuanVideo-I2V repository outside this one:
``HUNYUANVIDEO_I2V_ROOT=/path/to/HunyuanVideo-I2V``. Skipped (with that reason) when it is unset, as in CI. Its
``hyvideo`` package differs from the text-to-video one, so everything runs in processes of its own: the
transformer-level checks in ``tests/support/i2v_worker.py``, and the whole CLI (ours and upstream's
``sample_image2video.py``, on a tiny model base with a LLaVA text encoder, a VAE and a LoRA) through
``tests/support/run_cpu.py``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import ROOT as REPO, checkout_root

ROOT = str(checkout_root("HUNYUANVIDEO_I2V_ROOT", "Tencent/HunyuanVideo-I2V"))  # the checkout

from reference_rule import decision_margin, reference_computed_steps  # noqa: E402
from support.launch import run_worker  # noqa: E402
from tinyhv.upstream_cpu import free_port  # noqa: E402

WORKER = REPO / "tests" / "support" / "i2v_worker.py"
RUNNER = REPO / "tests" / "support" / "run_cpu.py"
CLI_STEPS, CLI_THRESH = 12, 0.3
TIMEOUT_S = 300


@pytest.fixture(scope="module", params=["token_replace", "latent_concat"])
def result(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("i2v") / "result.json"
    env = {**os.environ, "HUNYUANVIDEO_ROOT": ROOT}
    proc = subprocess.run([sys.executable, str(WORKER), request.param, str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_cli_recognises_the_checkout_and_takes_its_flags(result):
    assert result["checkout"] == ["Tencent/HunyuanVideo-I2V", "sample_image2video.py"]
    assert result["parsed"] == {"i2v_mode": True, "i2v_resolution": "720p", "i2v_image_path": "first.png",
                                "i2v_condition_type": result["condition"], "i2v_stability": True,
                                "ulysses_degree": 1, "ring_degree": 1, "use_lora": True,
                                "lora_path": "lora.safetensors", "lora_scale": 0.5, "rel_l1_thresh": 0.1,
                                "teacache_rule": "fitted"}


def test_first_frame_exclusion_without_token_replace_is_refused_before_loading(result):
    assert result["exclude_without_token_replace_exit"] == 2


def test_indicator_is_what_the_first_double_block_computes(result):
    assert result["image_condition"] == result["condition"]
    assert result["indicator_vs_block_max_abs"] < 1e-5
    if result["condition"] == "token_replace":  # img_mod(vec) alone would be off on the first frame's tokens
        assert result["plain_modulation_vs_block_rel"] > 1e-3


def test_threshold_zero_is_bit_identical(result):
    assert result["threshold_zero_identical"]


def test_decisions_and_outputs_equal_the_reference_rule(result):
    steps = 20
    for run in result["runs"]:
        assert run["computed_steps"] == run["reference_computed_steps"], run
        assert run["max_abs_output_diff"] < 1e-4, run
    assert any(len(r["computed_steps"]) < steps for r in result["runs"]), "retune: nothing skipped"
    if result["condition"] == "token_replace":  # (latent_concat's tiny trajectory changes too fast at the end)
        assert any(steps - 2 not in r["computed_steps"] for r in result["runs"]), "retune: step 18 never skipped"


def test_first_frame_excluded_takes_the_reference_decisions_on_the_other_frames(result):
    if result["condition"] != "token_replace":
        pytest.skip("first_frame='exclude' is for token_replace")
    run = result["first_frame_excluded"]
    assert run["computed_steps"] == run["reference_computed_steps"] and len(run["computed_steps"]) < 20


def test_fp8_weights_compose_with_the_cache(result):
    run = result["fp8"]
    assert run["weight_dtype"] == "torch.float8_e4m3fn"
    assert run["computed_steps"] == run["reference_computed_steps"] and len(run["computed_steps"]) < 20
    assert run["max_abs_output_diff"] < 1e-4


# -- the whole CLI, against sample_image2video.py -----------------------------------------------------------------

class _Runs:
    """Runs of a script of the checkout (or ours) on the tiny model base, each once per module: ``runs(script,
    condition, *flags, nproc=1)`` gives ``(output directory, log)``. With ``nproc`` 2 it runs under ``torchrun``."""

    def __init__(self, base: dict, image: Path, tmp: Path):
        self.base, self.image, self.tmp, self.done = base, image, tmp, {}

    def __call__(self, script: str, condition: str, *flags: str, nproc: int = 1):
        key = (script, condition, flags, nproc)
        if key not in self.done:
            out = self.tmp / f"run{len(self.done)}"
            path = REPO / script if script == "teacache_sample_video.py" else Path(ROOT) / script
            cli = [str(RUNNER), str(path), *self.base["cli_args"], "--i2v-condition-type", condition,
                   "--i2v-dit-weight", self.base["dit_weight"][condition], "--i2v-image-path", str(self.image),
                   "--i2v-resolution", "360p", "--i2v-stability", "--video-length", "5",
                   "--infer-steps", str(CLI_STEPS), "--prompt", "a cat walks on the grass", "--seed", "1",
                   "--flow-reverse", "--save-path", str(out), *flags]
            launch = [sys.executable]
            if nproc > 1:
                launch += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master-addr=127.0.0.1",
                           f"--master-port={free_port()}"]
            env = {**self.base["env"], "HUNYUANVIDEO_ROOT": ROOT, "PYTHONPATH": "", "ALLOW_RESIZE_FOR_SP": "1",
                   "HYVIDEO_CPU_SAVE_FRAMES": str(out)}
            self.done[key] = out, run_worker(launch + cli, f"{script} {' '.join(flags)}", TIMEOUT_S, env)
        return self.done[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from PIL import Image

    tmp = tmp_path_factory.mktemp("i2v_cli")
    run_worker([sys.executable, str(WORKER), "model-base", str(tmp / "base"), str(tmp / "base.json")],
               "tiny I2V model base", TIMEOUT_S, {"HUNYUANVIDEO_ROOT": ROOT})
    image = tmp / "first_frame.png"  # 4:3, so the 360p bucket is 416 x 544 (1768 image tokens at 5 frames)
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype("uint8")).save(image)
    return _Runs(json.loads((tmp / "base.json").read_text()), image, tmp)


def _video(out: Path):
    """The frames the run encoded (exact uint8, see run_cpu's HYVIDEO_CPU_SAVE_FRAMES) and its report."""
    (video,) = sorted(out.glob("*.mp4"))
    report = video.with_suffix(".json")
    frames = np.load(video.with_suffix(".npy"))
    assert frames.shape == iio.imread(video).shape
    return frames, json.loads(report.read_text()) if report.exists() else None


@pytest.mark.parametrize("condition", ["token_replace", "latent_concat"])
def test_cli_threshold_zero_is_identical_to_sample_image2video(runs, condition):
    (ours, report), (upstream, _) = (_video(runs(script, condition, *flags)[0]) for script, flags in (
        ("teacache_sample_video.py", ("--rel-l1-thresh", "0")), ("sample_image2video.py", ())))
    frames = 5 if condition == "token_replace" else 1  # upstream drops latent_concat's first 4 decoded frames
    assert ours.shape == upstream.shape == (frames, 416, 544, 3) and (ours == upstream).all()
    assert report["skipped_steps"] == [] and report["upstream_args"]["i2v_condition_type"] == condition


@pytest.mark.parametrize("condition", ["token_replace", "latent_concat"])
def test_cli_skips_by_the_reference_rule_and_warns_until_calibrated(runs, condition):
    out, log = runs("teacache_sample_video.py", condition, "--rel-l1-thresh", str(CLI_THRESH))
    frames, report = _video(out)
    assert report["computed_steps"] == reference_computed_steps(report["rel_l1"], CLI_THRESH)
    assert report["skipped_steps"], f"retune CLI_THRESH: {report['rel_l1']}"
    assert report["model"]["image_condition"] == condition
    assert f"no coefficients are published for image-to-video ({condition})" in log
    exact, _ = _video(runs("teacache_sample_video.py", condition, "--rel-l1-thresh", "0")[0])
    assert (frames != exact).any()  # the skipped steps changed the video (slightly)


def test_cli_lora_composes_with_the_cache(runs):
    lora = ("--use-lora", "--lora-path", runs.base["lora"], "--lora-scale", "1.0")
    (ours, _), (upstream, _), (without, _) = (_video(runs(script, "token_replace", *flags)[0]) for script, flags in (
        ("teacache_sample_video.py", (*lora, "--rel-l1-thresh", "0")), ("sample_image2video.py", lora),
        ("sample_image2video.py", ())))
    assert (ours == upstream).all() and (ours != without).any()
    out, _ = runs("teacache_sample_video.py", "token_replace", *lora, "--rel-l1-thresh", str(CLI_THRESH))
    _, report = _video(out)
    assert report["skipped_steps"] and report["upstream_args"]["use_lora"]
    assert report["computed_steps"] == reference_computed_steps(report["rel_l1"], CLI_THRESH)


@pytest.mark.parametrize("degrees", [("2", "1"), ("1", "2")], ids=["ulysses2", "ring2"])
def test_cli_under_torchrun_takes_one_process_decisions_and_rank_0_saves(runs, degrees):
    flags = ("--rel-l1-thresh", str(CLI_THRESH))
    single_out, _ = runs("teacache_sample_video.py", "token_replace", *flags)
    sp_out, log = runs("teacache_sample_video.py", "token_replace", *flags, "--ulysses-degree", degrees[0],
                       "--ring-degree", degrees[1], nproc=2)
    assert log.count("prompt 1/1: TeaCache") == 2  # both ranks denoised
    assert sorted(p.suffix for p in sp_out.iterdir()) == [".json", ".mp4", ".npy"]  # rank 0 alone saved
    (single, single_report), (sp, sp_report) = _video(single_out), _video(sp_out)
    assert decision_margin(single_report["rel_l1"], CLI_THRESH) > 1e-3, "retune CLI_THRESH"
    assert sp_report["sequence_parallel_reduced"] and not single_report["sequence_parallel_reduced"]
    assert sp_report["computed_steps"] == single_report["computed_steps"]
    assert sp_report["rel_l1"][1:] == pytest.approx(single_report["rel_l1"][1:], rel=1e-5)
    assert abs(single.astype(int) - sp.astype(int)).max() <= 1
