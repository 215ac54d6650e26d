"""TeaCache on Tencent-Hunyuan/HunyuanVideo-1.5's own transformer (tiny random weights, CPU).

Needs a checkout of the public Tencent-Hunyuan/HunyuanVideo-1.5 repository outside this one:
``HUNYUANVIDEO_15_ROOT=/path/to/HunyuanVideo-1.5``. Skipped (with that reason) when it is unset, as in CI. Its
``hyvideo`` package is not HunyuanVideo's, so the checks run in a process of their own
(``tests/support/v15_worker.py``).
"""

import json
import sys

import pytest

from conftest import ROOT as REPO, checkout_root

ROOT = str(checkout_root("HUNYUANVIDEO_15_ROOT", "Tencent-Hunyuan/HunyuanVideo-1.5"))  # the checkout

from support.launch import run_worker  # noqa: E402

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


# -- 1.5's own sequence parallelism: two ranks under torchrun (gloo) -------------------------------------------------

@pytest.fixture(scope="module")
def sp_and_single(tmp_path_factory):
    from tinyhv.upstream_cpu import free_port

    tmp = tmp_path_factory.mktemp("v15_sp")
    env = {"HUNYUANVIDEO_ROOT": ROOT}
    run_worker([sys.executable, str(WORKER), "t2v", str(tmp / "single.json")], "1.5 worker (t2v)", 600, env)
    run_worker([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master-addr=127.0.0.1",
                f"--master-port={free_port()}", str(WORKER), "sp", str(tmp / "sp.json")],
               "1.5 worker under torchrun (sp 2)", 600, env)
    return json.loads((tmp / "sp.json").read_text()), json.loads((tmp / "single.json").read_text())


def test_ranks_reduce_over_its_sp_group_and_take_one_process_decisions(sp_and_single):
    import numpy as np

    sp, single = sp_and_single
    assert (sp["world_size"], sp["sp"]) == (2, 2)
    (reference,) = [r for r in single["runs"] if r["thresh"] == 0.3]
    for rank in sp["reduced"]:
        assert rank["sequence_parallel_reduced"]  # found by process_group="auto"
        assert rank["computed_steps"] == reference["computed_steps"] and len(rank["computed_steps"]) < 20
        got, want = np.array(rank["final_latents"]), np.array(single["final_latents"])
        assert abs(got - want).max() <= 1e-5 * abs(want).max()


def test_without_the_reduction_each_rank_sees_another_indicator(sp_and_single):
    sp, _ = sp_and_single
    first, second = (rank["rel_l1"][1:] for rank in sp["unreduced"])
    assert not any(r["sequence_parallel_reduced"] for r in sp["unreduced"])
    assert all(abs(a - b) > 1e-4 * abs(a) for a, b in zip(first, second))
