"""The decision rule and the block hooks, on a stand-in with upstream's block layout (no checkout needed)."""

import numpy as np
import pytest
import torch

import teacache_sample_video as tc
from fake_hunyuan import FakeHunyuanTransformer, make_inputs, sample, timesteps
from reference_rule import HYVIDEO, ReferenceTeaCache

STEPS = 20


def run(thresh, steps=STEPS, seed=0, **kw):
    model = FakeHunyuanTransformer()
    x, txt = make_inputs(seed=seed)
    cache = tc.enable_teacache(model, thresh, num_steps=steps, **kw)
    outs = []
    final = sample(model, x, txt, steps, outs)
    return model, cache, final, outs


# -- the rule ------------------------------------------------------------------

def test_rescale_is_the_published_polynomial():
    cfg = tc.TeaCacheConfig()
    for x in (0.0, 0.01, 0.05, 0.2):
        expected = sum(c * x ** (4 - i) for i, c in enumerate(tc.PUBLISHED_COEFFICIENTS))
        assert cfg.rescale(x) == pytest.approx(expected, rel=1e-12)
    # its minimum over the indicator's range is about 0.052, the basis of "at most two skips in a row at 0.15"
    xs = np.linspace(0, 0.5, 200001)
    assert np.polyval(tc.PUBLISHED_COEFFICIENTS, xs).min() == pytest.approx(0.0522, abs=5e-4)


def test_decision_forces_only_the_first_and_the_last_step():
    """The reference as fixed on 2024-12-27: step 0 and step ``num_steps - 1`` are forced, nothing else."""
    for step in (0, 19):
        assert tc.teacache_decision(step, 20, 0.0, 0.0, 1e9) == (True, 0.0)
    for step in (1, 10, 18):  # the second-to-last step is decided like any other
        assert tc.teacache_decision(step, 20, 0.0, 0.0, 1e9) == (False, 0.0)
    assert tc.teacache_decision(18, 20, 0.12, 0.06, 0.15) == (True, 0.0)
    assert tc.teacache_decision(2, 20, 0.0, 0.0, 1e9, warmup_steps=3) == (True, 0.0)
    assert tc.teacache_decision(1, 20, 0.0, 0.06, 0.15) == (False, 0.06)
    assert tc.teacache_decision(2, 20, 0.06, 0.06, 0.15) == (False, 0.12)
    assert tc.teacache_decision(3, 20, 0.12, 0.06, 0.15) == (True, 0.0)


def test_at_most_two_skips_in_a_row_at_015_with_published_coefficients():
    rng = np.random.default_rng(0)
    cfg = tc.TeaCacheConfig(0.15)
    for _ in range(200):
        acc, run_len = 0.0, 0
        for step in range(50):
            compute, acc = tc.teacache_decision(step, 50, acc, cfg.rescale(rng.uniform(0, 0.3)), 0.15)
            run_len = 0 if compute else run_len + 1
            assert run_len <= 2


# -- the hooks on a model ----------------------------------------------------

@pytest.mark.parametrize("thresh", [0.05, 0.1, 0.15, 0.3, 1.0])
def test_decisions_and_outputs_equal_reference_rule(thresh):
    model, cache, final, outs = run(thresh)
    ref_model = FakeHunyuanTransformer()
    x, txt = make_inputs()
    ref = ReferenceTeaCache(ref_model, STEPS, thresh, **{**HYVIDEO, "final": "final"})
    ref_outs = []
    sample(ref, x, txt, STEPS, ref_outs)
    stats = cache.stats()
    assert [i for i, c in enumerate(ref.decisions) if c] == stats["computed_steps"]
    assert [i for i, c in enumerate(ref.decisions) if not c] == stats["skipped_steps"]
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    if thresh >= 0.15:
        assert stats["skipped_steps"], "the test trajectory should exercise skipping"


