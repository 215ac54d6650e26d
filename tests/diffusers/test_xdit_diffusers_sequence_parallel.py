"""xDiT (xfuser) sequence parallelism for diffusers' HunyuanVideo, on CPU, with TeaCache.

``tests/support/xdit_diffusers_worker.py`` runs xfuser's own ``xFuserHunyuanVideoTransformer3DWrapper`` (tokens
sharded over two gloo ranks, ulysses attention) under ``torchrun --nproc_per_node=2``, and the plain diffusers
model with the same weights in one process. Checked: both ranks take exactly the single-process decisions
(computed and skipped steps both occur) on the same indicator, because its sums are all-reduced over xfuser's
group, and give the same outputs; without the reduction each rank measures only its shard and the ranks'
indicators differ. (xDiT's output on CPU is a few percent off the plain model's from the first, uncached step on;
with one rank it is identical: the sharded attention path, not the cache, which is why outputs are compared
between ranks and only loosely with the single process.)
Needs xfuser and yunchang (in requirements-test.txt); no HunyuanVideo checkout.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from conftest import ROOT
from support.launch import run_worker
from tinyhv.upstream_cpu import free_port

WORKER = ROOT / "tests" / "support" / "xdit_diffusers_worker.py"
THRESH = 0.3
TIMEOUT_S = 150

pytestmark = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("xfuser", "yunchang")),
                                reason="xDiT sequence parallelism needs the xfuser and yunchang packages")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("xdit")
    run_worker([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                str(WORKER), "--out", str(out), "--teacache", str(THRESH)], "torchrun (xDiT, ulysses 2)", TIMEOUT_S)
    run_worker([sys.executable, str(WORKER), "--single", "--out", str(out), "--teacache", str(THRESH)],
               "single-process worker", TIMEOUT_S)
    load = lambda name: torch.load(out / name, map_location="cpu", weights_only=False)  # noqa: E731
    return load("single.pt"), [load("rank0.pt"), load("rank1.pt")]


def test_every_rank_takes_the_single_process_decisions(results):
    single, ranks = results
    want = single["teacache"]["report"]
    assert want["skipped_steps"] and len(want["computed_steps"]) > 3
    for rank in ranks:
        got = rank["teacache"]["report"]
        assert got["sequence_parallel_reduced"] and not want["sequence_parallel_reduced"]
        assert got["computed_steps"] == want["computed_steps"]
        assert got["rel_l1"][1:] == pytest.approx(want["rel_l1"][1:], rel=1e-2)
    assert ranks[0]["teacache"]["report"]["rel_l1"] == ranks[1]["teacache"]["report"]["rel_l1"]  # one reduced value
    # the ranks' gathered outputs are the same tensor; against the plain model they differ by a few percent
    # already at step 0, which is always computed: that is xDiT's attention path on CPU, not the cache
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["teacache"]["outputs"], ranks[1]["teacache"]["outputs"]))
    step0 = single["teacache"]["outputs"][0]
    assert (ranks[0]["teacache"]["outputs"][0] - step0).abs().max() < 0.1 * step0.abs().max()


def test_without_the_reduction_the_ranks_measure_different_indicators(results):
    _, ranks = results
    a, b = (r["probe"]["report"] for r in ranks)
    assert not a["sequence_parallel_reduced"] and a["skipped_steps"] == b["skipped_steps"] == []
    assert all(abs(x - y) > 1e-3 * max(x, y) for x, y in zip(a["rel_l1"][1:], b["rel_l1"][1:]))
