"""The limit: the schedule search (the best set of K computed steps for an error table), the cost tables it searches,
running a given set of steps (``fixed_steps``), and the searched schedules a profile holds."""

import itertools
import json

import numpy as np
import pytest
import torch

import teacache_sample_video as tc
from tinyhv.random_models import make_inputs, make_transformer, sample

STEPS = 12


# -- the search against brute force --------------------------------------------------------------------------------

def brute_force(cost, budget, first_last=True):
    """The least summed span cost over every set of ``budget`` steps (the oracle)."""
    n = len(cost)
    sets = [s for s in itertools.combinations(range(n), budget) if not first_last or (s[0] == 0 and s[-1] == n - 1)]
    return min(tc._schedule_cost(cost, s) for s in sets)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dims", [2, 3])
def test_search_returns_the_brute_force_optimum_on_random_tables(seed, dims):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 11))
    cost = rng.exponential(size=(n,) * dims)
    for budget in range(2, n + 1):
        steps = tc.search_schedule(cost, budget)
        assert len(steps) == budget and steps[0] == 0 and steps[-1] == n - 1
        assert steps == sorted(set(steps))
        assert tc._schedule_cost(cost, steps) == pytest.approx(brute_force(cost, budget), rel=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
def test_without_first_last_the_set_may_start_and_end_anywhere(dims):
    rng = np.random.default_rng(7)
    cost = rng.exponential(size=(8,) * dims)
    cost[(0,) * (dims - 1)] += 100  # every span from step 0 expensive: the best sets avoid it
    for budget in range(1, 9):
        steps = tc.search_schedule(cost, budget, first_last=False)
        assert len(steps) == budget and steps == sorted(set(steps))
        assert tc._schedule_cost(cost, steps) == pytest.approx(brute_force(cost, budget, first_last=False), rel=1e-12)
    assert tc.search_schedule(cost, 3, first_last=False)[0] != 0


def test_a_hand_made_table():
    """Six steps, budget 3: only the spans 0 -> 3 and 3 -> 5 are cheap, so the optimum is [0, 3, 5]; budget 4 adds
    the one step whose spans cost least (4: 0 -> 3 -> 4 -> 5 costs 1 + 0 + 0)."""
    cost = np.full((6, 6), 10.0)
    cost[np.arange(5), np.arange(1, 6)] = 0.0  # consecutive steps: nothing skipped
    cost[0, 3], cost[3, 5], cost[0, 2], cost[2, 5] = 1.0, 2.0, 2.5, 3.0
    assert tc.search_schedule(cost, 3) == [0, 3, 5]
    assert tc.search_schedule(cost, 4) == [0, 3, 4, 5]
    assert tc.search_schedule(cost, 6) == [0, 1, 2, 3, 4, 5]
    assert tc.search_schedule(cost, 2) == [0, 5]


def test_the_pair_table_charges_each_span_after_its_predecessor():
    """N x N x N: the same span costs what its predecessor says; [0, 2, 4] is cheap only through (0, 2) -> 4."""
    cost = np.full((5, 5, 5), 5.0)
    cost[0, 0, 2] = 1.0  # 0 -> 2 as the first span
    cost[0, 2, 4] = 1.0  # 2 -> 4 after 0 -> 2
    cost[1, 2, 4] = 0.0  # cheaper, but only after 1: [0, 1, 2, 4] has budget 4
    cost[0, 0, 1], cost[0, 1, 2] = 0.5, 0.5
    assert tc.search_schedule(cost, 3) == [0, 2, 4]
    assert tc.search_schedule(cost, 4) == [0, 1, 2, 4]


@pytest.mark.parametrize("budget", [0, 1, 7, 2.5, True])
def test_bad_budgets_are_refused(budget):
    with pytest.raises(ValueError, match="budget"):
        tc.search_schedule(np.zeros((6, 6)), budget)


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="table"):
        tc.search_schedule(np.zeros((4, 5)), 2)


# -- the cost tables ----------------------------------------------------------------------------------------------

def test_reuse_costs_are_the_time_weighted_residual_error_of_the_skipped_steps():
    """r_k = k (every element), uniform timesteps: skipping k after i costs |k - i| / mean|r| / (N - 1)."""
    n = 6
    residuals = [torch.full((4, 3), float(k)) for k in range(n)]
    cost = tc.span_costs(residuals, [1000.0 - 100 * k for k in range(n)], "reuse")
    scale = np.mean(range(n))
    expected = np.zeros((n, n))
    for i, j in itertools.combinations(range(n), 2):
        expected[i, j] = sum(k - i for k in range(i + 1, j)) / scale / (n - 1)
    np.testing.assert_allclose(cost, expected, rtol=1e-12)


def test_span_costs_weight_each_step_by_its_share_of_the_timestep_range():
    residuals = [torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([2.0])]
    cost = tc.span_costs(residuals, [1000.0, 900.0, 400.0, 0.0], "reuse")  # step k runs from t_k to t_k+1
    assert cost[0, 2] == pytest.approx(1 / 1.0 * 500 / 1000)  # step 1 skipped: |1 - 0| / mean|r| * 500 / 1000
    assert cost[0, 3] == pytest.approx(1 / 1.0 * 500 / 1000 + 1 / 1.0 * 400 / 1000)
    assert cost[1, 3] == 0.0  # step 2 has the residual of step 1


