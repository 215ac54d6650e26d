"""Two processes (torch.distributed, gloo), each holding half of the image tokens, as under sequence parallelism.

With the statistic reduced over the group, both ranks take identical decisions, equal to those of one
process holding the whole tensor; without the reduction their indicators differ (the hang/corruption the
reduction prevents).
"""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import teacache_sample_video as tc
from fake_hunyuan import FakeHunyuanTransformer, make_inputs, sample, timesteps

STEPS, THRESH, WORLD = 20, 0.3, 2


class GroupCoordinatorLike:
    """The interface of xfuser's ``get_sp_group()``: ``all_reduce(tensor) -> tensor``."""

    def all_reduce(self, t):
        dist.all_reduce(t)
        return t


OPTIONS = {"published": {}, "warmup+cap": dict(warmup_steps=3, max_consecutive_skips=1),
           "extrapolate+trace": dict(rule="extrapolate", trace=True), "fitted": dict(rule="fitted", curved=True),
           # the transformation rate's statistics take every 8th token of each shard: 16-token shards take the same
           # tokens as one process does
           "rate": dict(indicator="transformation-rate", tokens=32),
           "first-block-rate": dict(indicator="first-block-rate", tokens=32),
           # decided around the whole call, on each rank's shard of the latent (enabled inside a parallel forward)
           "call": dict(indicator="transformation-rate", skip="call", rule="fitted", curved=True),
           "call residual-rate": dict(indicator="residual-rate", skip="call", rule="fitted", curved=True)}


def run(options, rank=None, process_group=None):
    """A fresh fake transformer with TeaCache (``options``) over ``STEPS`` steps, on the whole image or, with
    ``rank``, on its token shard: the Euler loop, or with ``curved=True`` in ``options`` the transformer called on
    latents ``x + u v + u^2 w`` (u = t / 1000) whose tokens bend differently, so that the fitted rule's gains lie
    inside (0, 1) and differ between shards (only the reduced sums give every rank the same gains). Returns the
    report and the final latents (Euler) or the mean output over the steps (curved)."""
    options = dict(options)
    curved, tokens, thresh = options.pop("curved", False), options.pop("tokens", 24), options.pop("thresh", THRESH)
    model = FakeHunyuanTransformer()
    x, txt = make_inputs(img_tokens=tokens)
    shard = (lambda a: a) if rank is None else (lambda a: a.chunk(WORLD, dim=1)[rank])
    cache = tc.enable_teacache(model, thresh, num_steps=STEPS, process_group=process_group, **options)
    if curved:
        v, w = (shard(make_inputs(img_tokens=tokens, seed=s)[0]) for s in (1, 2))
        out = torch.stack([model(shard(x) + u * v + u * u * w, t.expand(x.shape[0]), text_states=txt)["x"]
                           for t, u in ((t, t / 1000) for t in timesteps(STEPS))]).mean(0)
    else:
        out = sample(model, shard(x), txt, STEPS)
    return cache.report(), out


def _worker(rank, mode, out_dir, options):
    # a file store: no TCP store server in rank 0 that could vanish while rank 1 is still tearing down
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/{mode}.store", rank=rank, world_size=WORLD)
    try:
        group = {"reduced": dist.group.WORLD, "coordinator": GroupCoordinatorLike(), "unreduced": None}[mode]
        report, out = run(options, rank, group)
        torch.save(out, f"{out_dir}/{mode}_{rank}.pt")
        with open(f"{out_dir}/{mode}_{rank}.json", "w") as f:
            json.dump(report, f)
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # Done and in step with the peer: exit without gloo's teardown, which on this CPU build aborted (SIGABRT,
    # "terminate called without an active exception") in about one run in sixty after everything was written.
    os._exit(0)


def _run(mode, tmp_path, options=None):
    mp.start_processes(_worker, args=(mode, str(tmp_path), options or {}), nprocs=WORLD, join=True,
                       start_method="spawn")
    reports = [json.loads((tmp_path / f"{mode}_{r}.json").read_text()) for r in range(WORLD)]
    outs = [torch.load(tmp_path / f"{mode}_{r}.pt") for r in range(WORLD)]
    return reports, torch.cat(outs, dim=1)


@pytest.mark.parametrize("mode,options", [("reduced", "published"), ("coordinator", "published"),
                                          ("reduced", "warmup+cap"), ("reduced", "extrapolate+trace"),
                                          ("reduced", "fitted"), ("reduced", "rate"),
                                          ("reduced", "first-block-rate"), ("reduced", "call"),
                                          ("reduced", "call residual-rate")])
def test_ranks_take_identical_decisions_equal_to_single_process(mode, options, tmp_path):
    (r0, r1), out = _run(mode, tmp_path, OPTIONS[options])
    ref, ref_out = run(OPTIONS[options])
    assert r0["computed_steps"] == r1["computed_steps"] == ref["computed_steps"]
    assert r0["skipped_steps"] == r1["skipped_steps"] == ref["skipped_steps"] != []
    assert r0["rel_l1"] == r1["rel_l1"]
    assert r0["rel_l1"][1:] == pytest.approx(ref["rel_l1"][1:], rel=1e-5)
    assert r0["sequence_parallel_reduced"] and r1["sequence_parallel_reduced"]
    if "residual_rel_l1" in ref:  # calibration traces: every rank records the full-tensor values
        assert r0["residual_rel_l1"] == r1["residual_rel_l1"]
        assert r0["residual_rel_l1"][1:] == pytest.approx(ref["residual_rel_l1"][1:], rel=1e-5)
    if "gains" in ref:  # the fitted rule's gains: fitted on the reduced sums, the same on every rank
        assert ref["gains"] and all(0 < g < 1 for g in ref["gains"])  # real fits, not clipped values
        assert r0["gains"] == r1["gains"] == pytest.approx(ref["gains"], rel=1e-5)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("indicator", ["transformation-rate", "first-block-rate"])
def test_ranks_record_the_single_process_pairwise_distances(indicator, tmp_path):
    # a calibration trace (threshold 0): the distances that replay the rate indicators exactly are reduced too
    options = dict(indicator=indicator, tokens=32, trace=True, thresh=0.0)
    (r0, r1), _ = _run("reduced", tmp_path, options)
    ref, _ = run(options)
    assert r0["pairwise"] == r1["pairwise"] and len(ref["pairwise"]["a"]) == STEPS
    for key in ("a", "b", "a_norm", "b_norm"):
        flat = lambda rows: [v for row in rows for v in (row if isinstance(row, list) else [row])]  # noqa: E731
        assert flat(r0["pairwise"][key]) == pytest.approx(flat(ref["pairwise"][key]), rel=1e-5)


def test_without_reduction_ranks_measure_different_changes(tmp_path):
    (r0, r1), _ = _run("unreduced", tmp_path)
    assert r0["rel_l1"][1:] != pytest.approx(r1["rel_l1"][1:], rel=1e-3)


def test_without_reduction_ranks_fit_different_gains(tmp_path):
    """Without the reduction each rank fits the gain of its own shard (the fake blocks hold no collectives, so
    ranks that drift apart cannot hang here)."""
    (r0, r1), _ = _run("unreduced", tmp_path, OPTIONS["fitted"])
    assert r0["gains"] and r1["gains"] and r0["gains"][0] != pytest.approx(r1["gains"][0], rel=1e-3)


def test_auto_without_xfuser_parallelism_reduces_nothing():
    cache = tc.enable_teacache(FakeHunyuanTransformer(), THRESH, process_group="auto")
    assert cache.report()["sequence_parallel_reduced"] is False
