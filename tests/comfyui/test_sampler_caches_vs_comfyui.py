"""benchmarks/sampler_caches.py against ComfyUI's own EasyCache and LazyCache (``nodes_easycache.py`` of the
checkout at ``COMFYUI_ROOT``): both driven call by call on the same toy trajectories, with CFG batched in ComfyUI's
order (unconditional chunk first). The same decisions at every call and the same outputs, except where ComfyUI
before its fix (2025-10, Comfy-Org a125cd84) added every chunk's cached difference to each chunk of a skipped
batched call: there its output is checked to be exactly that (the re-implementation follows the fixed node,
2026-02)."""

import importlib
import inspect
import math

import pytest
import torch

from conftest import checkout_root

ROOT = checkout_root("COMFYUI_ROOT", "ComfyUI (Comfy-Org/ComfyUI; hiddenswitch/pip-and-uv-installable-ComfyUI)")

import importlib.util  # noqa: E402

import comfy_host  # noqa: E402

_spec = importlib.util.spec_from_file_location("sampler_caches", comfy_host.REPO / "benchmarks" / "sampler_caches.py")
sampler_caches = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sampler_caches)

comfy_host.import_comfy(ROOT)
try:
    nodes = importlib.import_module("comfy_extras.nodes_easycache")  # Comfy-Org/ComfyUI
except ImportError:
    nodes = importlib.import_module("comfy_extras.nodes.nodes_easycache")  # hiddenswitch's packaged ComfyUI
#: whether this ComfyUI's EasyCache adds each chunk's own cached difference only (fixed after 2025-10)
PER_CHUNK = "batch_slice" in inspect.getsource(nodes.EasyCacheHolder.apply_cache_diff)
model_sampling = importlib.import_module("comfy.model_sampling")

SHIFT = 3.0
SIGMAS = [SHIFT * t / (1 + (SHIFT - 1) * t) for t in torch.linspace(1, 0, 31).tolist()][:-1]


def flow_sampling():
    """ComfyUI's flow model sampling (HunyuanVideo's kind) at ``SHIFT``: its percent_to_sigma maps the window."""
    ms = model_sampling.ModelSamplingDiscreteFlow()
    ms.set_parameters(shift=SHIFT, multiplier=1000)
    return ms


def trajectory(seed, batch):
    """x at each sigma: a smooth path plus some noise, (batch, C, T, H, W) with H = W = 16 (EasyCache samples every
    8th row and column)."""
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(batch, 4, 2, 16, 16, generator=g), torch.randn(batch, 4, 2, 16, 16, generator=g)
    return [s * x1 + (1 - s) * x0 + 0.02 * torch.randn(x0.shape, generator=g) for s in SIGMAS]


def model(x, sigma, chunk_scale):
    """A toy model whose output moves non-linearly with x and sigma, per chunk (cond and uncond differ)."""
    scale = torch.tensor(chunk_scale, dtype=x.dtype).view(-1, 1, 1, 1, 1).repeat_interleave(x.shape[0] // len(chunk_scale), 0)
    return scale * torch.tanh(x) * (1 + sigma) + math.sin(3 * sigma)


@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.5])
@pytest.mark.parametrize("cfg", [False, True])
def test_easycache_equals_comfyuis(threshold, cfg):
    chunks = ["cond", "uncond"] if cfg else ["cond"]
    scales = [1.0, 0.6] if cfg else [1.0]
    ours = sampler_caches.EasyCache(reuse_threshold=threshold).start(SHIFT)
    holder = nodes.EasyCacheHolder(threshold, 0.15, 0.95, subsample_factor=8, offload_cache_diff=False)
    holder.prepare_timesteps(flow_sampling())
    comfy_calls = ours_calls = 0
    for x, s in zip(trajectory(0, len(chunks)), SIGMAS):
        def call_ours(x, sigma):
            nonlocal ours_calls
            ours_calls += 1
            return model(x, sigma, scales)

        def executor(x, t, options):
            nonlocal comfy_calls
            comfy_calls += 1
            return model(x, s, scales[::-1])  # ComfyUI's batch: uncond first

        skipped = ours.skipped
        out = ours(call_ours, x, s, chunks)
        holder.skip_current_step = False  # its CALC_COND_BATCH wrapper, once per step
        comfy_x = torch.cat(list(x.chunk(len(chunks)))[::-1])
        comfy_out = nodes.easycache_forward_wrapper(
            executor, comfy_x.clone(), torch.tensor([s * 1000]),
            {"easycache": holder, "sigmas": torch.tensor([s]), "uuids": chunks[::-1]})
        comfy_out = torch.cat(list(comfy_out.chunk(len(chunks)))[::-1])
        if ours.skipped > skipped and cfg and not PER_CHUNK:  # each chunk also got the other chunk's difference
            diffs = torch.cat([ours.diffs[c] for c in chunks])
            out = out + diffs.flip(0)
        torch.testing.assert_close(out, comfy_out)
        assert ours_calls == comfy_calls
    assert ours.skipped == holder.total_steps_skipped


@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.5])
def test_lazycache_equals_comfyuis(threshold):
    ours = sampler_caches.LazyCache(reuse_threshold=threshold).start(SHIFT)
    holder = nodes.LazyCacheHolder(threshold, 0.15, 0.95, subsample_factor=8, offload_cache_diff=False)
    holder.prepare_timesteps(flow_sampling())
    for x, s in zip(trajectory(1, 1), SIGMAS):
        velocity = lambda x, sigma: model(x, sigma, [1.0])  # noqa: E731
        out = ours(velocity, x, s)
        comfy = nodes.lazycache_predict_noise_wrapper(
            lambda x, t, options, seed=None: x - s * velocity(x, s), x.clone(), torch.tensor([s]),
            {"transformer_options": {"easycache": holder}})
        torch.testing.assert_close(x - s * out, comfy)
    assert ours.skipped == holder.total_steps_skipped
