"""Peer caches in benchmarks/bench_caches.py: cache-dit's DBCache, DBCache + TaylorSeer and DBPrune, wired onto the
shipped trained model (a three-step run): never reusing is exact, reusing really skips, cache-dit's own stats agree
with the benchmark's count, the cache starts empty for every generation, and removing it leaves the plain
transformer."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
NEVER, ALWAYS = 0.0, 1e9  # residual_diff_threshold: 0 never reuses (cache-dit: threshold <= 0), 1e9 always does


def _load_bench():
    """benchmarks/bench_caches.py as a fresh module (its sys.path and environment defaults undone after)."""
    path, env = list(sys.path), dict(os.environ)
    try:
        spec = importlib.util.spec_from_file_location("bench_caches_peers", ROOT / "benchmarks" / "bench_caches.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
        os.environ.clear()
        os.environ.update(env)
    return module


@pytest.fixture(scope="module")
def peers():
    had_level = "CACHE_DIT_LOG_LEVEL" in os.environ
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # cache-dit reads it on import: no log lines per run
    try:
        pytest.importorskip("cache_dit", reason="cache-dit is not installed (pip install -r requirements-bench.txt)")
    finally:
        if not had_level:
            del os.environ["CACHE_DIT_LOG_LEVEL"]
    bench = _load_bench()
    subject = bench.Trained(STEPS)
    run = subject.eval_runs[0]
    counters = {k: bench.computed_counter(subject.transformer, k) for k in (1, 2)}
    reference = bench.generate(subject, None, run)[0]
    return bench, subject, run, counters, reference


def _method(bench, name, setting_prefix, threshold):
    """The benchmark's own ``CacheDit`` for ``name`` at a setting starting with ``setting_prefix``, at
    ``threshold``, with one warmup step (cache-dit's default 8 would cover this whole three-step run)."""
    config = next(c for n, s, c in bench.cache_dit_methods(quick=False) if n == name and s.startswith(setting_prefix))
    config.cache_config.residual_diff_threshold = threshold
    config.cache_config.max_warmup_steps = 1
    return config


def _generate(peers, config):
    bench, subject, run, counters, _ = peers
    counter = counters[config.counted_block]
    counter[0] = 0
    out = bench.generate(subject, config, run)[0]
    config.check(counter[0], STEPS)  # the benchmark's count against cache_dit.summary's stats
    return out, counter[0], config.stats


METHODS = [("cachedit-dbcache", "F1B0"), ("cachedit-dbcache", "F1B1"), ("cachedit-dbcache-taylorseer", "F1B0"),
           ("cachedit-dbprune", "F1B0")]


@pytest.mark.parametrize("name,setting", METHODS)
def test_never_reusing_equals_the_uncached_output(peers, name, setting):
    bench, *_, reference = peers
    out, computed, stats = _generate(peers, _method(bench, name, setting, NEVER))
    assert torch.equal(out, reference)
    assert computed == STEPS
    assert set(stats) == {"transformer_blocks", "single_transformer_blocks"}
    assert all(s["cached"] == 0 and s["pruned"] == 0 for s in stats.values()), stats


@pytest.mark.parametrize("name,setting", METHODS)
def test_reusing_skips_steps_and_changes_the_output(peers, name, setting):
    bench, subject, _, _, reference = peers
    config = _method(bench, name, setting, ALWAYS)
    blocks = {"transformer_blocks": subject.transformer.transformer_blocks,
              "single_transformer_blocks": subject.transformer.single_transformer_blocks}
    ran = {stack: [0] for stack in blocks}
    hooks = [block.attn.to_q.register_forward_pre_hook(lambda *_, c=ran[stack]: c.__setitem__(0, c[0] + 1))
             for stack, stack_blocks in blocks.items() for block in stack_blocks]
    try:
        out, computed, stats = _generate(peers, config)
    finally:
        for hook in hooks:
            hook.remove()
    assert computed == 1  # the warmup step; both later steps skipped
    assert not torch.equal(out, reference)
    assert (out - reference).abs().max() > 1e-4
    if name == "cachedit-dbprune":
        # every block call cache-dit counts as not pruned really ran
        assert {k: s["blocks"] - s["pruned"] for k, s in stats.items()} == {k: c[0] for k, c in ran.items()}
        assert {k: s["blocks"] for k, s in stats.items()} == {k: STEPS * len(b) for k, b in blocks.items()}
    else:
        assert all(s["cached"] == STEPS - 1 for s in stats.values()), stats


def test_every_generation_starts_from_an_empty_cache(peers):
    bench, *_ = peers
    config = _method(bench, "cachedit-dbcache-taylorseer", "F1B0", ALWAYS)  # TaylorSeer: the most state
    first, second = _generate(peers, config), _generate(peers, config)
    assert torch.equal(first[0], second[0])
    assert first[1:] == second[1:]


def test_the_transformer_is_plain_after_each_cached_generation(peers):
    bench, subject, run, _, reference = peers
    t = subject.transformer
    blocks = (t.transformer_blocks, t.single_transformer_blocks)
    for name, setting in METHODS:
        _generate(peers, _method(bench, name, setting, ALWAYS))
        assert not any(hasattr(t, a) for a in ("_is_cached", "_context_manager", "_original_forward")), name
        assert getattr(t.forward, "__func__", None) is type(t).forward
        assert (t.transformer_blocks, t.single_transformer_blocks) == blocks
        assert torch.equal(bench.generate(subject, None, run)[0], reference), name


def test_without_cache_dit_the_methods_are_skipped_naming_the_import_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "cache_dit", None)  # import cache_dit raises ModuleNotFoundError
    bench = _load_bench()
    assert list(bench.cache_dit_methods(quick=False)) == []

    class WorkStarted(Exception):
        pass

    def work(*_, **__):
        raise WorkStarted

    monkeypatch.setattr(bench, "Trained", work)
    monkeypatch.setattr(sys, "argv", ["bench_caches.py", "--methods", "cachedit-dbprune", "teacache", "--no-plot",
                                      "--out", str(tmp_path / "t.csv")])
    with pytest.raises(WorkStarted):
        bench.main()
    assert capsys.readouterr().out.splitlines() == [
        "skipping cachedit-dbprune: cache-dit does not import (ModuleNotFoundError: import of cache_dit halted; "
        "None in sys.modules); pip install -r requirements-bench.txt"]