@pytest.mark.parametrize("rule", ["extrapolate", "fitted"])
def test_extrapolating_costs_vanish_on_a_residual_linear_in_time(rule):
    """r(t) = a + b t: extrapolating from any two computed steps is exact (the fitted gain is 1), reusing is not."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    ts = [1000.0, 950.0, 870.0, 700.0, 650.0, 400.0, 200.0, 0.0]
    residuals = [a + b * t / 1000 for t in ts]
    table = tc.span_costs(residuals, ts, rule)
    n = len(ts)
    assert table.shape == (n, n, n)
    reuse = tc.span_costs(residuals, ts, "reuse")
    for h, i, j in itertools.combinations(range(n), 3):  # zero up to the float32 rounding of the residuals
        assert table[h, i, j] < 1e-6 and (j == i + 1 or reuse[i, j] > 1e-3)
    np.testing.assert_allclose(table[np.arange(n), np.arange(n)], reuse)  # the first span: nothing before it
    assert reuse[1, 7] > 0


def test_fitted_costs_back_off_to_reuse_when_the_residual_turns_back():
    """r goes up then down: the gain fitted at step 2 from (0, 1, 2) is 0, so its spans cost what reuse's do."""
    residuals = [torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.5]),
                 torch.tensor([0.2])]
    ts = [4.0, 3.0, 2.0, 1.0, 0.0]
    fitted, reuse = tc.span_costs(residuals, ts, "fitted"), tc.span_costs(residuals, ts, "reuse")
    extrapolate = tc.span_costs(residuals, ts, "extrapolate")
    assert fitted[1, 2, 4] == pytest.approx(reuse[2, 4]) and extrapolate[1, 2, 4] != pytest.approx(reuse[2, 4])


# -- fixed_steps ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return make_transformer()


def run(model, **options):
    inputs = make_inputs()
    cache = tc.enable_teacache(model, 0.0, num_steps=STEPS, **options)
    try:
        with torch.no_grad():
            out = sample(model, inputs, STEPS)
        return out, cache.stats(), cache.summary()
    finally:
        cache.disable()


def count_block_calls(model, **options):
    calls = []
    handles = [b.ff.register_forward_hook(lambda *a: calls.append(1)) for b in model.transformer_blocks]
    try:
        _, stats, _ = run(model, **options)
    finally:
        for h in handles:
            h.remove()
    return len(calls), stats


@pytest.mark.parametrize("rule", tc.RULES)
def test_fixed_steps_computes_exactly_those_steps(model, rule):
    steps = (0, 1, 4, 5, 9, 11)
    calls, stats = count_block_calls(model, fixed_steps=steps, rule=rule)  # a block's feed-forward ran
    assert stats["computed_steps"] == list(steps)
    assert stats["skipped_steps"] == [k for k in range(STEPS) if k not in steps]
    assert calls == len(steps) * len(model.transformer_blocks)  # the skipped steps ran no block
    assert len(stats["rel_l1"]) == STEPS  # the indicator is still recorded


def test_listing_every_step_is_bit_identical_to_uncached(model):
    with torch.no_grad():
        plain = sample(model, make_inputs(), STEPS)
    out, stats, summary = run(model, fixed_steps=range(STEPS), rule="extrapolate")
    assert torch.equal(out, plain) and stats["skipped_steps"] == []
    assert f"{STEPS} given steps" in summary
    out, stats, _ = run(model, fixed_steps=(0, 3, 6, 11))
    assert not torch.equal(out, plain) and stats["computed_steps"] == [0, 3, 6, 11]


@pytest.mark.parametrize("steps", [(), (1, 4, 11), (0, 4, 4, 11), (0, 5, 3, 11), (0, -1, 11), (0, 2.0, 11),
                                   (0, True, 11)])
def test_bad_fixed_steps_are_refused(steps):
    with pytest.raises(ValueError, match="fixed_steps"):
        tc.TeaCacheConfig(fixed_steps=steps)


def test_fixed_steps_must_end_at_the_last_step_of_the_generation(model):
    for steps in ((0, 4, 10), (0, 4, 12)):
        with pytest.raises(ValueError, match="must end at the last step, 11"):
            tc.enable_teacache(model, 0.0, fixed_steps=steps, num_steps=STEPS)
        model._teacache.disable()
    with pytest.raises(ValueError, match="not both"):
        tc.TeaCacheConfig(fixed_steps=(0, 11), schedule=(2, 10, 3))


def test_the_steps_flag(model):
    parser = tc.add_teacache_args(tc._ArgumentParser())
    args = parser.parse_args(["--teacache-steps", "0", "3", "7", "11"])
    assert tc.TeaCacheConfig.from_args(args).fixed_steps == (0, 3, 7, 11)
    for flags, message in [(["--teacache-steps", "0", "7", "3"], "increasing"),
                           (["--teacache-steps", "0", "7", "--teacache-schedule", "2", "10", "3"], "give one"),
                           (["--teacache-budget", "5"], "needs --teacache-profile")]:
        with pytest.raises(SystemExit):
            tc._check_teacache_args(parser, parser.parse_args(flags))


