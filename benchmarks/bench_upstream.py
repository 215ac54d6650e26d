#!/usr/bin/env python3
"""Speed and memory of TeaCache on Tencent's own HunyuanVideo transformer (random weights).

Runs upstream's ``HYVideoDiffusionTransformer`` (``--size mid``: a mid-size config, 4096 image tokens by default;
``--size full``: HunyuanVideo's 13B config), or with a HunyuanVideo-I2V checkout and ``--i2v-condition-type``
I2V's, or with a HunyuanVideo-1.5 checkout its ``HunyuanVideo_1_5_DiffusionTransformer`` (mid, or its 8.3B config;
CFG batched as its pipeline does), through a flow-matching schedule with upstream's scheduler, once
per setting, each in a fresh process so that peak memory is per setting: cache off (upstream unchanged),
TeaCache 0.1, TeaCache 0.15. Prints computed steps, wall time, measured speedup, ideal speedup (steps /
computed steps), their ratio, the mean time of a computed and of a skipped step, and memory: peak RSS (CPU)
or peak allocated (CUDA), and the tensors the cache itself holds.

    HUNYUANVIDEO_ROOT=/path/to/HunyuanVideo python3 benchmarks/bench_upstream.py
    # real size on one 80 GB GPU, 544p x 129 frames (latent 33 x 68 x 120), a few steps, random bf16 weights:
    HUNYUANVIDEO_ROOT=... python3 benchmarks/bench_upstream.py --size full --device cuda --dtype bf16 \
        --latent 33 68 120 --text-len 256 --steps 8 --settings off 0.15

Needs a HunyuanVideo checkout (HUNYUANVIDEO_ROOT). On a CPU (no flash attention) upstream's attention
is replaced by the test suite's SDPA stand-in (tinyhv/upstream_cpu/hyvideo_cpu.py), as in the tests.
"""

from __future__ import annotations

import os

# before torch loads (in the children; they inherit it): OpenMP threads that spin-wait between ops make torch
# 4-6x slower when another process is busy on the CPUs; a user's own OMP_WAIT_POLICY wins
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {
    # hidden 192 = 3 heads x 64 (rope 16+24+24), 2 double + 4 single blocks
    "mid": dict(hidden_size=192, heads_num=3, rope_dim_list=[16, 24, 24], mm_double_blocks_depth=2,
                mm_single_blocks_depth=4, mlp_width_ratio=4),
    # HunyuanVideo's HYVideo-T/2 (13B): hidden 3072 = 24 heads x 128 (rope 16+56+56), 20 double + 40 single blocks
    "full": dict(hidden_size=3072, heads_num=24, rope_dim_list=[16, 56, 56], mm_double_blocks_depth=20,
                 mm_single_blocks_depth=40, mlp_width_ratio=4),
}
#: with a HunyuanVideo-1.5 checkout: its transformer has double blocks only
SIZES_V15 = {
    # hidden 192 = 3 heads x 64 (rope 16+24+24), 6 double blocks
    "mid": dict(hidden_size=192, heads_num=3, rope_dim_list=[16, 24, 24], mm_double_blocks_depth=6),
    # HunyuanVideo 1.5 (8.3B): hidden 2048 = 16 heads x 128 (rope 16+56+56), 54 double blocks
    "full": dict(hidden_size=2048, heads_num=16, rope_dim_list=[16, 56, 56], mm_double_blocks_depth=54),
}


def _is_v15(root: Path) -> bool:
    return (root / "hyvideo" / "models" / "transformers" / "hunyuanvideo_1_5_transformer.py").is_file()


