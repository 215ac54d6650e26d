"""The shipped tiny HunyuanVideo model (tinyhv/): weights, sampling, TeaCache on it, metrics, judge."""

import json
import math

import numpy as np
import pytest
import torch

import teacache_sample_video as tc
from tinyhv import DEFAULT_ASSETS, TinyHunyuanVideo, data
from tinyhv.evaluate import describe, score
from tinyhv.metrics import gaussian_window, psnr, ssim
from tinyhv.model import flow_sigmas

PROMPT = "a big red circle moves left on a dark background"  # a held-out combination


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyHunyuanVideo.from_pretrained()


# -- weights ----------------------------------------------------------------- #

def test_shipped_weights_and_config():
    assert DEFAULT_ASSETS.exists() and DEFAULT_ASSETS.stat().st_size <= 20 * 2 ** 20
    config = json.loads(DEFAULT_ASSETS.with_suffix(".json").read_text())
    assert config["transformer"]["guidance_embeds"] and config["transformer"]["in_channels"] == 3
    assert sum(config["transformer"]["rope_axes_dim"]) == config["transformer"]["attention_head_dim"]
    assert config["training"]["steps_done"] > 0 and config["training"]["command"].count("tinyhv.train")
    assert [tuple(t) for t in config["data"]["held_out_triples"]] == list(data.HELD_OUT_TRIPLES)
    from safetensors.torch import load_file
    state = load_file(str(DEFAULT_ASSETS))
    assert any(k.startswith("transformer.transformer_blocks.") for k in state)
    assert any(k.startswith("transformer.single_transformer_blocks.") for k in state)
    assert "text_encoder.token_embedding.weight" in state


def test_save_load_roundtrip(model, tmp_path):
    path = model.save_pretrained(tmp_path / "m.safetensors", extra={"note": "x"})
    again = TinyHunyuanVideo.from_pretrained(path)
    assert again.config["note"] == "x"
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_encode_shapes_and_vocabulary(model):
    enc = model.encode([PROMPT, "a small blue square moves up on a light background"])
    assert enc["encoder_hidden_states"].shape == (2, 10, model.config["transformer"]["text_embed_dim"])
    assert enc["encoder_attention_mask"].all()
    assert enc["pooled_projections"].shape == (2, model.config["transformer"]["pooled_projection_dim"])
    with pytest.raises(ValueError, match="vocabulary"):
        model.encode("a purple circle moves left")


# -- sampling ---------------------------------------------------------------- #

def test_flow_schedule_is_hunyuans_shifted_schedule():
    from diffusers import FlowMatchEulerDiscreteScheduler
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, 11)[:-1].tolist())
    torch.testing.assert_close(flow_sigmas(10, 3.0), sched.sigmas.float(), rtol=1e-5, atol=1e-6)


def test_generate_shape_range_determinism(model):
    a = model.generate(PROMPT, seed=3, num_steps=4)
    b = model.generate(PROMPT, seed=3, num_steps=4)
    c = model.generate(PROMPT, seed=4, num_steps=4)
    assert a.shape == (*model.video_shape, 3) == (8, 16, 16, 3) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    batch = model.generate([PROMPT, PROMPT], seed=3, num_steps=4)  # prompt i gets seed + i
    torch.testing.assert_close(batch[0], a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batch[1], c, rtol=1e-4, atol=1e-4)


def test_one_transformer_call_per_step(model):
    calls = []
    handle = model.transformer.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["timestep"][0].item()),
                                                         with_kwargs=True)
    try:
        model.generate(PROMPT, num_steps=5, shift=3.0)
    finally:
        handle.remove()
    torch.testing.assert_close(torch.tensor(calls), flow_sigmas(5, 3.0)[:-1] * 1000)


def test_classifier_free_guidance_is_batched_into_one_call_per_step(model):
    rows = []
    handle = model.transformer.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["hidden_states"].shape[0]),
                                                         with_kwargs=True)
    try:
        guided = model.generate(PROMPT, seed=2, num_steps=4, cfg_scale=3.0)
        plain = model.generate(PROMPT, seed=2, num_steps=4)
    finally:
        handle.remove()
    assert rows == [2] * 4 + [1] * 4  # cond + uncond rows in one call; the shipped default is unguided
    assert torch.equal(plain, model.generate(PROMPT, seed=2, num_steps=4, cfg_scale=1.0))
    assert not torch.allclose(guided, plain)


def test_teacache_on_the_trained_model(model):
    steps = 20
    plain = model.generate(PROMPT, seed=0, num_steps=steps)
    cache = tc.enable_teacache(model.transformer, 0.6)
    try:
        cached = model.generate(PROMPT, seed=0, num_steps=steps, cache=cache)
        stats = cache.stats()
    finally:
        cache.disable()
    assert stats["steps_run"] == steps and stats["skipped_steps"], stats
    assert {0, steps - 1} <= set(stats["computed_steps"])
    assert not torch.equal(cached, plain)
    assert psnr(cached, plain) > 20  # an approximation of the same clip, not a different one
    zero = tc.enable_teacache(model.transformer, 0.0)
    try:
        assert torch.equal(model.generate(PROMPT, seed=0, num_steps=steps, cache=zero), plain)
    finally:
        zero.disable()
    assert torch.equal(model.generate(PROMPT, seed=0, num_steps=steps), plain)  # disable() restored it


