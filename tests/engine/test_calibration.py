"""Calibration profiles, target speedup, warm-up, skip cap and the extrapolating rules (no checkout needed)."""

import json

import numpy as np
import pytest
import torch
from loguru import logger

import teacache_sample_video as tc
from fake_hunyuan import FakeHunyuanTransformer, make_inputs, sample, timesteps

STEPS = 30


def traced_run(model=None, steps=STEPS, seed=0):
    model = model or FakeHunyuanTransformer()
    cache = tc.enable_teacache(model, 0.0, trace=True, num_steps=steps)
    x, txt = make_inputs(seed=seed)
    out = sample(model, x, txt, steps)
    return model, cache, out


def longest_skip_run(skipped):
    run = best = 0
    for i in range(max(skipped, default=-1) + 1):
        run = run + 1 if i in skipped else 0
        best = max(best, run)
    return best


# -- calibration ------------------------------------------------------------------

def test_fit_recovers_known_coefficients_from_a_synthetic_trace():
    known = (120.0, -40.0, 6.0, 0.3, 0.01)
    x = np.random.default_rng(0).uniform(0.005, 0.3, 200)
    fitted = tc.fit_coefficients(x, np.polyval(known, x))
    np.testing.assert_allclose(fitted, known, rtol=1e-6, atol=1e-8)


def test_trace_records_the_indicator_and_the_residual_change_without_changing_the_output():
    _, cache, out = traced_run()
    plain = FakeHunyuanTransformer()
    x, txt = make_inputs()
    assert torch.equal(out, sample(plain, x, txt, STEPS))
    s = cache.stats()
    assert s["skipped_steps"] == [] and len(s["rel_l1"]) == len(s["residual_rel_l1"]) == STEPS
    assert s["rel_l1"][0] is None and s["residual_rel_l1"][0] is None
    assert all(v > 0 for v in s["rel_l1"][1:] + s["residual_rel_l1"][1:])


def test_profile_round_trip_and_refusals(tmp_path):
    model, cache, _ = traced_run()
    setting = {"video_size": [720, 1280], "video_length": 129}
    profile = tc.make_profile([cache.stats()], transformer=model, setting=setting)
    assert profile["num_steps"] == STEPS and len(profile["coefficients"]) == 5
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    loaded = tc.load_profile(path, transformer=FakeHunyuanTransformer(), num_steps=STEPS, setting=setting)
    assert loaded == json.loads(json.dumps(profile))
    with pytest.raises(ValueError, match="profile made for model"):
        tc.load_profile(path, transformer=FakeHunyuanTransformer(n_double=3), num_steps=STEPS)
    with pytest.raises(ValueError, match=f"profile made for {STEPS} steps, this run has 25"):
        tc.load_profile(path, transformer=model, num_steps=25)
    with pytest.raises(ValueError, match="traced with --teacache-first-frame include, this run uses exclude"):
        tc.load_profile(path, transformer=model, num_steps=STEPS, first_frame="exclude")
    assert tc.load_profile(path, transformer=model, num_steps=STEPS, first_frame="include")["first_frame"] == "include"
    messages = []
    sink = logger.add(messages.append, level="WARNING")
    try:
        tc.load_profile(path, transformer=model, num_steps=STEPS, setting={**setting, "video_size": [544, 960]})
    finally:
        logger.remove(sink)
    assert any("video_size=[720, 1280], used here with video_size=[544, 960]" in m for m in messages)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a TeaCache profile"):
        tc.load_profile(tmp_path / "bad.json")


def test_calibrated_coefficients_fit_the_traced_pairs():
    traces = [traced_run(seed=s)[1].stats() for s in range(2)]
    model = FakeHunyuanTransformer()
    profile = tc.make_profile(traces, transformer=model, setting={})
    x = np.array([v for t in traces for v in t["rel_l1"][1:]])
    y = np.array([v for t in traces for v in t["residual_rel_l1"][1:]])
    fitted = np.polyval(profile["coefficients"], x)
    assert np.abs(fitted - y).mean() < np.abs(y.mean() - y).mean()  # better than a constant


