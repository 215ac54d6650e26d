"""TeaCache on Tencent's own HunyuanVideo-I2V code (tiny random weights, CPU).

Needs a checkout of the public Tencent/HunyuanVideo-I2V repository outside this one:
``HUNYUANVIDEO_I2V_ROOT=/path/to/HunyuanVideo-I2V``. Skipped (with that reason) when it is unset, as in CI. Its
``hyvideo`` package differs from the text-to-video one, so the checks run in a process of their own
(``tests/support/i2v_worker.py``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = os.environ.get("HUNYUANVIDEO_I2V_ROOT", "").strip()
if not ROOT:
    pytest.skip("HUNYUANVIDEO_I2V_ROOT is not set (needs a Tencent/HunyuanVideo-I2V checkout)",
                allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "support" / "i2v_worker.py"


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
