"""TeaCache on Tencent-Hunyuan/HunyuanVideo-1.5's own transformer (tiny random weights, CPU).

Needs a checkout of the public Tencent-Hunyuan/HunyuanVideo-1.5 repository outside this one:
``HUNYUANVIDEO_15_ROOT=/path/to/HunyuanVideo-1.5``. Skipped (with that reason) when it is unset, as in CI. Its
``hyvideo`` package is not HunyuanVideo's, so the checks run in a process of their own
(``tests/support/v15_worker.py``).
"""

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = os.environ.get("HUNYUANVIDEO_15_ROOT", "").strip()
if not ROOT:
    pytest.skip("HUNYUANVIDEO_15_ROOT is not set (needs a Tencent-Hunyuan/HunyuanVideo-1.5 checkout)",
                allow_module_level=True)

from support.launch import run_worker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "support" / "v15_worker.py"


@pytest.fixture(scope="module", params=["t2v", "i2v", "meanflow"])
def result(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("v15") / "result.json"
    run_worker([sys.executable, str(WORKER), request.param, str(out)], f"1.5 worker ({request.param})", 600,
               {"HUNYUANVIDEO_ROOT": ROOT})
    return json.loads(out.read_text())


def test_the_adapter_takes_the_double_blocks_called_with_keywords(result):
    assert result["adapter"] == {"num_blocks": 3, "version": "1.5", "single_blocks": 0}
    assert result["indicator_vs_block_max_abs"] == 0.0  # exactly what the first block feeds its attention


def test_threshold_zero_is_bit_identical(result):
    assert result["threshold_zero_identical"]


def test_decisions_and_outputs_equal_the_reference_rule(result):
    steps = result["steps"]
    for run in result["runs"]:
        assert run["computed_steps"] == run["reference_computed_steps"], run
        assert run["max_abs_output_diff"] < 1e-5, run
    assert any(len(r["computed_steps"]) < steps for r in result["runs"]), "retune: nothing skipped"
    if result["case"] != "meanflow":  # (8 steps: the tiny model's last steps change too much to skip)
        assert any(steps - 2 not in r["computed_steps"] for r in result["runs"]), "retune: step N-2 never skipped"