# -- target speedup -------------------------------------------------------------

@pytest.mark.parametrize("speedup", [1.25, 1.5, 2.0, 2.5, 3.0])
def test_target_speedup_lands_within_one_computed_step(speedup):
    _, cache, _ = traced_run()
    trace = cache.stats()["rel_l1"]
    config = tc.TeaCacheConfig(coefficients=(0.0, 0.0, 0.0, 1.0, 0.0))  # rescale = identity
    thresh, predicted = tc.threshold_for_speedup([trace], speedup, config)
    replayed = tc.replay(trace, tc.TeaCacheConfig(thresh, config.coefficients))
    assert abs(len(replayed) - STEPS / speedup) <= 1
    assert predicted == len(replayed)


def test_replay_equals_the_live_decisions_on_the_same_trace():
    # the fake model's indicator does not depend on skipping in its first steps; compare on a live run
    model = FakeHunyuanTransformer()
    cache = tc.enable_teacache(model, 0.3, num_steps=STEPS)
    x, txt = make_inputs()
    sample(model, x, txt, STEPS)
    s = cache.stats()
    assert tc.replay(s["rel_l1"], cache.config) == s["computed_steps"]


RATE_INDICATORS = [i for i in tc.INDICATORS if i != "modulated-input"]


def _recorded_calls(model, indicator, skip="blocks"):
    """A traced uncached run with ``indicator``: its stats and the transformer's inputs at each call."""
    calls = []
    cache = tc.enable_teacache(model, 0.0, indicator=indicator, trace=True, num_steps=STEPS, skip=skip)
    x, txt = make_inputs()

    def recording(x, t, text_states=None):
        calls.append((x, t))
        return model(x, t, text_states=text_states)

    sample(recording, x, txt, STEPS)
    stats = cache.stats()
    cache.disable()
    return stats, calls, txt


@pytest.mark.parametrize("indicator,skip", [(i, "blocks") for i in RATE_INDICATORS] +
                         [(i, "call") for i in RATE_INDICATORS if tc.INDICATORS_BY_NAME[i].whole_call])
def test_pairwise_replay_takes_the_decisions_of_a_cached_run(indicator, skip):
    # a cached run fed the traced run's inputs (so that its calls see the same tensors): the replay on the traced
    # run's pairwise distances takes its decisions; the one-step trace alone does not know them
    model = FakeHunyuanTransformer()
    traced, calls, txt = _recorded_calls(model, indicator, skip)
    pairwise = traced["pairwise"]
    assert pairwise["indicator"] == indicator and [len(row) for row in pairwise["a"]] == list(range(STEPS))
    one_step_differs = False
    for thresh in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8):
        cache = tc.enable_teacache(model, thresh, indicator=indicator, num_steps=STEPS, skip=skip)
        for x, t in calls:
            model(x, t, text_states=txt)
        live = cache.stats()["computed_steps"]
        cache.disable()
        config = tc.TeaCacheConfig(thresh, indicator=indicator, skip=skip)
        assert tc.replay(traced["rel_l1"], config, pairwise=pairwise) == live, thresh
        one_step_differs |= tc.replay(traced["rel_l1"], config) != live
    assert one_step_differs
    with pytest.raises(ValueError, match="cannot replay"):
        tc.replay(traced["rel_l1"], tc.TeaCacheConfig(0.1), pairwise=pairwise)


