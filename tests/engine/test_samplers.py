"""Samplers that evaluate the model more than once per step. A step is an interval of the sampler's schedule; with
``reset(num_steps, timesteps=...)`` every call is placed in its step: Heun's corrector at the next noise level and
DPM2's midpoint evaluation are calls of steps, not steps of their own. Decisions are made per call, with the first
and the last step forced as in the published rule; with one call per step they are the reference's exactly.

On the shipped model (tinyhv's Euler, Heun and DPM2 loops), and with diffusers' ``FlowMatchHeunDiscreteScheduler``
driving diffusers' transformer inside ``cache_context`` as its pipelines call it (``HunyuanVideoPipeline`` itself
passes ``sigmas``, which that scheduler does not take)."""

import pytest
import torch

import teacache_sample_video as tc
from tinyhv import TinyHunyuanVideo
from tinyhv.metrics import psnr
from tinyhv.model import flow_sigmas
from tinyhv.random_models import make_inputs, make_transformer

PROMPT = "a big red circle moves left on a dark background"
STEPS = 8


@pytest.fixture(scope="module")
def model():
    return TinyHunyuanVideo.from_pretrained()


def generate(model, thresh=None, calls=None, **kw):
    """A clip, and with a threshold the cache's stats and summary; ``calls`` collects the timestep of every call."""
    cache = None if thresh is None else tc.enable_teacache(model.transformer, thresh)
    hook = model.transformer.register_forward_pre_hook(
        lambda m, a, k: calls.append(float(k["timestep"][0])) if calls is not None else None, with_kwargs=True)
    try:
        clip = model.generate(PROMPT, seed=1, num_steps=STEPS, cache=cache, **kw)
        return clip, (cache.stats() if cache else None), (cache.summary() if cache else None)
    finally:
        hook.remove()
        if cache is not None:
            cache.disable()


@pytest.mark.parametrize("sampler", ["heun", "dpm2"])
def test_two_calls_per_step_finish_with_the_cache_and_an_honest_report(model, sampler):
    plain = generate(model, sampler=sampler)[0]
    calls = []
    zero, off, _ = generate(model, 0.0, calls=calls, sampler=sampler)
    assert len(calls) == 2 * STEPS - 1  # a second call in every step but the last (a plain Euler step to 0)
    assert torch.equal(zero, plain)  # threshold 0: bit-identical
    assert off["transformer_calls"] == len(calls) and off["computed_calls"] == len(calls)
    cached, s, summary = generate(model, 0.6, sampler=sampler)
    assert s["num_branches"] == 1 and s["num_steps"] == STEPS and s["steps_run"] == STEPS
    assert s["transformer_calls"] == len(calls) and 0 < s["computed_calls"] < len(calls)
    sigmas = flow_sigmas(STEPS, model.config["sampling"]["shift"])
    expected = [max(i for i in range(STEPS) if sigmas[i] * 1000 >= t - 1e-3) for t in calls]
    assert s["steps"] == expected  # each call in the schedule interval holding its timestep
    assert sorted(s["computed_steps"] + s["skipped_steps"]) == sorted(expected)
    forced = [c for c in s["steps"] if c in (0, STEPS - 1)]  # every call of the first and the last step computed
    assert forced == [c for c in s["computed_steps"] if c in (0, STEPS - 1)]
    assert f"computed {s['computed_calls']}/{len(calls)} calls" in summary
    assert psnr(cached, plain) > 20


def test_with_one_call_per_step_the_schedule_changes_no_decision(model):
    """Euler with the schedule given takes the reference rule's decisions, as without it."""
    _, told, _ = generate(model, 0.6)  # TinyHunyuanVideo.generate passes the schedule
    cache = tc.enable_teacache(model.transformer, 0.6)
    try:
        model.generate(PROMPT, seed=1, num_steps=STEPS, cache=_Untold(cache))
        untold = cache.stats()
    finally:
        cache.disable()
    assert told["computed_steps"] == untold["computed_steps"] == tc.replay(told["rel_l1"], tc.TeaCacheConfig(0.6))
    assert told["skipped_steps"] and told["steps"] == list(range(STEPS))


class _Untold:
    """A handle that forgets the schedule: ``reset(num_steps)`` only, as a host that does not have it."""

    def __init__(self, cache):
        self.cache = cache

    def reset(self, num_steps, timesteps=None):
        return self.cache.reset(num_steps)


