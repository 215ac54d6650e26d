"""ComfyUI's EasyCache and LazyCache as benchmarks/sampler_caches.py re-implements them: their decisions on toy
trajectories whose values are worked out by hand from the rule (ComfyUI's comfy_extras/nodes_easycache.py), and
their wiring into the shipped model's sampler."""

import importlib.util
import sys

import pytest
import torch

from conftest import ROOT

spec = importlib.util.spec_from_file_location("sampler_caches", ROOT / "benchmarks" / "sampler_caches.py")
sampler_caches = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sampler_caches)

#: sigmas of the toy runs; with shift 1 the default window (0.15 .. 0.95) is sigma <= 0.85 and sigma > 0.05
SIGMAS = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.04]


def drive(cache, call, chunks=None):
    """Calls the cache at each toy sigma with x = sigma everywhere (|Δx| = 0.1 per call); returns (sigmas of the
    calls that reached the model, outputs)."""
    reached, outputs = [], []

    def model(x, sigma):
        reached.append(sigma)
        return call(x, sigma)

    for s in SIGMAS:
        x = torch.full((len(chunks or [0]), 1, 2, 4, 4), s, dtype=torch.float64)
        outputs.append(cache(model, x, s, chunks) if chunks else cache(model, x, s))
    return reached, outputs


def test_percent_to_sigma_is_comfyuis_shifted_flow_sigma():
    assert sampler_caches.percent_to_sigma(0.0, 7.0) == 1.0 and sampler_caches.percent_to_sigma(1.0, 7.0) == 0.0
    assert sampler_caches.percent_to_sigma(0.15, 1.0) == pytest.approx(0.85)
    assert sampler_caches.percent_to_sigma(0.5, 3.0) == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))


def test_easycache_decides_as_its_rule():
    # output 3 sigma + 1: the rate |Δout| / |Δx| is 3; the first two calls in the window compute (no rate yet);
    # then the accumulator 3 |x - x_c| / |out_c|: 0.3/3.1 skip, +0.6/3.1 compute; 0.3/2.5 skip, +0.6/2.5 compute;
    # 0.3/1.9 skip, +0.6/1.9 compute; 0.04 is past the window's end
    cache = sampler_caches.EasyCache(reuse_threshold=0.2, subsample_factor=1).start(shift=1.0)
    reached, outputs = drive(cache, lambda x, s: 3 * x + 1, chunks=["cond"])
    assert reached == [1.0, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1, 0.04]
    assert cache.skipped == 3 and cache.decisions == [True, True, False, True, False, True, False, True]
    # a skipped call returns x + (out_c - x_c) of the last computed call: at 0.6, 0.6 + (3.1 - 0.7)
    assert torch.allclose(outputs[SIGMAS.index(0.6)], torch.tensor(3.0, dtype=torch.float64))
    assert torch.allclose(outputs[SIGMAS.index(0.4)], torch.tensor(0.4 + 2.5 - 0.5, dtype=torch.float64))


def test_easycache_threshold_zero_never_skips():
    cache = sampler_caches.EasyCache(reuse_threshold=0.0, subsample_factor=1).start(shift=1.0)
    reached, _ = drive(cache, lambda x, s: 3 * x + 1, chunks=["cond"])
    assert reached == SIGMAS and cache.skipped == 0


def test_easycache_lets_the_first_batch_chunk_decide_and_caches_each_chunk():
    # ComfyUI batches [uncond, cond]: the unconditional chunk (here: output 0.3 sigma + 1, rate 0.3) decides for
    # both, the accumulator is over the whole batch's mean |output|; the conditional chunk's own change (3 sigma + 1)
    # would compute far more often
    def call(x, s):
        return torch.cat([3 * x[:1] + 1, 0.3 * x[1:] + 1])

    cache = sampler_caches.EasyCache(reuse_threshold=0.02, subsample_factor=1).start(shift=1.0)
    reached, outputs = drive(cache, call, chunks=["cond", "uncond"])
    # by hand: norm_c = mean(3s+1, 0.3s+1); after 0.7 computed (norm 2.155): 0.03/2.155 = 0.0139 skip at 0.6,
    # +0.06/2.155 -> 0.0418 compute at 0.5 (norm 1.825): 0.0164 skip at 0.4, +0.0329 -> compute at 0.3
    # (norm 1.495): 0.0201 compute at 0.2 (norm 1.33): 0.0226 compute at 0.1
    assert reached == [1.0, 0.9, 0.8, 0.7, 0.5, 0.3, 0.2, 0.1, 0.04]
    at = SIGMAS.index(0.6)
    assert torch.allclose(outputs[at][0], torch.tensor(0.6 + (3 * 0.7 + 1 - 0.7), dtype=torch.float64))
    assert torch.allclose(outputs[at][1], torch.tensor(0.6 + (0.3 * 0.7 + 1 - 0.7), dtype=torch.float64))


def test_lazycache_decides_as_its_rule_on_the_denoised_sample():
    # guided velocity v with x0 = x - sigma v = 2 sigma + 1: rate |Δx0| / |Δx| = 2, learnt at the window's first
    # call (LazyCache records before the window too); accumulator 2 |x - x_c| / |x0_c|: at 0.7 0.2/2.6 skip, +0.4/2.6
    # compute at 0.6; 0.2/2.2 skip, +0.4/2.2 compute at 0.4; 0.2/1.8 skip, +0.4/1.8 compute at 0.2; 0.2/1.4 skip
    # at 0.1; 0.04 past the end
    cache = sampler_caches.LazyCache(reuse_threshold=0.2, subsample_factor=1).start(shift=1.0)
    reached, outputs = drive(cache, lambda x, s: (x - (2 * s + 1)) / s)
    assert reached == [1.0, 0.9, 0.8, 0.6, 0.4, 0.2, 0.04]
    assert cache.skipped == 4
    # a skipped call's x0 is x + (x0_c - x_c): at 0.7, 0.7 + (2.6 - 0.8) = 2.5, returned as a velocity
    assert torch.allclose(outputs[SIGMAS.index(0.7)], torch.tensor((0.7 - 2.5) / 0.7, dtype=torch.float64))


@pytest.mark.parametrize("rule", ["EasyCache", "LazyCache"])
def test_on_the_shipped_model_threshold_zero_is_bit_identical_and_the_default_skips(rule):
    from tinyhv.model import TinyHunyuanVideo15

    model = TinyHunyuanVideo15.from_pretrained()
    prompt = "a red circle and a blue square cross horizontally quickly camera left"
    shift = model.config["sampling"]["shift"]
    calls = [0]
    hook = model.transformer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        ref = model.generate(prompt, seed=3, num_steps=20)
        outs = {}
        for thresh in (0.0, 0.2):
            cache = getattr(sampler_caches, rule)(reuse_threshold=thresh).start(shift)
            calls[0] = 0
            outs[thresh] = model.generate(prompt, seed=3, num_steps=20, wrappers={
                "model" if rule == "EasyCache" else "guided": cache})
            assert calls[0] == 20 - cache.skipped
    finally:
        hook.remove()
    assert torch.equal(outs[0.0], ref)
    assert not torch.equal(outs[0.2], ref) and (outs[0.2] - ref).abs().mean() < 0.1
