"""Peer caches in benchmarks/bench_caches.py, wired onto both shipped trained models (HunyuanVideo's transformer and
1.5's; three-step runs): cache-dit's DBCache, DBCache + TaylorSeer and DBPrune, ParaAttention's first-block cache
(each skipped with its reason where not installed), diffusers' FasterCache and PyramidAttentionBroadcast, and
diffusers' FirstBlockCache on 1.5's blocks. Never reusing is exact, reusing really skips, cache-dit's own stats
agree with the benchmark's count, the cache starts empty for every generation, and removing it leaves the plain
transformer."""

import importlib.util
import os
import sys

import pytest
import torch

from conftest import ROOT

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


@pytest.fixture(scope="module", params=["shapes", "scenes"])
def peers(request):
    had_level = "CACHE_DIT_LOG_LEVEL" in os.environ
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # cache-dit reads it on import: no log lines per run
    try:
        pytest.importorskip("cache_dit", reason="cache-dit is not installed (pip install -r requirements-bench.txt)")
    finally:
        if not had_level:
            del os.environ["CACHE_DIT_LOG_LEVEL"]
    bench = _load_bench()
    subject = bench.Trained(STEPS, request.param)
    run = subject.eval_runs[0]
    counters = {k: bench.computed_counter(subject.transformer, k) for k in (1, 2)}  # the last block, the one before
    counters["blocks"] = bench.block_counter(subject.transformer)[0]  # every block that ran, all stacks
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
    counter[0] = counters["blocks"][0] = 0
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
    assert set(stats) == set(bench.block_stacks(peers[1].transformer))
    assert all(s["cached"] == 0 and s["pruned"] == 0 for s in stats.values()), stats


@pytest.mark.parametrize("name,setting", METHODS)
def test_reusing_skips_steps_and_changes_the_output(peers, name, setting):
    bench, subject, _, _, reference = peers
    config = _method(bench, name, setting, ALWAYS)
    blocks = {name: getattr(subject.transformer, name) for name in bench.block_stacks(subject.transformer)}
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
    # the benchmark's "blocks run" counts exactly the blocks whose attention ran ...
    assert peers[3]["blocks"][0] == sum(c[0] for c in ran.values())
    if name != "cachedit-dbprune":  # ... which are all of them once, then the first Fn and last Bn of each stack
        always = config.cache_config.Fn_compute_blocks + config.cache_config.Bn_compute_blocks
        assert peers[3]["blocks"][0] == sum(len(b) + (STEPS - 1) * always for b in blocks.values())
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
    stacks = bench.block_stacks(t)
    blocks = [getattr(t, name) for name in stacks]
    for name, setting in METHODS:
        _generate(peers, _method(bench, name, setting, ALWAYS))
        assert not any(hasattr(t, a) for a in ("_is_cached", "_context_manager", "_original_forward")), name
        assert getattr(t.forward, "__func__", None) is type(t).forward
        assert [getattr(t, name) for name in stacks] == blocks
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


def test_diffusers_first_block_cache_runs_on_1_5s_blocks_once_registered():
    """diffusers 0.38 does not register HunyuanVideo 1.5's block for its block caches; the benchmark registers it
    with the dual-stream block's metadata: then a threshold of 0 is exact and a huge one reuses every later step."""
    from diffusers import FirstBlockCacheConfig

    bench = _load_bench()
    subject = bench.Trained(STEPS, "scenes")
    run = subject.eval_runs[0]
    reference = bench.generate(subject, None, run)[0]
    with pytest.raises(ValueError, match="not registered"):
        bench.generate(subject, FirstBlockCacheConfig(threshold=0.1), run)
    bench.register_hunyuanvideo15_block()
    counter = bench.computed_counter(subject.transformer)
    outputs = {}
    for threshold in (0.0, 1e9):
        counter[0] = 0
        outputs[threshold] = (bench.generate(subject, FirstBlockCacheConfig(threshold=threshold), run)[0], counter[0])
    assert torch.equal(outputs[0.0][0], reference) and outputs[0.0][1] == STEPS
    assert outputs[1e9][1] == 1 and (outputs[1e9][0] - reference).abs().max() > 1e-4
    assert torch.equal(bench.generate(subject, None, run)[0], reference)