def test_the_second_to_last_step_can_be_skipped_as_the_reference_does():
    """A trajectory on which the rule skips step ``STEPS - 2``: the reference skips it too, and only step 0 and
    the last are forced (the reference's first version, and this project before issue 11, computed it)."""
    for thresh in (0.2, 0.3, 0.45, 1.0):
        _, cache, _, outs = run(thresh)
        if STEPS - 2 in cache.stats()["skipped_steps"]:
            break
    else:
        pytest.fail("no threshold skips the second-to-last step on the test trajectory")
    ref = ReferenceTeaCache(FakeHunyuanTransformer(), STEPS, thresh, **{**HYVIDEO, "final": "final"})
    ref_outs = []
    sample(ref, *make_inputs(), STEPS, ref_outs)
    assert not ref.decisions[STEPS - 2] and ref.decisions[0] and ref.decisions[STEPS - 1]
    assert [i for i, c in enumerate(ref.decisions) if c] == cache.stats()["computed_steps"]
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert tc.replay([None] + [0.0] * (STEPS - 1), tc.TeaCacheConfig(1e9)) == [0, STEPS - 1]


@pytest.mark.parametrize("n_double,n_single", [(2, 2), (2, 0), (1, 0)])  # no singles: residual after doubles
def test_skipped_step_adds_exactly_the_cached_residual(n_double, n_single):
    model = FakeHunyuanTransformer(n_double=n_double, n_single=n_single)
    x, txt = make_inputs()
    plain = FakeHunyuanTransformer(n_double=n_double, n_single=n_single)
    cache = tc.enable_teacache(model, 0.3, num_steps=STEPS)
    ts = timesteps(STEPS)
    residual = None
    for i, t in enumerate(ts):
        calls = model.block_calls()
        out = model(x, t.expand(2), text_states=txt)["x"]
        computed = model.block_calls() > calls
        assert computed == (i in cache.stats()["computed_steps"])
        if computed:
            # a computed step runs every block: 0.75 * (0.5 * ... + k) chain, nothing cached added
            assert model.block_calls() - calls == n_double + n_single
            assert torch.equal(out, plain(x, t.expand(2), text_states=txt)["x"])
            residual = out - x
        else:
            assert torch.equal(out, x + residual)
            assert not torch.allclose(out, plain(x, t.expand(2), text_states=txt)["x"])
        x = x + 0.05 * (out - x)
    assert cache.stats()["skipped_steps"]


@pytest.mark.parametrize("indicator", tc.INDICATORS)
def test_threshold_zero_is_bit_identical_to_unpatched(indicator):
    _, cache, final, outs = run(0.0, indicator=indicator)
    plain = FakeHunyuanTransformer()
    x, txt = make_inputs()
    plain_outs = []
    plain_final = sample(plain, x, txt, STEPS, plain_outs)
    assert torch.equal(final, plain_final)
    assert all(torch.equal(a, b) for a, b in zip(outs, plain_outs))
    assert cache.stats()["computed_steps"] == list(range(STEPS))
    assert cache.stats()["skipped_steps"] == []


def test_skipping_really_saves_block_calls():
    model, cache, _, _ = run(0.3)
    s = cache.stats()
    assert model.block_calls() == 4 * len(s["computed_steps"])
    assert len(s["computed_steps"]) + len(s["skipped_steps"]) == STEPS
    assert cache.report()["ideal_speedup"] == pytest.approx(STEPS / len(s["computed_steps"]))


def test_reset_between_generations_gives_identical_runs():
    model = FakeHunyuanTransformer()
    x, txt = make_inputs()
    cache = tc.enable_teacache(model, 0.3)
    results = []
    for _ in range(2):
        cache.reset(STEPS)
        results.append((sample(model, x, txt, STEPS), cache.stats()["computed_steps"]))
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]


def test_reset_after_an_interrupted_generation_forgets_the_stale_residual():
    model = FakeHunyuanTransformer()
    x, txt = make_inputs()
    cache = tc.enable_teacache(model, 0.3, num_steps=STEPS)
    sample(model, x + 3.0, txt, 7)  # interrupted after 7 of 20 steps
    cache.reset(STEPS)
    interrupted_then_fresh = sample(model, x, txt, STEPS)
    _, _, fresh, _ = run(0.3)
    assert torch.equal(interrupted_then_fresh, fresh)


