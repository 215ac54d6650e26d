"""``skip="call"``: the transformation rate decides before the transformer runs; a skipped call runs nothing of the
model and returns the latent plus the cached output-minus-latent residual, in the computed calls' structure."""

import pytest
import torch

import teacache_sample_video as tc
from fake_hunyuan import FakeHunyuanTransformer, make_inputs, sample, timesteps
from tinyhv.random_models import make_i2v_transformer, make_transformer
from tinyhv.random_models import make_inputs as diffusers_inputs
from tinyhv.random_models import sample as diffusers_sample

STEPS, THRESH = 20, 0.3
CALL = dict(indicator="transformation-rate", skip="call")
WHOLE_CALL = [name for name in tc.INDICATORS if tc.INDICATORS_BY_NAME[name].whole_call]


def counted(model):
    """Calls of the fake's timestep embedder: it runs exactly when the model's forward runs."""
    calls = [0]
    model.time_in.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def run_fake(thresh=THRESH, **options):
    """The fake over ``STEPS`` Euler steps with the cache; each call's latent in and output, as the sampler sees
    them."""
    model = FakeHunyuanTransformer()
    embedder = counted(model)
    x, txt = make_inputs()
    cache = tc.enable_teacache(model, thresh, num_steps=STEPS, **{**CALL, **options})
    seen = []

    def call(latent, t, **kw):
        out = model(latent, t, **kw)
        seen.append((latent.clone(), out["x"].clone()))
        return out

    sample(call, x, txt, STEPS)
    return model, cache, seen, embedder[0]


@pytest.mark.parametrize("indicator", WHOLE_CALL)
@pytest.mark.parametrize("rule", tc.RULES)
def test_threshold_zero_is_bit_identical_to_uncached(rule, indicator):
    inputs, negative = diffusers_inputs(), diffusers_inputs(seed=1)
    model = make_transformer()
    with torch.no_grad():
        ref = diffusers_sample(model, inputs, STEPS, negative=negative)
        cache = tc.enable_teacache(model, 0.0, num_steps=STEPS, rule=rule, **{**CALL, "indicator": indicator})
        out = diffusers_sample(model, inputs, STEPS, negative=negative)
    assert torch.equal(out, ref)
    assert cache.stats()["computed_calls"] == cache.stats()["transformer_calls"] == 2 * STEPS


def test_a_skipped_call_runs_nothing_and_returns_the_latent_plus_the_cached_residual():
    model, cache, seen, embedder_calls = run_fake(rule="reuse")
    s = cache.stats()
    assert s["skipped_steps"] and s["computed_steps"][0] == 0 and s["computed_steps"][-1] == STEPS - 1
    assert embedder_calls == len(s["computed_steps"])  # nothing of the model ran on a skipped call
    assert cache.summary().startswith("TeaCache(rel_l1_thresh=0.3, rule=reuse, skip=call): computed")
    assert model.block_calls() == 4 * len(s["computed_steps"])
    last = None
    for step, (latent, out) in enumerate(seen):
        if step in s["computed_steps"]:
            last = out - latent
        else:
            torch.testing.assert_close(out, latent + last, rtol=0, atol=0)


@pytest.mark.parametrize("indicator", WHOLE_CALL)
def test_the_rate_is_learnt_on_the_call_and_the_rule_accumulates_it(indicator):
    """Each call's value, recomputed from the latents and outputs the sampler saw: the rate ``|Δ o| / |Δ latent|``
    between the last two computed calls, times the latent's change since the last computed call over that call's
    ``o``, on every 8th column, where ``o`` is the output (transformation-rate) or the output minus the latent
    (residual-rate, what a skip reuses); and the decisions the accumulated values give."""
    _, cache, seen, _ = run_fake(indicator=indicator)
    s = cache.stats()
    learnt = {"transformation-rate": lambda x, o: o, "residual-rate": lambda x, o: o - x}[indicator]

    def l1(a):
        return float(a[..., ::tc.RATE_TOKEN_STRIDE].abs().double().sum())

    computed, acc, checked = [], 0.0, 0
    for step, (latent, out) in enumerate(seen):
        value = None
        if len(computed) >= 2:
            (x0, o0), (x1, o1) = ((x, learnt(x, o)) for x, o in (seen[c] for c in computed[-2:]))
            value = l1(o1 - o0) / l1(x1 - x0) * l1(latent - x1) / l1(o1)
            assert s["rel_l1"][step] == pytest.approx(value, rel=1e-5)
            checked += 1
        compute, acc = (True, 0.0) if value is None else tc.teacache_decision(step, STEPS, acc, value, THRESH)
        if compute:
            computed.append(step)
    assert computed == s["computed_steps"] and checked > STEPS // 2


