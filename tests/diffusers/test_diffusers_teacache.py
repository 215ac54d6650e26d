"""TeaCache on diffusers' HunyuanVideoTransformer3DModel (tiny random weights; runs in CI)."""

import pytest
import torch

import teacache_sample_video as tc
from reference_rule import DIFFUSERS, ReferenceTeaCache
from tinyhv.random_models import make_inputs, make_transformer, sample
from tiny_diffusers import against_the_reference

STEPS = 12


def run_cached(thresh, steps=STEPS, negative=None, **inputs_kw):
    model = make_transformer()
    cache = tc.enable_teacache(model, thresh, num_steps=steps)
    outs = []
    with torch.no_grad():
        final = sample(model, make_inputs(**inputs_kw), steps, negative=negative, outputs=outs)
    return model, cache, final, outs


def test_threshold_zero_is_bit_identical_to_unpatched():
    _, cache, final, outs = run_cached(0.0)
    plain_outs = []
    with torch.no_grad():
        plain = sample(make_transformer(), make_inputs(), STEPS, outputs=plain_outs)
    assert torch.equal(final, plain) and all(torch.equal(a, b) for a, b in zip(outs, plain_outs))
    assert cache.stats()["computed_steps"] == list(range(STEPS))


@pytest.mark.parametrize("thresh", [0.1, 0.15, 0.3])
def test_decisions_and_outputs_match_the_reference_rule(thresh):
    _, cache, final, outs = run_cached(thresh)
    model = make_transformer()
    ref = ReferenceTeaCache(model, STEPS, thresh, **DIFFUSERS)
    ref_outs = []
    with torch.no_grad():
        ref_final = sample(ref, make_inputs(), STEPS, outputs=ref_outs)
    assert [i for i, c in enumerate(ref.decisions) if not c] == cache.stats()["skipped_steps"]
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, ref_final, rtol=1e-5, atol=1e-5)
    if thresh >= 0.15:
        assert cache.stats()["skipped_steps"], "the trajectory should exercise skipping"


def test_skipped_step_adds_exactly_the_cached_residual():
    """Watch the image tokens entering the stack (x_embedder out) and leaving it (norm_out in)."""
    model = make_transformer()
    cache = tc.enable_teacache(model, 0.3, num_steps=STEPS)
    seen = []
    model.x_embedder.register_forward_hook(lambda m, a, out: seen.append(["in", out]))
    model.norm_out.register_forward_pre_hook(lambda m, a: seen[-1].extend(["out", a[0]]))
    with torch.no_grad():
        sample(model, make_inputs(), STEPS)
    skipped = set(cache.stats()["skipped_steps"])
    assert skipped
    residual = None
    for step, (_, stack_in, _, stack_out) in enumerate(seen):
        if step in skipped:
            assert torch.equal(stack_out, stack_in + residual)
        else:
            residual = stack_out - stack_in


def test_disable_restores_the_original_modules_exactly():
    model = make_transformer()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
    cache = tc.enable_teacache(model, 0.3, num_steps=STEPS)
    with torch.no_grad():
        sample(model, make_inputs(), STEPS)
    cache.disable()
    assert all("forward" not in vars(b) for b in blocks)
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(sample(model, make_inputs(), STEPS), sample(make_transformer(), make_inputs(), STEPS))


def test_two_instances_never_share_state():
    a, b = make_transformer(), make_transformer()
    ca, cb = tc.enable_teacache(a, 0.3, num_steps=STEPS), tc.enable_teacache(b, 0.3, num_steps=STEPS)
    xa, xb = make_inputs(seed=0), make_inputs(seed=1)

    def both(**kw):  # interleave the two models' calls
        out = a(**kw)
        b(**{**xb, "hidden_states": kw["hidden_states"] * 0.5, "timestep": kw["timestep"], "return_dict": False})
        return out

    with torch.no_grad():
        final = sample(both, xa, STEPS)
    _, alone, alone_final, _ = run_cached(0.3)
    assert ca.stats()["skipped_steps"] == alone.stats()["skipped_steps"]
    assert torch.equal(final, alone_final)
    assert cb.stats()["steps_run"] == STEPS


def test_true_cfg_keeps_two_independent_branch_states():
    negative = make_inputs(seed=7)
    model, cache, final, _ = run_cached(0.3, negative=negative)
    s = cache.stats()
    assert s["num_branches"] == 2 and s["steps_run"] == STEPS and s["transformer_calls"] == 2 * STEPS
    cond, uncond = s["branches"]
    assert sorted(cond["computed_steps"] + cond["skipped_steps"]) == list(range(STEPS))
    assert sorted(uncond["computed_steps"] + uncond["skipped_steps"]) == list(range(STEPS))
    assert cond["rel_l1"] != uncond["rel_l1"]
    assert s["ideal_speedup"] == pytest.approx(2 * STEPS / s["computed_calls"])

    # each branch behaves exactly as a single-branch TeaCache fed that branch's inputs
    ref_model = make_transformer()
    conds = tc.enable_teacache(ref_model, 0.3, num_steps=STEPS)
    uncond_model = make_transformer()
    unconds = tc.enable_teacache(uncond_model, 0.3, num_steps=STEPS)

    def split(**kw):
        if kw["encoder_hidden_states"] is negative["encoder_hidden_states"]:
            return uncond_model(**kw)
        return ref_model(**kw)

    with torch.no_grad():
        split_final = sample(split, make_inputs(), STEPS, negative=negative)
    assert torch.equal(final, split_final)
    assert conds.stats()["computed_steps"] == cond["computed_steps"]
    assert unconds.stats()["computed_steps"] == uncond["computed_steps"]


def test_call_past_expected_steps_raises():
    model, cache, _, _ = run_cached(0.15, steps=3)
    with pytest.raises(RuntimeError, match="reset"), torch.no_grad():
        model(**make_inputs(), timestep=torch.tensor([1.0]), return_dict=False)


def test_torch_compile_of_the_blocks_keeps_the_decisions():
    _, eager_cache, eager, _ = run_cached(0.3)
    model = make_transformer()
    cache = tc.enable_teacache(model, 0.3, num_steps=STEPS)
    for block in list(model.transformer_blocks) + list(model.single_transformer_blocks):
        block.compile(backend="eager", dynamic=False)
    with torch.no_grad():
        compiled = sample(model, make_inputs(), STEPS)
    assert cache.stats()["skipped_steps"] == eager_cache.stats()["skipped_steps"] != []
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


# -- every case against the reference (one reference instance per guidance branch) -------------------------------

def test_true_cfg_each_branch_takes_the_reference_decisions():
    """12 steps under true CFG, until a threshold where a branch skips the second-to-last step (which the old
    rule computed)."""
    for thresh in (0.15, 0.2, 0.3):
        ours, theirs = against_the_reference(thresh, STEPS, make_transformer, negative=make_inputs(seed=7))
        assert ours == theirs and len(ours) == 2
        if any(STEPS - 2 not in steps for steps in theirs):
            break
    else:
        pytest.fail(f"retune: no branch skips step {STEPS - 2}: {theirs}")

