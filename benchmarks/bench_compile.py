#!/usr/bin/env python3
"""Do torch.compile's and TeaCache's speedups multiply? Times one generation of diffusers'
``HunyuanVideoTransformer3DModel`` (a mid-size config, random weights) four ways: eager, compiled (regional:
``block.compile()`` on every block, as diffusers recommends with caches), cached (TeaCache), compiled and cached.

    python3 benchmarks/bench_compile.py                      # CPU: inductor needs a C++ compiler
    python3 benchmarks/bench_compile.py --device cuda --dtype bf16 --latent 9 60 104

The cache's threshold is the one that computes about ``--speedup`` times fewer steps on this model and input
(picked by replaying the rule on an uncached traced run, as ``--teacache-speedup`` does), so the cached runs do the
same work compiled or not. Each way runs ``--repeats`` timed generations after one untimed (compiling) one; the
minimum is reported, with the graphs dynamo built and whether the second generation compiled anything new.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spin-waiting threads

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import teacache_sample_video as tc  # noqa: E402

MID = dict(in_channels=16, out_channels=16, num_attention_heads=4, attention_head_dim=64, num_layers=4,
           num_single_layers=8, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=256,
           pooled_projection_dim=128, rope_axes_dim=(16, 24, 24), guidance_embeds=True)


def make_model(dtype, device):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    model = HunyuanVideoTransformer3DModel(**MID)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # diffusers zero-initialises the modulation and output layers
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model.to(device=device, dtype=dtype).eval()


def inputs(latent, dtype, device, text_len=64):
    g = torch.Generator().manual_seed(1)
    t, h, w = latent
    return dict(hidden_states=torch.randn(1, MID["in_channels"], t, h, w, generator=g),
                encoder_hidden_states=torch.randn(1, text_len, MID["text_embed_dim"], generator=g),
                encoder_attention_mask=torch.ones(1, text_len, dtype=torch.bool),
                pooled_projections=torch.randn(1, MID["pooled_projection_dim"], generator=g),
                guidance=torch.tensor([6000.0])), dtype, device


def generate(model, batch, steps, cache=None, shift=7.0):
    x_in, dtype, device = batch
    x_in = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in x_in.items()}
    s = torch.linspace(1.0, 0.0, steps + 1)
    sigmas = shift * s / (1 + (shift - 1) * s)
    if cache is not None:
        cache.reset(steps, timesteps=sigmas * 1000)
    x = x_in["hidden_states"]
    with torch.no_grad():
        for i in range(steps):
            t = (sigmas[i] * 1000).to(device=device, dtype=dtype).expand(1)
            v = model(**{**x_in, "hidden_states": x, "timestep": t}, return_dict=False)[0]
            x = x + (sigmas[i + 1] - sigmas[i]).item() * v
    if device != "cpu":
        torch.cuda.synchronize()
    return x


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--latent", type=int, nargs=3, default=(4, 32, 32), metavar=("T", "H", "W"))
    p.add_argument("--speedup", type=float, default=2.0, help="the cache's target (its threshold is picked for it)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--backend", default="inductor")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    opts = p.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[opts.dtype]
    batch = inputs(opts.latent, dtype, opts.device)

    traced = make_model(dtype, opts.device)
    trace = tc.enable_teacache(traced, 0.0, trace=True)
    generate(traced, batch, opts.steps, trace)
    thresh, predicted = tc.threshold_for_speedup([trace.stats()["rel_l1"]], opts.speedup, tc.TeaCacheConfig())
    trace.disable()
    print(f"threshold {thresh:.4g}: {predicted:.0f}/{opts.steps} steps computed on the traced run; "
          f"{torch.get_num_threads()} threads, {opts.device}, {opts.dtype}, latent {tuple(opts.latent)}")

    from torch._dynamo.utils import counters

    rows = {}
    for way in ("eager", "cached", "compiled", "compiled+cached"):
        torch._dynamo.reset()
        counters.clear()
        model = make_model(dtype, opts.device)
        cache = tc.enable_teacache(model, thresh) if "cached" in way else None
        if way.startswith("compiled"):
            for block in list(model.transformer_blocks) + list(model.single_transformer_blocks):
                block.compile(backend=opts.backend)
        start = time.perf_counter()
        generate(model, batch, opts.steps, cache)  # compiles
        first = time.perf_counter() - start
        graphs = counters["stats"]["unique_graphs"]
        times = []
        for _ in range(opts.repeats):
            start = time.perf_counter()
            generate(model, batch, opts.steps, cache)
            times.append(time.perf_counter() - start)
        computed = len(cache.stats()["computed_steps"]) if cache else opts.steps
        rows[way] = dict(time=min(times), first=first, graphs=graphs, new=counters["stats"]["unique_graphs"] - graphs,
                         computed=computed)
        print(f"{way:16s} {min(times):8.2f} s/generation (first, compiling: {first:7.2f} s)  computed "
              f"{computed}/{opts.steps}  graphs {graphs} (+{rows[way]['new']} in later generations)", flush=True)
    base = rows["eager"]["time"]
    sp = {k: base / r["time"] for k, r in rows.items()}
    print(f"speedups over eager: cached {sp['cached']:.2f}x, compiled {sp['compiled']:.2f}x, compiled+cached "
          f"{sp['compiled+cached']:.2f}x; the product of the first two {sp['cached'] * sp['compiled']:.2f}x "
          f"(ratio {sp['compiled+cached'] / (sp['cached'] * sp['compiled']):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