def run_one_v15(setting: str, opts, device, dtype) -> dict:
    """HunyuanVideo-1.5's transformer, fed as its pipeline feeds it (CFG batched: two samples per call)."""
    import torch
    from tinyhv.upstream_cpu import hyvideo15_cpu as h15

    import teacache_sample_video as tc

    if device.type == "cpu":
        h15.install_cpu_parallel_state()
    model = h15.build("t2v", dtype=dtype, device=device, **SIZES_V15[opts.size])
    lt, lh, lw = opts.latent
    inp = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) if torch.is_tensor(v) else v
           for k, v in h15.inputs("t2v", frames=lt, size=lh, width=lw, text_len=opts.text_len).items()}
    h15.denoise(model, inp, 1, False)  # warm-up, not timed
    cache = None if setting == "off" else tc.enable_teacache(model, float(setting))
    if cache:
        cache.reset(opts.steps)
    ticks = _start_ticks(device)
    h15.denoise(model, inp, opts.steps, False, after_step=lambda i: _tick(ticks, device))
    return _row(setting, opts, cache, ticks, device, image_tokens=lt * (lh // 2) * (lw // 2), condition=None)


def _start_ticks(device) -> list:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    return [time.perf_counter()]


def _tick(ticks: list, device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    ticks.append(time.perf_counter())


def _row(setting, opts, cache, ticks, device, image_tokens, condition) -> dict:
    import torch

    wall = ticks[-1] - ticks[0]
    step_s = [b - a for a, b in zip(ticks, ticks[1:])]
    report = cache.report() if cache else {}
    computed = set(report.get("computed_steps", range(opts.steps)))
    return {
        "setting": setting,
        "image_tokens": image_tokens,
        "i2v_condition_type": condition,
        "computed": len(computed),
        "wall_s": wall,
        "computed_step_s": _mean([s for i, s in enumerate(step_s) if i in computed]),
        "skipped_step_s": _mean([s for i, s in enumerate(step_s) if i not in computed]),
        "peak_mib": (torch.cuda.max_memory_allocated() if device.type == "cuda"
                     else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20,
        "peak_kind": "cuda max allocated" if device.type == "cuda" else "process peak RSS",
        "cache_held_mib": report.get("peak_cache_bytes", 0) / 2**20,
        "activation_mib": report.get("image_activation_bytes", 0) / 2**20,
        "own_s": report.get("cache_own_time_s", 0.0),
    }


def run_one(setting: str, opts) -> dict:
    import torch
    from tinyhv.upstream_cpu import hyvideo_cpu as hc

    torch.set_grad_enabled(False)
    root = hc.add_hunyuanvideo_to_path()
    device = torch.device(opts.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[opts.dtype]
    if _is_v15(root):
        return run_one_v15(setting, opts, device, dtype)
    if device.type == "cpu":
        hc.install_cpu_standins()
    from hyvideo.diffusion.schedulers import FlowMatchDiscreteScheduler

    import teacache_sample_video as tc

    i2v = {"i2v_condition_type": opts.i2v_condition_type} if opts.i2v_condition_type else {}
    model, _ = hc.make_tiny_transformer(seed=0, dtype=dtype, device=device, args_overrides=i2v, **SIZES[opts.size])
    lt, lh, lw = opts.latent
    inputs = hc.make_tiny_inputs(model, batch=1, t=lt, h=lh, w=lw, text_len=opts.text_len, seed=0)
    condition = getattr(model, "i2v_condition_type", None)  # HunyuanVideo-I2V's transformer: fed as its pipeline does
    image = torch.randn(1, hc.LATENT_CHANNELS, 1, lh, lw, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    image_tokens = lt * (lh // 2) * (lw // 2)
    cache = None if setting == "off" else tc.enable_teacache(model, float(setting), num_steps=opts.steps + 1)
    scheduler = FlowMatchDiscreteScheduler(shift=opts.flow_shift, reverse=True, solver="euler")
    scheduler.set_timesteps(opts.steps, device=device)
    x = inputs.pop("x")[:, :hc.LATENT_CHANNELS]
    inputs.pop("t")

    first = scheduler.timesteps[:1].expand(x.shape[0]).to(dtype)
    model(hc.i2v_model_input(x, image, condition), first, **inputs)  # warm-up, not timed
    if cache:
        cache.reset(opts.steps)
    ticks = _start_ticks(device)
    for t in scheduler.timesteps:
        out = model(hc.i2v_model_input(x, image, condition), t.expand(x.shape[0]).to(dtype), **inputs)["x"]
        x = scheduler.step(out, t, x, return_dict=False)[0]
        _tick(ticks, device)
    return _row(setting, opts, cache, ticks, device, image_tokens=image_tokens, condition=condition)


def _hunyuanvideo_root_error() -> str | None:
    """Why ``$HUNYUANVIDEO_ROOT`` is unusable (the check of tinyhv/upstream_cpu/hyvideo_cpu.py, without importing
    torch), or None."""
    root = os.environ.get("HUNYUANVIDEO_ROOT", "").strip()
    if not root:
        return ("HUNYUANVIDEO_ROOT is not set: point it at a checkout of Tencent/HunyuanVideo (the directory that "
                "contains hyvideo/)")
    if not (Path(root).expanduser() / "hyvideo").is_dir():
        return f"HUNYUANVIDEO_ROOT={root!r} does not contain a hyvideo/ package (a checkout of Tencent/HunyuanVideo)"
    return None


def _fail(message: str, code: int) -> int:
    print(f"{Path(__file__).name}: error: {message}", file=sys.stderr)
    return code


def _run_child(cmd, setting: str):
    """One setting in a fresh process: (its JSON row, None), or (None, a one-line error) after printing the tail
    of its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            return json.loads(lines[-1]), None
        except json.JSONDecodeError:
            pass
    tail = [line for line in proc.stderr.rstrip().splitlines() if line.strip()][-15:]
    if tail:
        print(f"--- last lines of the stderr of setting {setting}'s process ---", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)
        print("---", file=sys.stderr)
    what = tail[-1].strip() if tail else "no output on stderr"
    status = f"exit status {proc.returncode}" if proc.returncode else "no JSON row on stdout"
    return None, f"setting {setting} failed ({status}): {what}"


def _mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="mid", help="transformer config (default mid)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--latent", type=int, nargs=3, default=(4, 64, 64), metavar=("T", "H", "W"),
                        help="latent frames, height, width (image tokens = T*H/2*W/2; default 4096); 129 frames "
                             "at 544p: 33 68 120, at 720p: 33 90 160")
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--flow-shift", type=float, default=7.0)
    parser.add_argument("--settings", nargs="+", default=["off", "0.1", "0.15"],
                        help="'off' (no cache) and/or thresholds")
    parser.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the settings in turn this many times (interleaved, so that a shared machine's "
                             "drift hits all alike); each setting keeps its fastest run")
    parser.add_argument("--i2v-condition-type", choices=["token_replace", "latent_concat"], default=None,
                        help="with a HunyuanVideo-I2V checkout: its transformer, fed as its pipeline feeds it "
                             "(default there: token_replace)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting, print JSON
    opts = parser.parse_args()
    problem = _hunyuanvideo_root_error()
    if problem:
        return _fail(problem, 2)
    if opts.one:
        print(json.dumps(run_one(opts.one, opts)))
        return 0

    fastest = {}
    for repeat in range(opts.repeats):
        for setting in opts.settings:
            cmd = [sys.executable, __file__, "--one", setting, "--size", opts.size, "--steps", str(opts.steps),
                   "--latent", *map(str, opts.latent), "--text-len", str(opts.text_len), "--flow-shift",
                   str(opts.flow_shift), "--device", opts.device, "--dtype", opts.dtype,
                   *(["--i2v-condition-type", opts.i2v_condition_type] if opts.i2v_condition_type else [])]
            row, error = _run_child(cmd, setting)
            if error:
                return _fail(error, 1)
            print(f"  run {repeat + 1}/{opts.repeats} {setting}: {row['wall_s']:.1f} s", file=sys.stderr, flush=True)
            if setting not in fastest or row["wall_s"] < fastest[setting]["wall_s"]:
                fastest[setting] = row
    rows = [fastest[setting] for setting in opts.settings]

    base = next((r for r in rows if r["setting"] == "off"), rows[0])
    if _is_v15(Path(os.environ["HUNYUANVIDEO_ROOT"]).expanduser()):
        kind, size = "HunyuanVideo_1_5_DiffusionTransformer (CFG batched: 2 samples a call)", SIZES_V15[opts.size]
    else:
        kind = "HYVideoDiffusionTransformer" + (
            f" (HunyuanVideo-I2V, {base['i2v_condition_type']})" if base.get("i2v_condition_type") else "")
        size = SIZES[opts.size]
    print(f"upstream {kind}, {opts.size} {size}, {base['image_tokens']} image "
          f"tokens, {opts.steps} steps, {opts.device} {opts.dtype}, fastest of {opts.repeats}")
    print(f"{'setting':>8} {'computed':>8} {'wall s':>8} {'speedup':>8} {'ideal':>6} {'ratio':>6} "
          f"{'computed s':>10} {'skipped s':>9} {'own s':>7} {'peak MiB':>9} {'extra':>7} {'cache MiB':>9} "
          f"{'act MiB':>8}")
    for r in rows:
        speedup, ideal = base["wall_s"] / r["wall_s"], opts.steps / r["computed"]
        print(f"{r['setting']:>8} {r['computed']:>5}/{opts.steps:<2} {r['wall_s']:>8.1f} {speedup:>7.2f}x "
              f"{ideal:>5.2f}x {speedup / ideal:>6.3f} {r['computed_step_s']:>10.3f} {r['skipped_step_s']:>9.3f} "
              f"{r['own_s']:>7.2f} "
              f"{r['peak_mib']:>9.1f} {r['peak_mib'] - base['peak_mib']:>+7.1f} "
              f"{r['cache_held_mib']:>9.2f} {r['activation_mib']:>8.2f}")
    print(f"computed s / skipped s = mean seconds of a step whose blocks ran / were skipped; own s = seconds spent in "
          f"the cache's own work over the run (host time); peak = "
          f"{base['peak_kind']}; extra = peak minus cache-off peak; cache MiB = most the cache held at once; act MiB "
          "= one image activation in the model dtype")
    return 0


if __name__ == "__main__":
    sys.exit(main())