def test_without_the_schedule_a_midpoint_call_is_refused_clearly(model):
    cache = tc.enable_teacache(model.transformer, 0.6)
    try:
        with pytest.raises(RuntimeError, match="reset"):
            model.generate(PROMPT, seed=1, num_steps=STEPS, cache=_Untold(cache), sampler="dpm2")
    finally:
        cache.disable()


def test_a_bad_schedule_is_refused():
    model = make_transformer()
    cache = tc.enable_teacache(model, 0.3)
    with pytest.raises(ValueError, match="one non-increasing timestep per step"):
        cache.reset(4, timesteps=[1000, 750, 500])
    with pytest.raises(ValueError, match="non-increasing"):
        cache.reset(3, timesteps=[500, 750, 1000])
    cache.reset(3, timesteps=[1000.0, 600.0, 300.0, 0.0])  # a trailing terminal value (ComfyUI's sigmas) is fine


def diffusers_heun(model, cache, thresh_steps=STEPS, true_cfg=None):
    """diffusers' Heun scheduler driving the transformer as diffusers' pipelines call it (inside cache_context;
    with ``true_cfg`` a second call per evaluation, in the "uncond" context, as HunyuanVideoPipeline's true CFG)."""
    from diffusers import FlowMatchHeunDiscreteScheduler

    scheduler = FlowMatchHeunDiscreteScheduler(shift=7.0)
    scheduler.set_timesteps(thresh_steps)
    inputs, negative = make_inputs(), make_inputs(seed=7)
    x = inputs["hidden_states"]
    if cache is not None:
        cache.reset(thresh_steps, timesteps=scheduler.timesteps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            with model.cache_context("cond"):
                v = model(**{**inputs, "hidden_states": x, "timestep": t.expand(1)}, return_dict=False)[0]
            if true_cfg is not None:
                with model.cache_context("uncond"):
                    u = model(**{**negative, "hidden_states": x, "timestep": t.expand(1)}, return_dict=False)[0]
                v = u + true_cfg * (v - u)
            x = scheduler.step(v, t, x).prev_sample
    return x, len(scheduler.timesteps)


def test_diffusers_heun_scheduler_runs_with_the_cache():
    plain, calls = diffusers_heun(make_transformer(), None)
    assert calls == 2 * STEPS - 1
    model = make_transformer()
    zero = tc.enable_teacache(model, 0.0)
    assert torch.equal(diffusers_heun(model, zero)[0], plain)
    zero.disable()
    cache = tc.enable_teacache(model, 0.3)
    cached, _ = diffusers_heun(model, cache)
    s = cache.stats()
    assert s["num_branches"] == 1 and s["transformer_calls"] == calls and s["steps_run"] == STEPS
    assert 0 < len(s["skipped_steps"]) and s["computed_calls"] < calls
    assert s["steps"] == [0] + [i for i in range(1, STEPS) for _ in range(2)]  # corrector and predictor at t_i
    assert torch.isfinite(cached).all() and not torch.equal(cached, plain)


def test_diffusers_heun_with_true_cfg_keeps_each_branch_apart():
    """Heun and guidance branches called apart: the repeated timesteps are told apart by the branch names, so each
    branch sees all its 2N-1 calls and decides as a single-branch run fed that branch's calls would."""
    model = make_transformer()
    cache = tc.enable_teacache(model, 0.3)
    plain_model = make_transformer()
    plain, calls = diffusers_heun(plain_model, None, true_cfg=3.0)
    cached, _ = diffusers_heun(model, cache, true_cfg=3.0)
    s = cache.stats()
    assert s["num_branches"] == 2 and s["transformer_calls"] == 2 * calls
    cond, uncond = s["branches"]
    for branch in (cond, uncond):
        assert branch["steps"] == [0] + [i for i in range(1, STEPS) for _ in range(2)]
        assert branch["computed_steps"] == [branch["steps"][i] for i in tc.replay(branch["rel_l1"], tc.TeaCacheConfig(
            0.3), steps=branch["steps"], num_steps=STEPS)]
    assert cond["rel_l1"] != uncond["rel_l1"] and cond["skipped_steps"]
    zero = tc.enable_teacache(plain_model, 0.0)
    assert torch.equal(diffusers_heun(plain_model, zero, true_cfg=3.0)[0], plain)
