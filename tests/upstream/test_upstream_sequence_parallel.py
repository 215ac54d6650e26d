"""Upstream HunyuanVideo's xfuser sequence parallelism (ulysses 2 / ring 2) on CPU, with TeaCache.

``tests/support/sp_worker.py`` runs Tencent's own ``parallelize_transformer`` and
``parallel_attention`` under ``torchrun --nproc_per_node=2`` (gloo, CPU stand-ins from
``tinyhv/upstream_cpu/xfuser_cpu.py``) and, as the reference, the same denoising loop in one
process. Each rank saves its own results and TeaCache report. Checked here:

* TeaCache off: both ranks' outputs equal the single-process outputs;
* TeaCache on: every rank takes exactly the single-process decisions (both computed and
  skipped steps occur) and the outputs still match, because the indicator's sums are
  all-reduced over the sequence-parallel group (``process_group="auto"``);
* the fitted rule: every rank fits the single-process gains (its sums are reduced as well);
* without that reduction (``process_group=None``) each rank measures only its own shard
  and the ranks' distances differ: at a threshold between them one rank would skip the
  blocks while the other runs them, and the collectives inside the blocks would hang.
* the whole CLI under ``torchrun`` (ulysses 2): one process's decisions and frames, rank 0
  alone saves, and ``--teacache-calibrate`` writes one process's profile.

Needs ``HUNYUANVIDEO_ROOT`` (a Tencent/HunyuanVideo checkout), xfuser and yunchang.
About 65 s on two CPU cores (seven launches; most of it is imports).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from conftest import ROOT, needs_checkout
from reference_rule import decision_margin
from support.launch import run_worker
from support.tiny_checkpoints import make_tiny_model_base
from tinyhv.upstream_cpu import free_port

WORKER = ROOT / "tests" / "support" / "sp_worker.py"
RUNNER = ROOT / "tests" / "support" / "run_cpu.py"

STEPS = 16
THRESH = 0.6  # 4 of 16 steps skipped; every decision >= 0.1 away from the threshold
RTOL = 1e-5  # max |parallel - single| / max |single|
TIMEOUT_S = 150

pytestmark = [
    needs_checkout("HUNYUANVIDEO_ROOT", "Tencent/HunyuanVideo"),
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("xfuser", "yunchang")),
                       reason="sequence parallelism needs the xfuser and yunchang packages"),
]

SP_CONFIGS = {"ulysses2": (2, 1), "ring2": (1, 2)}


def _worker_args(out: Path) -> list:
    return [str(WORKER), "--out", str(out), "--steps", str(STEPS), "--teacache", str(THRESH), "--probe-no-reduce"]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    run_worker([sys.executable] + _worker_args(out) + ["--single"], "single-process worker", TIMEOUT_S)
    return _load(out / "single.pt")


@pytest.fixture(scope="module", params=list(SP_CONFIGS), ids=list(SP_CONFIGS))
def ranks(request, tmp_path_factory):
    ulysses, ring = SP_CONFIGS[request.param]
    out = tmp_path_factory.mktemp(request.param)
    run_worker([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master-addr=127.0.0.1",
                f"--master-port={free_port()}"] + _worker_args(out)
               + ["--ulysses-degree", str(ulysses), "--ring-degree", str(ring)],
               f"torchrun ({request.param})", TIMEOUT_S)
    results = [_load(out / f"sp_rank{r}.pt") for r in (0, 1)]
    for r, res in enumerate(results):
        assert res["meta"]["rank"] == r and res["meta"]["world_size"] == 2
    return results


def _relerr(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a - ref).abs().max() / ref.abs().max()).item()


def _distances(report: dict) -> list:
    d = report["rel_l1"]
    return [float("nan") if x is None else x for x in d]


def _assert_outputs_match(run: dict, ref: dict, label: str) -> None:
    err = _relerr(run["latents"], ref["latents"])
    assert err < RTOL, f"{label}: final latents differ from single-process by {err:.2e} (relative)"
    for i, (a, b) in enumerate(zip(run["step_outputs"], ref["step_outputs"], strict=True)):
        err = _relerr(a, b)
        assert err < RTOL, f"{label}: step {i} output differs from single-process by {err:.2e} (relative)"


def test_without_teacache_parallel_matches_single(ranks, single):
    for r, res in enumerate(ranks):
        _assert_outputs_match(res["runs"]["off"], single["runs"]["off"], f"rank {r}")
    assert torch.equal(ranks[0]["runs"]["off"]["latents"], ranks[1]["runs"]["off"]["latents"])


def _assert_decisions_clear_of_the_threshold(report: dict) -> None:
    """The reference decisions are not balanced on a rounding error (so a test comparing them cannot flake)."""
    margin = decision_margin(report["rel_l1"], report["rel_l1_thresh"])
    assert margin > 1e-3, f"retune THRESH: a decision is within {margin:.1e} of the threshold"


def test_teacache_ranks_take_the_single_process_decisions(ranks, single):
    ref = single["runs"]["teacache"]["report"]
    assert ref["computed_steps"] and ref["skipped_steps"], f"retune THRESH: single-process decisions {ref}"
    _assert_decisions_clear_of_the_threshold(ref)

    reports = [res["runs"]["teacache"]["report"] for res in ranks]
    for r, rep in enumerate(reports):
        assert rep.get("sequence_parallel_reduced", True), f"rank {r}: 'auto' did not find xfuser's SP group"
        assert (rep["computed_steps"], rep["skipped_steps"]) == (ref["computed_steps"], ref["skipped_steps"]), (
            f"rank {r} decided computed={rep['computed_steps']} skipped={rep['skipped_steps']}, single process "
            f"computed={ref['computed_steps']} skipped={ref['skipped_steps']}")
        got, want = torch.tensor(_distances(rep)[1:]), torch.tensor(_distances(ref)[1:])
        assert _relerr(got, want) < RTOL, f"rank {r}: distances {got.tolist()} vs single {want.tolist()}"
    assert _distances(reports[0])[1:] == _distances(reports[1])[1:], "all-reduced distances must be bitwise equal"


def test_teacache_parallel_output_matches_single(ranks, single):
    ref = single["runs"]["teacache"]
    for r, res in enumerate(ranks):
        _assert_outputs_match(res["runs"]["teacache"], ref, f"rank {r} (TeaCache)")
    # ... and skipping really changed the result (the cache is not a no-op).
    assert _relerr(ref["latents"], single["runs"]["off"]["latents"]) > 1e-3


def test_fitted_rule_ranks_fit_the_single_process_gains(ranks, single):
    """The fitted rule's two sums are reduced too: every rank fits the same gains as one process, and the outputs
    match. On these random weights the residual turns back at every step: every gain fitted is 0, and the rule
    gives reuse's outputs (``tests/engine/test_distributed_decisions.py`` checks gains inside (0, 1) across ranks)."""
    ref = single["runs"]["fitted"]
    assert ref["report"]["gains"] and ref["report"]["skipped_steps"]
    assert ref["report"]["computed_steps"] == single["runs"]["teacache"]["report"]["computed_steps"]
    gains = [res["runs"]["fitted"]["report"]["gains"] for res in ranks]
    assert gains[0] == gains[1], "gains from all-reduced sums must be bitwise equal on every rank"
    for r, res in enumerate(ranks):
        assert res["runs"]["fitted"]["report"]["computed_steps"] == ref["report"]["computed_steps"]
        assert gains[r] == pytest.approx(ref["report"]["gains"], abs=1e-4)
        _assert_outputs_match(res["runs"]["fitted"], ref, f"rank {r} (fitted rule)")
    # gains of 0 from the first fit, before the first skip: the rule falls back to reuse exactly
    assert set(ref["report"]["gains"]) == {0.0} and ref["report"]["gains"]
    assert min(ref["report"]["skipped_steps"]) > ref["report"]["computed_steps"][2]
    _assert_outputs_match(ref, single["runs"]["teacache"], "fitted rule with gains 0 vs reuse")