# -- data and judge ------------------------------------------------------------ #

def test_prompts_grammar_and_split():
    train, held = data.split()
    assert len(train) + len(held) == len(data.all_attributes()) == 3 * 4 * 4 * 2 * 2
    assert {a.triple for a in held} == set(data.HELD_OUT_TRIPLES)
    assert not {a.triple for a in train} & set(data.HELD_OUT_TRIPLES)
    a = held[0]
    assert data.parse_prompt(a.prompt) == a
    assert data.complete_prompt("a red circle moves left") == PROMPT
    with pytest.raises(ValueError):
        data.parse_prompt("a red circle moves left")


def test_judge_reads_rendered_clips_perfectly():
    attrs = data.all_attributes()[::5]
    g = torch.Generator().manual_seed(0)
    videos = ((data.render_batch(attrs, data.random_starts(attrs, g)) + 1) / 2).clamp(0, 1)
    result = score(list(videos), attrs)
    assert result["accuracy"]["all five"] == 1.0, [r for r in result["samples"] if not all(r["ok"].values())]
    blank = torch.full((8, 16, 16, 3), 0.1)
    assert describe(blank)["shape"] is None


def test_sample_shows_the_prompt(model):
    """A held-out prompt, 20 steps: the judge reads what was asked (the full bar is tinyhv.evaluate)."""
    d = describe(model.generate(PROMPT, seed=1, num_steps=20))
    assert (d["colour"], d["shape"], d["direction"]) == ("red", "circle", "left"), d


# -- metrics ------------------------------------------------------------------- #

def test_psnr_known_values():
    a = torch.zeros(4, 16, 16, 3)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # MSE 0.01
    assert psnr(a, a + 0.1, data_range=2.0) == pytest.approx(10 * math.log10(4 / 0.01))
    b = a.clone()
    b[0, 0, 0, 0] = 1.0  # MSE 1 / 3072
    assert psnr(a, b) == pytest.approx(10 * math.log10(3072))
    assert psnr(a, a) == math.inf


def test_ssim_identical_and_constant_frames():
    v = torch.rand(3, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    assert ssim(v, v) == pytest.approx(1.0, abs=1e-12)
    # constant frames: variances and covariance are 0, SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    c1 = 0.01 ** 2
    expected = (2 * 0.5 * 0.25 + c1) / (0.5 ** 2 + 0.25 ** 2 + c1)
    assert ssim(torch.full((2, 12, 12, 1), 0.5), torch.full((2, 12, 12, 1), 0.25)) == pytest.approx(expected)
    # y = 1 - x (correlation -1, equal variances): contrast-structure term = (C2 - 2 var) / (2 var + C2)
    x = torch.zeros(1, 11, 11, 1)
    x[..., ::2, :, :] = 1.0  # alternating rows; 11x11 window -> one SSIM position
    w = gaussian_window()
    mu = float((w.view(-1, 1) * w.view(1, -1) * x[0, :, :, 0].double()).sum())
    var = mu - mu ** 2
    c2 = 0.03 ** 2
    y = 1 - x
    mu_y = 1 - mu
    expected = ((2 * mu * mu_y + c1) / (mu ** 2 + mu_y ** 2 + c1)) * ((-2 * var + c2) / (2 * var + c2))
    assert ssim(x, y) == pytest.approx(expected, rel=1e-9)


def _ssim_bruteforce(x: np.ndarray, y: np.ndarray, sigma=1.5, r=5, c1=1e-4, c2=9e-4) -> float:
    """Independent loop implementation of Wang et al.'s SSIM (Gaussian window, population statistics)."""
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    w2 = np.outer(g, g) / np.outer(g, g).sum()
    vals = []
    for c in range(x.shape[2]):
        for i in range(x.shape[0] - 2 * r):
            for j in range(x.shape[1] - 2 * r):
                px, py = x[i:i + 2 * r + 1, j:j + 2 * r + 1, c], y[i:i + 2 * r + 1, j:j + 2 * r + 1, c]
                mx, my = (w2 * px).sum(), (w2 * py).sum()
                vx, vy = (w2 * (px - mx) ** 2).sum(), (w2 * (py - my) ** 2).sum()
                cxy = (w2 * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_an_independent_implementation():
    rng = np.random.default_rng(0)
    a = rng.random((2, 14, 15, 3))
    b = np.clip(a + 0.15 * rng.standard_normal(a.shape), 0, 1)
    expected = np.mean([_ssim_bruteforce(a[t], b[t]) for t in range(2)])
    assert ssim(a, b) == pytest.approx(expected, rel=1e-10)


def test_ssim_matches_skimage():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.random((3, 20, 20, 3))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    expected = np.mean([skimage_metrics.structural_similarity(
        a[t], b[t], channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False) for t in range(3)])
    assert ssim(a, b) == pytest.approx(expected, rel=1e-10)
    assert psnr(a, b) == pytest.approx(skimage_metrics.peak_signal_noise_ratio(a, b, data_range=1.0))