@pytest.mark.parametrize("rule", ["extrapolate", "fitted"])
def test_the_extrapolating_rules_extrapolate_the_call_residual(rule):
    _, cache, seen, _ = run_fake(rule=rule)
    s, ts = cache.stats(), timesteps(STEPS)
    skipped = [i for i in s["skipped_steps"] if len([c for c in s["computed_steps"] if c < i]) >= 2]
    assert skipped
    for i in skipped:
        c0, c1 = [c for c in s["computed_steps"] if c < i][-2:]
        r0, r1 = (seen[c][1] - seen[c][0] for c in (c0, c1))
        gain = 1.0 if rule == "extrapolate" else s["gains"][len([c for c in s["computed_steps"] if c < i]) - 3]
        expected = seen[i][0] + torch.lerp(r0, r1, 1 + gain * float((ts[i] - ts[c1]) / (ts[c1] - ts[c0])))
        torch.testing.assert_close(seen[i][1], expected, rtol=1e-5, atol=1e-6)


def test_output_structures_are_kept_on_skipped_calls():
    model = make_transformer()
    inputs = diffusers_inputs()
    cache = tc.enable_teacache(model, 1e9, num_steps=3, **CALL)
    kinds = []
    with torch.no_grad():
        for i, return_dict in enumerate((True, False, True)):
            out = model(**{**inputs, "timestep": torch.tensor([900.0 - 100 * i]), "return_dict": return_dict})
            kinds.append((type(out).__name__, tuple(out[0].shape) if isinstance(out, tuple) else
                          tuple(out.sample.shape)))
    shape = tuple(inputs["hidden_states"].shape)
    assert kinds == [("Transformer2DModelOutput", shape), ("tuple", shape), ("Transformer2DModelOutput", shape)]


def test_concatenated_image_channels_are_left_out_of_the_residual():
    """Image-to-video with the image latent concatenated in channels: the residual is the output minus the latent's
    leading (video) channels, and a skipped call's output has the output's channels."""
    model = make_i2v_transformer("latent_concat")
    inputs = diffusers_inputs()
    video = inputs["hidden_states"]
    cache = tc.enable_teacache(model, 1e9, num_steps=STEPS, rule="reuse", **CALL)
    outs = []
    with torch.no_grad():
        for i, t in enumerate(timesteps(STEPS)):
            latent = torch.cat([video + 0.01 * i, torch.zeros_like(video), torch.ones_like(video[:, :1])], dim=1)
            outs.append((latent, model(**{**inputs, "hidden_states": latent, "timestep": t[None],
                                          "return_dict": False})[0]))
    s = cache.stats()
    assert s["skipped_steps"]
    c = max(k for k in s["computed_steps"] if k < s["skipped_steps"][0])
    n = video.shape[1]
    for i in s["skipped_steps"][:3]:
        assert outs[i][1].shape == video.shape
        torch.testing.assert_close(outs[i][1], outs[i][0][:, :n] + (outs[c][1] - outs[c][0][:, :n]), rtol=0, atol=0)


def test_an_instance_forward_is_wrapped_and_restored():
    """Upstream's ``parallelize_transformer`` replaces ``transformer.forward`` on the instance: enabled after it, the
    cache decides around that forward (computed calls go through it) and ``disable`` puts it back."""
    model = FakeHunyuanTransformer()
    through = []
    plain = model.forward

    def parallel_forward(*args, **kwargs):
        through.append(1)
        return plain(*args, **kwargs)

    model.forward = parallel_forward
    x, txt = make_inputs()
    cache = tc.enable_teacache(model, THRESH, num_steps=STEPS, **CALL)
    sample(model, x, txt, STEPS)
    assert len(through) == len(cache.stats()["computed_steps"]) < STEPS
    cache.disable()
    assert model.forward is parallel_forward
    cache = tc.enable_teacache(FakeHunyuanTransformer(), THRESH, **CALL)
    cache.disable()
    assert "forward" not in vars(cache.transformer)


def test_indicators_computed_inside_the_model_cannot_skip_the_call():
    for name in tc.INDICATORS:
        if not tc.INDICATORS_BY_NAME[name].whole_call:
            with pytest.raises(ValueError, match="skip='call' decides before the transformer runs"):
                tc.TeaCacheConfig(indicator=name, skip="call")
    assert WHOLE_CALL == ["transformation-rate", "residual-rate"]
    assert tc.TeaCacheConfig(**CALL).skip == "call"
    with pytest.raises(ValueError, match="skip must be one of"):
        tc.TeaCacheConfig(skip="layers")

