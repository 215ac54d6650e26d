"""Checks for the CPU stand-ins in tinyhv/upstream_cpu/hyvideo_cpu.py and tests/support (not the product).

Needs a checkout of Tencent/HunyuanVideo: HUNYUANVIDEO_ROOT=/path/to/it.
"""

import os
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, checkout_root

HYV = checkout_root("HUNYUANVIDEO_ROOT", "Tencent/HunyuanVideo")

from tinyhv.upstream_cpu import hyvideo_cpu as H  # noqa: E402

H.add_hunyuanvideo_to_path()
H.register_tiny_config()
H.install_cpu_standins()

import hyvideo.modules.attenion as attenion  # noqa: E402
import hyvideo.modules.models as hy_models  # noqa: E402
import hyvideo.modules.token_refiner as hy_refiner  # noqa: E402

ORIG = H.original_functions()


# ----------------------------------------------------------------- helpers
def upstream_get_cu_seqlens_on_cpu(text_mask, img_len):
    """Upstream's own get_cu_seqlens code, with its hard-coded device="cuda"
    dropped (run with a torch proxy as its global)."""

    class _TorchNoCuda:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def zeros(*args, device=None, **kwargs):
            return torch.zeros(*args, **kwargs)

    fn = ORIG["get_cu_seqlens"]
    g = dict(fn.__globals__)
    g["torch"] = _TorchNoCuda()
    return types.FunctionType(fn.__code__, g, fn.__name__)(text_mask, img_len)


def segment_loop_reference(q, k, v, cu_q, cu_kv):
    """flash varlen semantics, literally: each cu_seqlens segment of the
    flattened batch is attended on its own with upstream's vanilla attention."""
    b, s, a, d = q.shape
    qf, kf, vf = (t.reshape(b * t.shape[1], a, d) for t in (q, k, v))
    out = torch.zeros_like(qf)
    for j in range(len(cu_q) - 1):
        qs, qe, ks, ke = int(cu_q[j]), int(cu_q[j + 1]), int(cu_kv[j]), int(cu_kv[j + 1])
        if qe > qs:
            o = ORIG["attention"](qf[None, qs:qe], kf[None, ks:ke], vf[None, ks:ke], mode="vanilla")
            out[qs:qe] = o.view(qe - qs, a, d)
    return out.view(b, s, a * d)


def mask_from_text_mask(text_mask, img_len, heads):
    """Independent mask: [img + valid text] attend together, padding together."""
    b = text_mask.shape[0]
    valid = torch.cat([torch.ones(b, img_len, dtype=torch.bool), text_mask.bool()], dim=1)
    m = valid[:, :, None] == valid[:, None, :]
    return m[:, None].expand(b, heads, m.shape[1], m.shape[2])


def random_qkv_and_mask(batch=3, img_len=10, text_len=7, heads=4, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = img_len + text_len
    q, k, v = (torch.randn(batch, s, heads, dim, generator=g) for _ in range(3))
    text_mask = torch.zeros(batch, text_len, dtype=torch.int64)
    for i, n in enumerate([text_len, 3, 1][:batch]):
        text_mask[i, :n] = 1
    return q, k, v, text_mask


@pytest.fixture(scope="module")
def tiny():
    model, args = H.make_tiny_transformer(seed=0)
    return model, args


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs)["x"]


# ----------------------------------------------------------------- stand-ins
def test_standins_installed_everywhere_and_idempotent():
    assert H.cpu_standins_installed()
    for mod in (attenion, hy_models):
        assert mod.attention is attenion.attention and mod.get_cu_seqlens is attenion.get_cu_seqlens
    assert hy_refiner.attention is attenion.attention
    assert attenion.attention is not ORIG["attention"]
    assert H.install_cpu_standins() == []  # nothing left to patch

    # a namespace that grabbed the originals by name gets patched too
    late = types.ModuleType("late_importer_for_test")
    late.attention, late.get_cu_seqlens = ORIG["attention"], ORIG["get_cu_seqlens"]
    sys.modules[late.__name__] = late
    try:
        assert sorted(H.install_cpu_standins()) == [
            "late_importer_for_test.attention",
            "late_importer_for_test.get_cu_seqlens",
        ]
        assert late.attention is attenion.attention
    finally:
        del sys.modules[late.__name__]