def test_whole_call_skip_around_the_parallel_forward_takes_the_single_process_decisions(ranks, single):
    """``skip="call"`` enabled after ``parallelize_transformer``: the decision wraps upstream's parallel forward, so a
    skipped step runs none of its collectives on any rank; every rank decides as one process does, with the same
    outputs."""
    ref = single["runs"]["call"]
    assert ref["report"]["skip"] == "call" and ref["report"]["skipped_steps"], ref["report"]
    acc, margin = 0.0, float("inf")  # the live accumulation: no decision within a rounding error of the threshold
    for step, value in enumerate(ref["report"]["rel_l1"]):
        if value is not None and 0 < step < STEPS - 1:
            acc += value
            margin = min(margin, abs(acc - ref["report"]["rel_l1_thresh"]))
            acc = 0.0 if step in ref["report"]["computed_steps"] else acc
    assert margin > 1e-3
    for r, res in enumerate(ranks):
        rep = res["runs"]["call"]["report"]
        assert (rep["computed_steps"], rep["skipped_steps"]) == (ref["report"]["computed_steps"],
                                                                 ref["report"]["skipped_steps"]), f"rank {r}"
        _assert_outputs_match(res["runs"]["call"], ref, f"rank {r} (skip='call')")
    assert ranks[0]["runs"]["call"]["report"]["rel_l1"] == ranks[1]["runs"]["call"]["report"]["rel_l1"]