@pytest.fixture(scope="module", params=["shapes", "scenes"])
def subject(request):
    bench = _load_bench()
    subject = bench.Trained(STEPS, request.param)
    return bench, subject, bench.generate(subject, None, subject.eval_runs[0])[0]


def _hooks(module):
    return {name: (len(m._forward_pre_hooks), len(m._forward_hooks)) for name, m in module.named_modules()}


def test_para_attention_first_block_cache(subject):
    pytest.importorskip("para_attn", reason="para-attn is not installed (pip install -r requirements-bench.txt)")
    bench, subject, reference = subject
    t, run = subject.transformer, subject.eval_runs[0]
    counter = bench.computed_counter(t)
    hooks = _hooks(t)

    def generate(threshold):
        counter[0] = 0
        out = bench.generate(subject, bench.ParaAttention(threshold), run)[0]
        assert "forward" not in vars(t)  # detached: the class's forward again
        return out, counter[0]

    never, always = generate(0.0), generate(1e9)
    assert torch.equal(never[0], reference) and never[1] == STEPS
    assert always[1] == 1 and (always[0] - reference).abs().max() > 1e-4  # step 0 computed, the others reused
    assert torch.equal(generate(1e9)[0], always[0])  # a fresh cache context per generation
    assert _hooks(t) == hooks
    assert torch.equal(bench.generate(subject, None, run)[0], reference)


def test_para_attentions_own_adapter_fails_as_listed(subject):
    """The error the benchmark lists for ParaAttention's own HunyuanVideo adapter is the one it raises here."""
    pytest.importorskip("para_attn", reason="para-attn is not installed (pip install -r requirements-bench.txt)")
    from para_attn.first_block_cache.diffusers_adapters import apply_cache_on_transformer
    from para_attn.first_block_cache.utils import cache_context, create_cache_context

    bench, subject, _ = subject
    model = type(subject.model).from_pretrained()  # a copy: the adapter patches the transformer for good
    expected = bench.PARA_ATTN_ADAPTER_ERRORS[type(model.transformer).__name__]
    with pytest.raises(Exception) as error:
        apply_cache_on_transformer(model.transformer)
        with cache_context(create_cache_context(residual_diff_threshold=0.1)):
            model.generate(subject.eval_runs[0][0], num_steps=1)
    assert expected.startswith(f"{type(error.value).__name__}: {error.value}"), (error.value, expected)


@pytest.mark.parametrize("kind", ["fastercache", "pab"])
def test_diffusers_attention_reuse_caches(subject, kind):
    """FasterCache and PyramidAttentionBroadcast through the benchmark's TimestepCache: reused attention outputs
    (every block still runs), a different clip, the same clip again on the next generation, a plain transformer
    after."""
    from diffusers import FasterCacheConfig, PyramidAttentionBroadcastConfig

    bench, subject, reference = subject
    t, run = subject.transformer, subject.eval_runs[0]
    if kind == "fastercache":
        def make(now):
            # not the first step (timestep 1000): in range, FasterCache reuses from iteration 0 on, with no cache yet
            return FasterCacheConfig(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(
                -1, 900), current_timestep_callback=now, attention_weight_callback=lambda _: 0.5,
                is_guidance_distilled=True)
    else:
        def make(now):
            return PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1001),
                spatial_attention_block_identifiers=("^transformer_blocks\\.", "^single_transformer_blocks\\."),
                current_timestep_callback=now)
    hooks = _hooks(t)
    blocks = sum(len(getattr(t, name)) for name in bench.block_stacks(t))
    outs = []
    for _ in range(2):
        cache = bench.TimestepCache(make)
        outs.append(bench.generate(subject, cache, run)[0])
        assert cache.calls["attention"] == STEPS * blocks
        assert cache.calls["attention"] - cache.calls["computed"] == blocks  # step 1 of 0, 1, 2 reused
        assert _hooks(t) == hooks
    assert (outs[0] - reference).abs().max() > 1e-4 and torch.equal(outs[0], outs[1])
    assert torch.equal(bench.generate(subject, None, run)[0], reference)