@pytest.mark.parametrize("indicator", RATE_INDICATORS)
def test_a_profile_keeps_the_pairwise_trace_and_its_indicator(indicator, tmp_path):
    model = FakeHunyuanTransformer()
    traced, calls, txt = _recorded_calls(model, indicator)
    profile = tc.make_profile([traced], transformer=model, setting={}, indicator=indicator)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    loaded = tc.load_profile(path, transformer=model, num_steps=STEPS, indicator=indicator)
    assert loaded["indicator"] == indicator and loaded["traces"][0]["pairwise"]["indicator"] == indicator
    with pytest.raises(ValueError, match=f"traced with --teacache-indicator {indicator}, this run uses "
                                         "modulated-input"):
        tc.load_profile(path, transformer=model, num_steps=STEPS, indicator="modulated-input")
    # the target speedup on it: the threshold it picks computes the predicted calls in the cached run
    config = tc.TeaCacheConfig(indicator=indicator)
    thresh, predicted = tc.threshold_for_speedup(loaded["traces"], 2.0, config)
    cache = tc.enable_teacache(model, thresh, indicator=indicator, num_steps=STEPS)
    for x, t in calls:
        model(x, t, text_states=txt)
    assert len(cache.stats()["computed_steps"]) == predicted and abs(predicted - STEPS / 2) <= 3


def test_a_published_indicator_trace_has_no_pairwise_distances():
    _, cache, _ = traced_run()
    assert "pairwise" not in cache.stats()
    profile = tc.make_profile([cache.stats()], transformer=FakeHunyuanTransformer(), setting={})
    assert profile["indicator"] == "modulated-input" and "pairwise" not in profile["traces"][0]


# -- control ------------------------------------------------------------------------

@pytest.mark.parametrize("warmup,cap", [(5, None), (1, 1), (4, 2), (1, 0)])
def test_warmup_and_skip_cap_are_respected(warmup, cap):
    model = FakeHunyuanTransformer()
    cache = tc.enable_teacache(model, 10.0, warmup_steps=warmup, max_consecutive_skips=cap, num_steps=STEPS)
    x, txt = make_inputs()
    sample(model, x, txt, STEPS)
    s = cache.stats()
    skipped = set(s["skipped_steps"])
    assert not skipped & set(range(warmup)) and STEPS - 1 not in skipped
    if cap is not None:
        assert longest_skip_run(skipped) <= cap
    if cap != 0:
        assert skipped


# -- the extrapolating rules --------------------------------------------------------

def run_rules(inputs, rules=tc.RULES, thresh=0.3):
    """Call a fresh fake transformer once per timestep on ``inputs(step, t)`` under each rule: outputs and stats,
    each by rule."""
    outs, stats = {}, {}
    _, txt = make_inputs()
    for rule in rules:
        model = FakeHunyuanTransformer()
        cache = tc.enable_teacache(model, thresh, rule=rule, num_steps=STEPS)
        outs[rule] = [model(inputs(i, t), t.expand(2), text_states=txt)["x"] for i, t in enumerate(timesteps(STEPS))]
        stats[rule] = cache.stats()
    assert len({tuple(s["computed_steps"]) for s in stats.values()}) == 1  # the rule never changes a decision
    return outs, stats


def test_extrapolating_rules_equal_reuse_when_the_extrapolation_term_is_zero():
    """Same latents at every step: both computed residuals are the same tensor, so the extrapolation adds 0."""
    x, _ = make_inputs()
    outs, stats = run_rules(lambda i, t: x)
    s = stats["reuse"]
    assert s["skipped_steps"][-1] > s["computed_steps"][1]  # some skipped after two computed
    for rule in ("extrapolate", "fitted"):
        assert all(torch.equal(a, b) for a, b in zip(outs["reuse"], outs[rule]))