def test_get_cu_seqlens_matches_upstream_code():
    text_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    ours = attenion.get_cu_seqlens(text_mask, 12)
    ref = upstream_get_cu_seqlens_on_cpu(text_mask, 12)
    assert ours.dtype == ref.dtype == torch.int32
    assert ours.device == text_mask.device
    assert torch.equal(ours, ref)
    assert ours.tolist() == [0, 15, 17, 30, 34, 51, 51]


def test_flash_standin_matches_segment_loop_and_vanilla_mask():
    q, k, v, text_mask = random_qkv_and_mask()
    b, s, heads, _ = q.shape
    img_len = s - text_mask.shape[1]
    cu = attenion.get_cu_seqlens(text_mask, img_len)
    ours = attenion.attention(q, k, v, cu_seqlens_q=cu, cu_seqlens_kv=cu,
                              max_seqlen_q=s, max_seqlen_kv=s, batch_size=b)
    assert ours.shape == (b, s, heads * q.shape[-1])
    loop = segment_loop_reference(q, k, v, cu, cu)
    torch.testing.assert_close(ours, loop, rtol=0, atol=1e-5)
    # per sample, against upstream's own vanilla path with an explicit mask
    mask = mask_from_text_mask(text_mask, img_len, heads)
    for i in range(b):
        van = ORIG["attention"](q[i:i + 1], k[i:i + 1], v[i:i + 1], mode="vanilla",
                                attn_mask=mask[i:i + 1])
        torch.testing.assert_close(ours[i:i + 1], van, rtol=0, atol=1e-5)
    # sanity: unmasked attention differs once text is padded
    plain = ORIG["attention"](q, k, v, mode="torch")
    assert (plain - ours).abs().max() > 1e-3


def test_torch_mode_is_forwarded_to_upstream():
    q, k, v, text_mask = random_qkv_and_mask(seed=1)
    m = text_mask.bool()
    m = torch.cat([torch.ones(m.shape[0], q.shape[1] - m.shape[1], dtype=torch.bool), m], 1)
    attn_mask = (m[:, None, None, :] & m[:, None, :, None])
    attn_mask[:, :, :, 0] = True
    for mode in ("torch", "vanilla"):
        a = attenion.attention(q, k, v, mode=mode, attn_mask=attn_mask)
        b = ORIG["attention"](q, k, v, mode=mode, attn_mask=attn_mask)
        assert torch.equal(a, b)


# ----------------------------------------------------------------- transformer
def test_fresh_model_is_zero_and_randomized_is_nontrivial(tiny):
    model, args = tiny
    from hyvideo.modules import load_model

    fresh = load_model(args, in_channels=16, out_channels=16,
                       factor_kwargs={"device": "cpu", "dtype": torch.float32}).eval()
    inputs = H.make_tiny_inputs(model)
    assert run(fresh, inputs).abs().max() == 0  # why randomize_weights_ exists

    out = run(model, inputs)
    assert out.shape == inputs["x"].shape
    assert torch.isfinite(out).all()
    assert 0.1 < out.std().item() < 10 and out.abs().max() < 100
    # depends on the timestep and on the text
    other_t = dict(inputs, t=torch.full_like(inputs["t"], 100.0))
    assert (run(model, other_t) - out).abs().mean() > 1e-2
    other_txt = dict(inputs, text_states=inputs["text_states"].flip(0))
    assert (run(model, other_txt) - out).abs().mean() > 1e-2


def test_randomize_is_deterministic(tiny):
    model, _ = tiny
    again, _ = H.make_tiny_transformer(seed=0)
    other, _ = H.make_tiny_transformer(seed=1)
    sd0, sd1, sd2 = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert any(not torch.equal(sd0[k], sd2[k]) for k in sd0)
    inputs = H.make_tiny_inputs(model, seed=3)
    assert torch.equal(run(model, inputs), run(again, inputs))