def test_call_past_expected_steps_raises_instead_of_reusing_stale_residual():
    model = FakeHunyuanTransformer()
    x, txt = make_inputs()
    cache = tc.enable_teacache(model, 0.15, num_steps=3)
    sample(model, x, txt, 3)
    with pytest.raises(RuntimeError, match="step 4 of a 3-step generation.*reset"):
        model(x, torch.full((2,), 10.0), text_states=txt)
    cache.reset(3)  # and after a reset the next generation runs
    sample(model, x, txt, 3)


def test_call_before_reset_raises():
    model = FakeHunyuanTransformer()
    x, txt = make_inputs()
    tc.enable_teacache(model, 0.15)
    with pytest.raises(RuntimeError, match="reset\\(num_steps\\)"):
        model(x, torch.full((2,), 10.0), text_states=txt)


def test_disable_restores_the_modules_exactly():
    model = FakeHunyuanTransformer()
    blocks = list(model.double_blocks) + list(model.single_blocks)
    assert all("forward" not in vars(b) for b in blocks)
    cache = tc.enable_teacache(model, 0.3, num_steps=STEPS)
    assert all("forward" in vars(b) for b in blocks)
    cache.disable()
    assert all("forward" not in vars(b) for b in blocks)
    assert not model._forward_pre_hooks and not model._forward_hooks and not hasattr(model, "_teacache")
    x, txt = make_inputs()
    plain = FakeHunyuanTransformer()
    assert torch.equal(sample(model, x, txt, STEPS), sample(plain, x, txt, STEPS))
    tc.enable_teacache(model, 0.3, num_steps=STEPS)  # can be enabled again


def test_disable_keeps_an_instance_forward_set_before():
    model = FakeHunyuanTransformer()
    block = model.single_blocks[0]
    own = block.forward
    block.forward = own  # an instance-level forward, as FP8 or offload wrappers leave behind
    tc.enable_teacache(model, 0.3, num_steps=STEPS).disable()
    assert vars(block)["forward"] is own


def test_enabling_twice_is_refused():
    model = FakeHunyuanTransformer()
    tc.enable_teacache(model)
    with pytest.raises(ValueError, match="already enabled"):
        tc.enable_teacache(model)


def test_two_instances_never_share_state():
    a, b, alone = FakeHunyuanTransformer(), FakeHunyuanTransformer(), FakeHunyuanTransformer()
    ca, cb = tc.enable_teacache(a, 0.3, num_steps=STEPS), tc.enable_teacache(b, 0.0, num_steps=STEPS)
    c_alone = tc.enable_teacache(alone, 0.3, num_steps=STEPS)
    x, txt = make_inputs()
    for t in timesteps(STEPS):  # a and b interleaved, on different inputs
        out_a = a(x, t.expand(2), text_states=txt)["x"]
        b(x * 2, t.expand(2), text_states=txt)
        assert torch.equal(out_a, alone(x, t.expand(2), text_states=txt)["x"])
    assert cb.stats()["computed_steps"] == list(range(STEPS))
    assert ca.stats()["skipped_steps"] == c_alone.stats()["skipped_steps"] != []


def test_report_contents():
    _, cache, _, _ = run(0.15)
    r = cache.report()
    assert r["rel_l1_thresh"] == 0.15 and r["coefficients"] == list(tc.PUBLISHED_COEFFICIENTS)
    assert r["num_steps"] == STEPS and r["steps_run"] == STEPS
    assert sorted(r["computed_steps"] + r["skipped_steps"]) == list(range(STEPS))
    assert r["rel_l1"][0] is None and all(v > 0 for v in r["rel_l1"][1:])
    assert r["denoise_time_s"] > 0
    assert "computed" in cache.summary() and f"/{STEPS} steps" in cache.summary()
    assert "2411.19108" in r["coefficients_source"] and r["model_spec"] == "test fake of Tencent HunyuanVideo"
    mine = tc.enable_teacache(FakeHunyuanTransformer(), 0.15, coefficients=(1.0, 0.0)).report()
    assert mine["coefficients_source"].startswith("given")


def test_unknown_model_is_refused_clearly():
    with pytest.raises(TypeError, match="block layout"):
        tc.enable_teacache(torch.nn.Linear(2, 2))