# -- calibration: the profile's searched schedules ---------------------------------------------------------------

@pytest.fixture(scope="module")
def profile(model):
    traces = []
    for seed in (0, 1):
        cache = tc.enable_teacache(model, 0.0, trace=True, num_steps=STEPS)
        with torch.no_grad():
            sample(model, make_inputs(seed=seed), STEPS)
        traces.append(cache.stats())
        cache.disable()
    return tc.make_profile(traces, transformer=model, setting={}), traces


def test_trace_keeps_one_bounded_residual_subsample_per_step(profile):
    _, traces = profile
    samples = traces[0]["residual_samples"]
    assert samples.steps == list(range(STEPS)) and len(samples.tensors) == STEPS
    assert all(x.dtype == torch.float32 and 0 < x.numel() <= tc.TRACE_SAMPLE_ELEMENTS for x in samples.tensors)
    assert json.loads(json.dumps(traces[0]))["residual_samples"] == str(samples)  # reports stay JSON


def test_the_residual_subsample_spreads_over_tokens_and_channels():
    x = torch.arange(64 * 4096 * 24, dtype=torch.float32).reshape(1, 64 * 4096, 24)
    kept = tc._residual_sample(x)
    assert 0.99 * tc.TRACE_SAMPLE_ELEMENTS < kept.numel() <= tc.TRACE_SAMPLE_ELEMENTS
    channels, tokens = kept.long() % 24, kept.long() // 24
    assert set(channels.tolist()) == set(range(24)) and tokens.unique().numel() == kept.numel()
    small = torch.randn(2, 10, 16)
    assert torch.equal(tc._residual_sample(small), small.reshape(-1))  # all of a small one


def test_profile_schedules_are_the_search_on_the_averaged_table(profile):
    p, traces = profile
    assert sorted(p["schedules"]) == sorted(tc.RULES) and p["schedule_search"]["runs"] == 2
    for rule in tc.RULES:
        assert sorted(map(int, p["schedules"][rule])) == list(range(2, STEPS + 1))
        table = np.mean([tc.span_costs(t["residual_samples"].tensors, t["residual_samples"].timesteps, rule)
                         for t in traces], axis=0)
        for budget in (4, 6, 9):
            steps = p["schedules"][rule][str(budget)]
            assert steps == tc.search_schedule(table, budget)
            assert p["schedule_search"]["costs"][rule][str(budget)] == pytest.approx(tc._schedule_cost(table, steps))


def test_a_profile_with_schedules_round_trips_and_runs(profile, model, tmp_path):
    p, _ = profile
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(p))
    loaded = tc.load_profile(path, transformer=model, num_steps=STEPS)
    assert loaded == json.loads(json.dumps(p))
    steps = tc.profile_schedule(loaded, 6, "fitted")
    assert steps == tuple(p["schedules"]["fitted"]["6"]) and len(steps) == 6
    _, stats, _ = run(model, fixed_steps=steps, rule="fitted")
    assert stats["computed_steps"] == list(steps)
    with pytest.raises(ValueError, match="no searched schedule of 1 computed steps"):
        tc.profile_schedule(loaded, 1)


def test_an_old_profile_without_schedules_still_loads(profile, model, tmp_path):
    p, _ = profile
    old = {k: v for k, v in json.loads(json.dumps(p)).items() if k not in ("schedules", "schedule_search")}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    assert tc.load_profile(path, transformer=model, num_steps=STEPS)["coefficients"] == p["coefficients"]
    with pytest.raises(ValueError, match="no searched schedules"):
        tc.profile_schedule(old, 6)
    # traces read back from JSON hold no residuals: a profile made from them has coefficients, no schedules
    again = tc.make_profile([json.loads(json.dumps(t)) for t in profile[1]], transformer=model, setting={})
    assert "schedules" not in again and again["coefficients"] == pytest.approx(p["coefficients"])


def test_the_searched_schedule_beats_evenly_spaced_steps_on_the_calibration_prompt(model):
    """On the prompt it was searched on, the searched set of K steps ends nearer the uncached video than K evenly
    spaced steps, for every rule (deterministic: the tiny random model and its inputs are seeded)."""
    with torch.no_grad():
        plain = sample(model, make_inputs(), STEPS)
    cache = tc.enable_teacache(model, 0.0, trace=True, num_steps=STEPS)
    with torch.no_grad():
        sample(model, make_inputs(), STEPS)
    p = tc.make_profile([cache.stats()], transformer=model, setting={}, budgets=(6, 8))
    cache.disable()
    for rule in tc.RULES:
        for budget in (6, 8):
            even = sorted(set(np.linspace(0, STEPS - 1, budget).round().astype(int).tolist()))
            searched, _, _ = run(model, fixed_steps=tc.profile_schedule(p, budget, rule), rule=rule)
            spaced, _, _ = run(model, fixed_steps=even, rule=rule)
            assert (searched - plain).abs().mean() < (spaced - plain).abs().mean()
