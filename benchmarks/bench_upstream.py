#!/usr/bin/env python3
"""Speed and memory of TeaCache on Tencent's own HunyuanVideo transformer (random weights).

Runs upstream's ``HYVideoDiffusionTransformer`` (mid-size config, >= 4k image tokens) through a full
flow-matching schedule with upstream's scheduler, once per setting, each in a fresh process so that
peak memory is per setting: cache off (upstream unchanged), TeaCache 0.1, TeaCache 0.15.
Prints computed steps, wall time, measured speedup, ideal speedup (steps / computed steps), their
ratio, and memory: peak RSS (CPU) or peak allocated (CUDA), and the tensors the cache itself holds.

    HUNYUANVIDEO_ROOT=/path/to/HunyuanVideo python3 benchmarks/bench_upstream.py

Needs a HunyuanVideo checkout (HUNYUANVIDEO_ROOT). On a CPU (no flash attention) upstream's attention
is replaced by the test suite's SDPA stand-in (tests/support/hyvideo_cpu.py), as in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

# hidden 192 = 3 heads x 64 (rope 16+24+24), 2 double + 4 single blocks
MID = dict(hidden_size=192, heads_num=3, rope_dim_list=[16, 24, 24], mm_double_blocks_depth=2,
           mm_single_blocks_depth=4, mlp_width_ratio=4)


def run_one(setting: str, opts) -> dict:
    import torch
    from support import hyvideo_cpu as hc

    torch.set_grad_enabled(False)
    hc.add_hunyuanvideo_to_path()
    device = torch.device(opts.device)
    if device.type == "cpu":
        hc.install_cpu_standins()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[opts.dtype]
    from hyvideo.diffusion.schedulers import FlowMatchDiscreteScheduler

    import teacache_sample_video as tc

    model, _ = hc.make_tiny_transformer(seed=0, dtype=dtype, device=device, **MID)
    lt, lh, lw = opts.latent
    inputs = hc.make_tiny_inputs(model, batch=1, t=lt, h=lh, w=lw, text_len=opts.text_len, seed=0)
    image_tokens = lt * (lh // 2) * (lw // 2)
    cache = None if setting == "off" else tc.enable_teacache(model, float(setting), num_steps=opts.steps + 1)
    scheduler = FlowMatchDiscreteScheduler(shift=opts.flow_shift, reverse=True, solver="euler")
    scheduler.set_timesteps(opts.steps, device=device)
    x = inputs.pop("x")
    inputs.pop("t")
    model(x, scheduler.timesteps[:1].expand(x.shape[0]).to(dtype), **inputs)  # warm-up, not timed
    if cache:
        cache.reset(opts.steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for t in scheduler.timesteps:
        out = model(x, t.expand(x.shape[0]).to(dtype), **inputs)["x"]
        x = scheduler.step(out, t, x, return_dict=False)[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    report = cache.report() if cache else {}
    return {
        "setting": setting,
        "image_tokens": image_tokens,
        "computed": len(report.get("computed_steps", range(opts.steps))),
        "wall_s": wall,
        "peak_mib": (torch.cuda.max_memory_allocated() if device.type == "cuda"
                     else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20,
        "peak_kind": "cuda max allocated" if device.type == "cuda" else "process peak RSS",
        "cache_held_mib": report.get("peak_cache_bytes", 0) / 2**20,
        "activation_mib": report.get("image_activation_bytes", 0) / 2**20,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--latent", type=int, nargs=3, default=(4, 64, 64), metavar=("T", "H", "W"),
                        help="latent frames, height, width (image tokens = T*H/2*W/2; default 4096)")
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--flow-shift", type=float, default=7.0)
    parser.add_argument("--settings", nargs="+", default=["off", "0.1", "0.15"],
                        help="'off' (no cache) and/or thresholds")
    parser.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting, print JSON
    opts = parser.parse_args()
    if opts.one:
        print(json.dumps(run_one(opts.one, opts)))
        return 0

    rows = []
    for setting in opts.settings:
        cmd = [sys.executable, __file__, "--one", setting, "--steps", str(opts.steps), "--latent",
               *map(str, opts.latent), "--text-len", str(opts.text_len), "--flow-shift", str(opts.flow_shift),
               "--device", opts.device, "--dtype", opts.dtype]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  {setting}: {rows[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)

    base = next((r for r in rows if r["setting"] == "off"), rows[0])
    print(f"upstream HYVideoDiffusionTransformer, {MID}, {base['image_tokens']} image tokens, "
          f"{opts.steps} steps, {opts.device} {opts.dtype}")
    print(f"{'setting':>8} {'computed':>8} {'wall s':>8} {'speedup':>8} {'ideal':>6} {'ratio':>6} "
          f"{'peak MiB':>9} {'extra':>7} {'cache MiB':>9} {'act MiB':>8}")
    for r in rows:
        speedup, ideal = base["wall_s"] / r["wall_s"], opts.steps / r["computed"]
        print(f"{r['setting']:>8} {r['computed']:>5}/{opts.steps:<2} {r['wall_s']:>8.1f} {speedup:>7.2f}x "
              f"{ideal:>5.2f}x {speedup / ideal:>6.3f} {r['peak_mib']:>9.1f} {r['peak_mib'] - base['peak_mib']:>+7.1f} "
              f"{r['cache_held_mib']:>9.2f} {r['activation_mib']:>8.2f}")
    print(f"peak = {base['peak_kind']}; extra = peak minus cache-off peak; cache MiB = most the cache held at "
          "once; act MiB = one image activation in the model dtype")
    return 0


if __name__ == "__main__":
    sys.exit(main())