def test_a_model_with_the_same_attributes_but_another_class_is_refused_before_anything_is_hooked():
    """The registry matches classes, not attributes: a Flux-layout model (ComfyUI's HunyuanVideo has
    ``double_blocks``/``single_blocks`` too, with blocks that take other arguments) is not taken for Tencent's."""
    class FluxLayout(torch.nn.Module):  # the fake's blocks and attributes, in a class the registry does not serve
        def __init__(self):
            super().__init__()
            fake = FakeHunyuanTransformer()
            self.double_blocks, self.single_blocks = fake.double_blocks, fake.single_blocks

    FluxLayout.__module__ = "comfy.ldm.flux.model"
    model = FluxLayout()
    with pytest.raises(TypeError) as error:
        tc.enable_teacache(model, 0.15)
    message = str(error.value)
    assert "FluxLayout" in message and "HYVideoDiffusionTransformer" in message and "\n" not in message
    assert all("forward" not in vars(b) for b in list(model.double_blocks) + list(model.single_blocks))
    assert not model._forward_pre_hooks and not hasattr(model, "_teacache")


def test_a_subclass_of_a_served_class_is_served_by_its_spec():
    class Derived(FakeHunyuanTransformer):
        pass

    assert tc.find_model(Derived()) is tc.find_model(FakeHunyuanTransformer())


# -- arguments ---------------------------------------------------------------

@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_config_rejects_bad_thresholds(bad):
    with pytest.raises(ValueError, match="rel_l1_thresh"):
        tc.TeaCacheConfig(bad)


@pytest.mark.parametrize("bad", ["-0.1", "abc", "nan", "inf", ""])
def test_cli_threshold_rejects_bad_values(bad):
    parser = tc.add_teacache_args(tc._ArgumentParser(prog="teacache_sample_video.py"))
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--rel-l1-thresh", bad])
    assert exc.value.code == 2


def test_cli_threshold_accepts_values():
    parser = tc.add_teacache_args(tc._ArgumentParser())
    assert parser.parse_args([]).rel_l1_thresh == 0.15
    assert parser.parse_args(["--rel-l1-thresh", "0"]).rel_l1_thresh == 0.0
    assert parser.parse_args(["--rel-l1-thresh", "0.1"]).rel_l1_thresh == 0.1


@pytest.mark.parametrize("flags", [["--teacache-warmup-steps", "0"], ["--teacache-max-skips", "-1"],
                                   ["--teacache-max-skips", "1.5"], ["--teacache-speedup", "0.9"]])
def test_cli_rejects_bad_control_values(flags):
    parser = tc.add_teacache_args(tc._ArgumentParser())
    with pytest.raises(SystemExit):
        parser.parse_args(flags)


@pytest.mark.parametrize("indicator", ["first-block-residual", "first-block-rate"])
def test_first_block_indicators_run_the_first_block_always_and_reuse_the_rest(indicator):
    """The first block runs at every call; a skipped call adds the other blocks' cached residual to its output."""
    model = FakeHunyuanTransformer(n_double=3, n_single=2)
    x, txt = make_inputs()
    cache = tc.enable_teacache(model, 0.3, num_steps=STEPS, indicator=indicator)
    first = model.double_blocks[0]
    residual = None
    for i, t in enumerate(timesteps(STEPS)):
        calls, first_calls = model.block_calls(), first.calls
        out = model(x, t.expand(2), text_states=txt)["x"]
        assert first.calls == first_calls + 1
        computed = model.block_calls() - calls == 5
        assert computed == (i in cache.stats()["computed_steps"])
        after_first = 0.5 * x + first.k
        if computed:
            residual = out - after_first
        else:
            assert model.block_calls() - calls == 1
            assert torch.equal(out, after_first + residual)
        x = x + 0.05 * (out - x)
    assert cache.stats()["skipped_steps"] and cache.report()["coefficients_source"].startswith("none")


def test_first_block_indicators_need_a_second_block_of_the_first_ones_kind():
    model = FakeHunyuanTransformer(n_double=1, n_single=2)
    with pytest.raises(ValueError, match="first-block-rate.*same kind"):
        tc.enable_teacache(model, 0.3, indicator="first-block-rate")
    # refused before anything was hooked
    assert not any("forward" in vars(b) for b in list(model.double_blocks) + list(model.single_blocks))
    assert not model._forward_pre_hooks and not model._forward_hooks