def test_without_reduction_rank_distances_differ(ranks, single):
    """process_group=None on purpose (every step computed, so the ranks stay in lock step)."""
    from teacache_sample_video import TeaCacheConfig, teacache_decision

    reports = [res["runs"]["probe"]["report"] for res in ranks]
    assert not any(rep.get("sequence_parallel_reduced", False) for rep in reports)
    full = torch.tensor(_distances(single["runs"]["probe"]["report"])[1:])
    per_rank = [torch.tensor(_distances(rep)[1:]) for rep in reports]
    spread = ((per_rank[0] - per_rank[1]).abs() / full).max().item()
    assert spread > 1e-3, f"shard distances should differ: {per_rank[0].tolist()} vs {per_rank[1].tolist()}"
    for r in (0, 1):
        assert _relerr(per_rank[r], full) > 1e-4, f"rank {r} alone should not see the full-tensor distance"

    # Consequence: at step 1 (everything before it was computed, so these distances are
    # exactly what an unreduced TeaCache would see) a threshold between the ranks'
    # rescaled distances makes one rank skip the blocks and the other run them.
    cfg = TeaCacheConfig(1.0)
    x0, x1 = (cfg.rescale(float(d[0])) for d in per_rank)
    thresh = (x0 + x1) / 2
    decisions = [teacache_decision(1, STEPS, 0.0, x, thresh)[0] for x in (x0, x1)]
    assert decisions[0] != decisions[1], (x0, x1)


def _cli_single_and_torchrun(tmp_path, *extra) -> tuple:
    """Our CLI on upstream's tiny model twice: one process (output in tmp_path/single) and ``torchrun
    --nproc_per_node=2 ... --ulysses-degree 2 --ring-degree 1`` (tmp_path/sp; upstream's ``from_pretrained`` sets up
    xfuser, the runner only sends its nccl and ``cuda:N`` to gloo and the CPU). ``{out}`` in ``extra`` becomes the
    run's output directory. Returns the torchrun log."""
    base = make_tiny_model_base(tmp_path / "model_base")
    cli = [str(RUNNER), str(ROOT / "teacache_sample_video.py"), *base["cli_args"], "--video-size", "32", "32",
           "--video-length", "5", "--infer-steps", "12", "--prompt", "a cat walks on the grass", "--seed", "1",
           "--flow-reverse"]
    env = {**base["env"], "PYTHONPATH": ""}
    mine = lambda out: [str(tmp_path / out), *(a.format(out=tmp_path / out) for a in extra)]  # noqa: E731
    run_worker([sys.executable, *cli, "--save-path", *mine("single")], "single-process CLI", TIMEOUT_S, env)
    return run_worker([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master-addr=127.0.0.1",
                       f"--master-port={free_port()}", *cli, "--ulysses-degree", "2", "--ring-degree", "1",
                       "--save-path", *mine("sp")], "torchrun CLI (ulysses 2)", TIMEOUT_S, env)


def test_the_cli_under_torchrun_takes_the_single_process_decisions_and_saves_once(tmp_path):
    """The product as people launch it on several GPUs. Rank 0 alone writes the video and its report; both match
    one process's."""
    log = _cli_single_and_torchrun(tmp_path, "--rel-l1-thresh", str(THRESH))
    assert log.count("prompt 1/1: TeaCache") == 2  # both ranks denoised (and logged it)
    (single_video,), (sp_video,) = (sorted((tmp_path / d).glob("*.mp4")) for d in ("single", "sp"))
    assert sorted(p.suffix for p in (tmp_path / "sp").iterdir()) == [".json", ".mp4"]  # one video, one report
    single, sp = (json.loads(v.with_suffix(".json").read_text()) for v in (single_video, sp_video))
    assert sp["sequence_parallel_reduced"] and not single["sequence_parallel_reduced"]
    assert single["computed_steps"] and single["skipped_steps"]
    _assert_decisions_clear_of_the_threshold(single)
    assert (sp["computed_steps"], sp["skipped_steps"]) == (single["computed_steps"], single["skipped_steps"])
    assert sp["rel_l1"][1:] == pytest.approx(single["rel_l1"][1:], rel=RTOL)
    assert sp["upstream_args"]["ulysses_degree"] == 2
    frames = [iio.imread(v).astype(int) for v in (single_video, sp_video)]
    assert frames[0].shape == frames[1].shape and abs(frames[0] - frames[1]).max() <= 1


def test_the_cli_under_torchrun_calibrates_the_single_process_profile(tmp_path):
    """--teacache-calibrate under sequence parallelism: the traces are reduced over the group, so the profile (written
    by rank 0) holds the full-tensor indicator and residual change of one process, and the same coefficients."""
    _cli_single_and_torchrun(tmp_path, "--teacache-calibrate", "{out}/profile.json")
    single, sp = (json.loads((tmp_path / d / "profile.json").read_text()) for d in ("single", "sp"))
    assert sp["num_steps"] == single["num_steps"] == 12 and len(sp["traces"]) == 1
    for key in ("rel_l1", "residual_rel_l1"):
        got, want = sp["traces"][0][key], single["traces"][0][key]
        assert got[0] is None and want[0] is None and got[1:] == pytest.approx(want[1:], rel=RTOL)
    assert sp["coefficients"] == pytest.approx(single["coefficients"], rel=1e-3, abs=1e-6)