def test_fitted_gain_is_one_on_a_residual_moving_in_a_straight_line():
    """Latents linear in t make the (affine) stack's residual linear in t: the fit finds gain 1, the output is the
    plain extrapolation's, and it differs from reuse."""
    x, v = make_inputs(seed=1)[0], make_inputs(seed=2)[0]
    outs, stats = run_rules(lambda i, t: x + (t / 1000) * v)
    s = stats["fitted"]
    assert s["gains"] == pytest.approx([1.0] * (len(s["computed_steps"]) - 2), abs=1e-4)  # a fit per computed step
    for a, b in zip(outs["fitted"], outs["extrapolate"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert any(not torch.allclose(a, b) for a, b in zip(outs["fitted"], outs["reuse"]))


def test_fitted_gain_falls_to_zero_when_the_residual_turns_back():
    """Latents that zigzag: the extrapolation would have pointed the wrong way at every computed step, so the
    fitted gain is 0 and every skipped step after the first fit adds exactly the last residual (reuse)."""
    x, v = make_inputs(seed=1)[0], make_inputs(seed=2)[0]
    outs, stats = run_rules(lambda i, t: x + 0.05 * (-1) ** i * v)
    s = stats["fitted"]
    computed = s["computed_steps"]
    # the first fit: the first computed step whose two predecessors are an odd number of steps apart (else the
    # two residuals are equal, there is no slope to fit, and the extrapolation adds nothing)
    first_fit = next(c for a, b, c in zip(computed, computed[1:], computed[2:]) if (b - a) % 2)
    after = [step for step in s["skipped_steps"] if step > first_fit]
    assert after and s["gains"] and set(s["gains"]) == {0.0}
    for step in after:
        torch.testing.assert_close(outs["fitted"][step], outs["reuse"][step], rtol=0, atol=1e-6)
    assert any(not torch.allclose(outs["fitted"][i], outs["extrapolate"][i]) for i in after)


@pytest.mark.parametrize("rule,path", [("extrapolate", "sampler"), ("fitted", "sampler"), ("fitted", "curved")])
def test_skipped_steps_add_the_extrapolation_of_the_last_two_residuals_times_the_gain(rule, path):
    """extrapolate: gain 1. fitted: at each computed step, the least-squares gain (clipped to [0, 1]) with which the
    extrapolation from the two computed steps before would have predicted that step's residual. "sampler": the
    Euler loop's latents; "curved": latents quadratic in t, which the straight line overshoots (gains inside (0, 1))."""
    model = FakeHunyuanTransformer()
    cache = tc.enable_teacache(model, 0.3, rule=rule, num_steps=STEPS)
    seen = []  # (timestep, stack in, stack out) per step
    x, txt = make_inputs()
    orig_forward = model.forward

    def spy(x_in, t, text_states=None, return_dict=True):
        out = orig_forward(x_in, t, text_states=text_states, return_dict=return_dict)
        seen.append((float(t[0]), x_in, out["x"]))
        return out

    model.forward = spy
    if path == "sampler":
        sample(model, x, txt, STEPS)
    else:
        v = make_inputs(seed=1)[0]
        for t in timesteps(STEPS):
            model(x + (t / 1000) ** 2 * v, t.expand(2), text_states=txt)
    s = cache.stats()
    computed, checked, gain, gains = s["computed_steps"], 0, 1.0, []
    residual = {c: seen[c][2] - seen[c][1] for c in computed}
    for step in range(STEPS):
        before = [c for c in computed if c < step]
        if len(before) < 2:
            continue
        (t0, r0), (t1, r1) = [(seen[c][0], residual[c]) for c in before[-2:]]
        t, x_in, out = seen[step]
        ahead = (r1 - r0) * ((t - t1) / (t1 - t0))
        if step in computed:
            if rule == "fitted":
                gain = min(max(float((residual[step] - r1).mul(ahead).sum() / ahead.pow(2).sum()), 0.0), 1.0)
                gains.append(gain)
            continue
        torch.testing.assert_close(out, x_in + r1 + gain * ahead, rtol=0, atol=1e-5)
        checked += 1
    assert checked
    assert s.get("gains", []) == pytest.approx(gains, abs=1e-5)
    if path == "curved":
        assert gains and all(0.0 < g < 1.0 for g in gains)  # the values of a real fit, not just a clip


def test_statistics_summed_in_chunks_equal_whole_tensor_sums_and_keep_temporaries_chunk_sized(monkeypatch):
    """The indicator and the fitted gain are summed over chunks (uneven ones here, 97 elements): the same decisions,
    indicator and gains as in one piece, and no tensor the sums allocate is larger than a chunk."""
    from torch.utils._python_dispatch import TorchDispatchMode

    x, v = make_inputs(seed=0)[0], make_inputs(seed=1)[0]
    curved = lambda i, t: x + (t / 1000) ** 2 * v  # noqa: E731 (interior gains: a real fit)
    whole = run_rules(curved, rules=["fitted"])[1]["fitted"]

    class LargestNewTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {a.untyped_storage().data_ptr() for a in args if torch.is_tensor(a)}
            if torch.is_tensor(out) and out.untyped_storage().data_ptr() not in inputs:  # allocated, not a view
                LargestNewTensor.largest = max(LargestNewTensor.largest, out.numel())
            return out

    sums, summed = tc.TeaCache.sums, []  # the method, and the sizes of the tensors it sums

    def watched(self, fn, *tensors):
        summed.extend(t.numel() for t in tensors)
        with LargestNewTensor():
            return sums(self, fn, *tensors)

    monkeypatch.setattr(tc, "CHUNK_ELEMENTS", 97)
    monkeypatch.setattr(tc.TeaCache, "sums", watched)
    chunked = run_rules(curved, rules=["fitted"])[1]["fitted"]
    assert min(summed) > 5 * 97  # many chunks each
    assert chunked["computed_steps"] == whole["computed_steps"] and len(whole["gains"]) > 2
    assert chunked["rel_l1"] == pytest.approx(whole["rel_l1"], rel=1e-5)
    assert chunked["gains"] == pytest.approx(whole["gains"], rel=1e-5)
    assert 0 < LargestNewTensor.largest <= 97


def test_reports_carry_the_options():
    model = FakeHunyuanTransformer()
    cache = tc.enable_teacache(model, 0.2, warmup_steps=3, max_consecutive_skips=2, rule="extrapolate",
                               num_steps=STEPS)
    cache.notes.update(profile="p.json", target_speedup=2.0)
    x, txt = make_inputs()
    sample(model, x, txt, STEPS)
    r = cache.report()
    assert (r["warmup_steps"], r["max_consecutive_skips"], r["rule"]) == (3, 2, "extrapolate")
    assert r["profile"] == "p.json" and r["target_speedup"] == 2.0 and r["ideal_speedup"] >= 1


@pytest.mark.parametrize("kw", [dict(warmup_steps=0), dict(max_consecutive_skips=-1), dict(rule="magic"),
                                dict(coefficients=(float("nan"),)), dict(coefficients=()), dict(first_frame="drop")])
def test_bad_options_are_refused(kw):
    with pytest.raises(ValueError):
        tc.TeaCacheConfig(**kw)


def test_fixed_schedule_is_hunyuanvideo_15s_formula():
    """generate.py's built-in cache: [0, start) + range(start, end, interval) + [end, total)."""
    assert tc.fixed_schedule(50, 11, 45, 4) == list(range(11)) + list(range(11, 45, 4)) + list(range(45, 50))
    assert len(tc.fixed_schedule(50, 11, 45, 4)) == 25  # 25 of 50, as its README says of the defaults
    assert tc.fixed_schedule(8, 11, 45, 4) == list(range(8))  # fewer steps than its start: nothing skipped
    assert tc.fixed_schedule(12, 2, 10, 3) == [0, 1, 2, 5, 8, 10, 11]


def test_a_fixed_schedule_computes_exactly_its_steps_and_reuses_the_residual_otherwise():
    model = FakeHunyuanTransformer()
    cache = tc.enable_teacache(model, 0.0, schedule=(2, 10, 3), num_steps=12)
    x, txt = make_inputs()
    out = sample(model, x, txt, 12)
    assert cache.stats()["computed_steps"] == tc.fixed_schedule(12, 2, 10, 3)
    assert cache.report()["schedule"] == [2, 10, 3] and "fixed schedule 2/10/3" in cache.summary()
    plain = FakeHunyuanTransformer()
    assert not torch.equal(out, sample(plain, x, txt, 12))  # the skipped steps reused a residual
    with pytest.raises(ValueError, match="schedule"):
        tc.TeaCacheConfig(schedule=(2, 10, 0))