def test_model_matches_segment_loop_reference(tiny, monkeypatch):
    model, _ = tiny
    inputs = H.make_tiny_inputs(model, batch=3, t=2, h=4, w=6, text_len=8, seed=5)
    ours = run(model, inputs)

    def reference_attention(q, k, v, mode="flash", cu_seqlens_q=None, cu_seqlens_kv=None, **kw):
        assert mode == "flash"
        return segment_loop_reference(q, k, v, cu_seqlens_q, cu_seqlens_kv)

    monkeypatch.setattr(hy_models, "attention", reference_attention)
    ref = run(model, inputs)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)


def test_padding_does_not_leak_and_matches_unpadded_runs(tiny, monkeypatch):
    model, _ = tiny
    inputs = H.make_tiny_inputs(model, batch=2, text_len=8, valid_text_lens=[5, 2], seed=7)
    out = run(model, inputs)
    mask = inputs["text_mask"].bool()

    # garbage in the padded text positions changes nothing
    noisy = inputs["text_states"].clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), noisy.shape[-1]) * 10
    torch.testing.assert_close(run(model, dict(inputs, text_states=noisy)), out, rtol=0, atol=1e-5)

    # each sample alone, text truncated to its valid length (no padding at all)
    for i, n in enumerate([5, 2]):
        single = dict(inputs)
        for key in ("x", "t", "text_states_2", "guidance"):
            single[key] = inputs[key][i:i + 1]
        single["text_states"] = inputs["text_states"][i:i + 1, :n]
        single["text_mask"] = inputs["text_mask"][i:i + 1, :n]
        torch.testing.assert_close(run(model, single), out[i:i + 1], rtol=0, atol=1e-4)

    # sanity: plain unmasked SDPA would let the padding leak in
    def unmasked(q, k, v, **kw):
        return F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        ).transpose(1, 2).flatten(2)

    monkeypatch.setattr(hy_models, "attention", unmasked)
    assert (run(model, dict(inputs, text_states=noisy)) - out).abs().max() > 1e-3


# ----------------------------------------------------------------- full pipeline
@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from tests.support.tiny_checkpoints import make_tiny_model_base

    return make_tiny_model_base(tmp_path_factory.mktemp("tiny_model_base"))


def test_upstream_sampler_in_process_is_reproducible(tiny_base):
    from tests.support.tiny_checkpoints import use_model_base

    use_model_base(tiny_base["model_base"])
    from hyvideo.inference import HunyuanVideoSampler

    args = H.make_tiny_args(argv=tiny_base["cli_args"] + ["--flow-reverse", "--text-len", "32"])
    grad = torch.is_grad_enabled()
    try:
        sampler = HunyuanVideoSampler.from_pretrained(tiny_base["model_base"], args=args)

        def sample(seed):
            return sampler.predict(prompt="a cat", height=32, width=32, video_length=5, seed=seed,
                                   infer_steps=3, guidance_scale=1.0, flow_shift=7.0,
                                   embedded_guidance_scale=6.0)["samples"]

        a, b, c = sample(1), sample(1), sample(2)
    finally:
        torch.set_grad_enabled(grad)  # from_pretrained disables grad globally
    assert a.shape == (1, 3, 5, 32, 32)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    assert a.std() > 0.01


def test_runner_runs_upstream_sample_video(tiny_base, tmp_path):
    env = dict(os.environ, **tiny_base["env"], HYVIDEO_CPU_SAVE_TENSORS=str(tmp_path / "t"))
    cmd = [sys.executable, str(ROOT / "tests/support/run_cpu.py"), str(HYV / "sample_video.py"),
           *tiny_base["cli_args"], "--video-size", "32", "32", "--video-length", "5",
           "--infer-steps", "2", "--prompt", "a cat", "--seed", "1", "--flow-reverse",
           "--save-path", str(tmp_path / "v")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    videos = list((tmp_path / "v").glob("*.mp4"))
    tensors = list((tmp_path / "t").glob("*.pt"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0
    assert len(tensors) == 1 and torch.load(tensors[0]).shape == (1, 3, 5, 32, 32)
