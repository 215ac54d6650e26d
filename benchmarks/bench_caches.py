#!/usr/bin/env python3
"""Speed versus fidelity of step caches on diffusers' HunyuanVideo transformer, side by side.

Every method runs the same prompts and seeds; each output is compared with the uncached output of the
same prompt and seed. Methods: TeaCache (published coefficients, and coefficients fitted on separate
calibration prompts aimed at target speedups; rules reuse, extrapolate and fitted) and diffusers' own
FirstBlockCache, MagCache (its ratios calibrated the same way) and TaylorSeerCache, each over a sweep of its
setting. Three studies run only when named in ``--methods``: TeaCache's rules on fixed intervals
(``interval-*``: the skip cap alone, threshold never reached), HunyuanVideo-1.5's built-in fixed schedule
(``schedule-*``: ``generate.py --enable_cache``'s formula, at several intervals), and the baseline of every cache,
the plain sampler with fewer steps (``steps``: as many transformer calls, no cache), and with more (how far the
reference itself is from the converged sampler).

    python3 benchmarks/bench_caches.py --model trained   # the shipped trained model (assets/)
    python3 benchmarks/bench_caches.py --model random    # a mid-size random-weight transformer

Prints a table (computed steps = transformer calls whose block stack really ran, mean over runs; speedup =
uncached wall time / method wall time, where the uncached run is timed again right after each timed run so
that a shared machine's drift cancels, fastest of ``--repeats`` each; PSNR/SSIM against the uncached output,
for the random model on the raw output with the uncached output's range), and writes it as CSV, plus plots of
PSNR and SSIM against the ideal and the measured speedup (PNG; needs matplotlib: ``pip install -r
requirements-bench.txt``, or pass ``--no-plot``). An existing CSV or PNG is never replaced unless ``--overwrite``
is passed (the default paths are the committed results: regenerating them needs it).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import ast
import itertools
import math
import os
import sys
import time
from pathlib import Path

# before torch loads: OpenMP threads that spin-wait between ops make torch 4-6x slower when another process is
# busy on the CPUs; a user's own OMP_WAIT_POLICY wins
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import teacache_sample_video as tc  # noqa: E402
from tinyhv import metrics  # noqa: E402

TEACACHE_THRESHOLDS = [0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.7]
SPEEDUPS = [1.5, 2.0, 2.5, 3.0, 4.0]
INTERVAL_CAPS = [2, 3, 5, 7, 9, 11]  # fixed intervals: compute one step, skip this many (first and last computed)
SAMPLER_STEPS = [6, 8, 10, 14, 19, 25, 100, 400]  # the plain sampler, no cache
#: HunyuanVideo-1.5's built-in fixed schedule (generate.py --enable_cache): its start and end steps (for 50
#: steps), at several intervals (its default is 4: 25 of 50 computed)
SCHEDULE_START_END, SCHEDULE_INTERVALS = (11, 45), [2, 3, 4, 6, 10]


STUDIES = {"steps", *(f"interval-{rule}" for rule in tc.RULES), *(f"schedule-{rule}" for rule in tc.RULES)}


class Steps(int):
    """A method setting: run the plain sampler with this many steps instead of the benchmark's."""


# -- subjects: what is generated --------------------------------------------------------------------------------

class Trained:
    """The shipped trained TinyHunyuanVideo; outputs are videos in [0, 1]."""

    def __init__(self, steps):
        from tinyhv import data
        from tinyhv.model import TinyHunyuanVideo

        self.model = TinyHunyuanVideo.from_pretrained()
        self.transformer, self.steps, self.data_range = self.model.transformer, steps, 1.0
        train, held_out = data.split()
        # evaluation: every held-out colour+shape+direction triple, sizes and backgrounds alternating
        self.eval_runs = [(held_out[5 * i % len(held_out)].prompt, 1000 + i) for i in range(8)]
        # calibration (TeaCache profile, MagCache ratios): other prompts and seeds, from the training combinations
        self.calib_runs = [(a.prompt, 2000 + i) for i, a in enumerate(train[::41][:4])]

    def run(self, prompt_seed, cache=None, steps=None):
        prompt, seed = prompt_seed
        return self.model.generate(prompt, seed=seed, num_steps=steps or self.steps, cache=cache)

    @staticmethod
    def same_content(out, ref) -> bool:
        """The automatic judge of the quality bar reads the same colour, shape and direction in both clips."""
        from tinyhv.evaluate import BAR_ATTRIBUTES, describe

        a, b = describe(out), describe(ref)
        return all(a[k] == b[k] for k in BAR_ATTRIBUTES)


class Random:
    """A mid-size random-weight HunyuanVideoTransformer3DModel on fixed random conditioning; outputs are latents."""

    CONFIG = dict(num_attention_heads=4, attention_head_dim=32, num_layers=4, num_single_layers=8,
                  text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(8, 12, 12), in_channels=16,
                  out_channels=16, patch_size=2)

    def __init__(self, steps):
        from tiny_diffusers import make_inputs, make_transformer, sample

        self.transformer = make_transformer(seed=0, **self.CONFIG)
        self._sample, self._inputs, self.steps = sample, make_inputs, steps
        self.eval_runs, self.calib_runs, self.data_range = [0, 1], [10, 11], None

    def run(self, seed, cache=None, steps=None):
        inputs = self._inputs(batch=1, frames=4, height=32, width=32, text_len=16, seed=seed)
        inputs["hidden_states"] = torch.randn(1, 16, 4, 32, 32, generator=torch.Generator().manual_seed(seed))
        inputs["encoder_hidden_states"] = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(seed + 1))
        inputs["pooled_projections"] = torch.randn(1, 16, generator=torch.Generator().manual_seed(seed + 2))
        steps = steps or self.steps
        if cache is not None:
            cache.reset(steps)
        with torch.no_grad():
            return self._sample(self.transformer, inputs, steps)


# -- methods ----------------------------------------------------------------------------------------------------

def computed_counter(transformer):
    """Counts transformer calls whose last block really ran (its attention's query projection is called)."""
    blocks = list(transformer.single_transformer_blocks) or list(transformer.transformer_blocks)
    count = [0]
    blocks[-1].attn.to_q.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def calibrate(subject):
    """TeaCache profile and MagCache ratios from uncached runs on the calibration prompts/seeds."""
    cache = tc.enable_teacache(subject.transformer, 0.0, trace=True)
    traces = []
    for run in subject.calib_runs:
        subject.run(run, cache)
        traces.append(cache.stats())
    cache.disable()
    profile = tc.make_profile(traces, transformer=subject.transformer, setting={"steps": subject.steps})
    from diffusers import MagCacheConfig

    ratios = []
    for run in subject.calib_runs:
        subject.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=subject.steps))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), subject.transformer.cache_context("cond"):
            subject.run(run)
        subject.transformer._reset_stateful_cache()
        subject.transformer.disable_cache()
        ratios.append(ast.literal_eval(printed.getvalue().strip().splitlines()[-1]))
    return profile, np.mean(ratios, axis=0).tolist()


def methods(subject, profile, mag_ratios, quick):
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    steps = subject.steps
    pick = (lambda xs: xs[::2]) if quick else (lambda xs: xs)
    thresholds = [0.1, 0.15, 0.3, 0.7] if quick else TEACACHE_THRESHOLDS
    yield "none", "-", None
    for n in SAMPLER_STEPS if not quick else SAMPLER_STEPS[::3]:
        yield "steps", n, Steps(n)
    for thresh in thresholds:
        yield "teacache", thresh, dict(rel_l1_thresh=thresh)
    for rule in ("extrapolate", "fitted"):
        for thresh in thresholds:
            yield f"teacache-{rule}", thresh, dict(rel_l1_thresh=thresh, rule=rule)
    traces = [t["rel_l1"] for t in profile["traces"]]
    for rule in tc.RULES:
        for s in pick(SPEEDUPS):
            cfg = tc.TeaCacheConfig(coefficients=profile["coefficients"], rule=rule)
            thresh, _ = tc.threshold_for_speedup(traces, s, cfg)
            yield f"teacache-calibrated-{rule}", f"{s}x:{thresh:.3g}", dict(
                rel_l1_thresh=thresh, coefficients=profile["coefficients"], rule=rule)
    for rule in tc.RULES:  # the skip cap alone (a threshold never reached): TeaCache's rules on fixed intervals
        for cap in pick(INTERVAL_CAPS):
            yield f"interval-{rule}", cap, dict(rel_l1_thresh=1e9, max_consecutive_skips=cap, rule=rule)
    start, end = (round(x * steps / 50) for x in SCHEDULE_START_END)
    for rule in tc.RULES:  # HunyuanVideo-1.5's fixed schedule, with each rule
        for interval in SCHEDULE_INTERVALS:
            yield f"schedule-{rule}", f"{start}/{end}/{interval}", dict(schedule=(start, end, interval), rule=rule)
    for thresh in pick([0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6]):  # random weights need the large ones to skip
        yield "diffusers-fbcache", thresh, FirstBlockCacheConfig(threshold=thresh)
    for thresh in pick([0.02, 0.06, 0.12, 0.24, 0.5]):
        yield "diffusers-magcache", thresh, MagCacheConfig(threshold=thresh, num_inference_steps=steps,
                                                           mag_ratios=mag_ratios)
    for interval in pick([2, 3, 4, 5, 6]):
        yield "diffusers-taylorseer", interval, TaylorSeerCacheConfig(
            cache_interval=interval, disable_cache_before_step=3, taylor_factors_dtype=torch.float32)


def generate(subject, config, run):
    """One generation with ``config`` (None, TeaCache kwargs, a diffusers cache config or ``Steps``); (output,
    seconds)."""
    t = subject.transformer
    cache = None
    if isinstance(config, Steps):
        start = time.perf_counter()
        out = subject.run(run, steps=int(config))
        return out, time.perf_counter() - start
    if isinstance(config, dict):
        cache = tc.enable_teacache(t, **config)
    elif config is not None:
        # diffusers 0.38 caches the list of hooked submodules on first use; a cache enabled later on other
        # submodules (TaylorSeer after FirstBlockCache) would then never get its context set
        if hasattr(t, "_diffusers_hook"):
            t._diffusers_hook._child_registries_cache = None
        t.enable_cache(config)
    try:
        start = time.perf_counter()
        with t.cache_context("cond") if config is not None and cache is None else contextlib.nullcontext():
            out = subject.run(run, cache)
        return out, time.perf_counter() - start
    finally:
        if cache is not None:
            cache.disable()
        elif config is not None:
            t._reset_stateful_cache()
            t.disable_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["trained", "random"], default="trained")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1, help="timed repetitions per run (min is kept)")
    parser.add_argument("--quick", action="store_true",
                        help="TeaCache at 0.1, 0.15, 0.3, 0.7 and every other setting of the other methods")
    parser.add_argument("--out", default=None, help="CSV path (default benchmarks/results/caches_<model>.csv); "
                                                    "with --replot the PNG path")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help="run only these methods (and the uncached baseline), e.g. diffusers-fbcache; the "
                             f"studies {', '.join(sorted(STUDIES))} run only when named here")
    parser.add_argument("--replot", metavar="CSV", nargs="+",
                        help="only redraw the plot of CSVs this script wrote (their methods, or those of --methods), "
                             "to --out (default: the first CSV's name, .png)")
    parser.add_argument("--no-plot", action="store_true", help="write the CSV only (no matplotlib needed)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out CSV (and its PNG); without it such a run refuses to start")
    args = parser.parse_args()
    if args.replot:
        missing = [path for path in args.replot if not Path(path).is_file()]
        if missing:
            return _fail(f"no such CSV: {missing[0]}")
        if not _have_matplotlib():
            return _fail("--replot needs matplotlib: pip install -r requirements-bench.txt")
        rows = []
        for path in args.replot:
            with open(path, newline="") as f:
                rows += [r for r in csv.DictReader(f) if not args.methods or r["method"] in args.methods]
        if not rows:
            return _fail(f"no rows{' of ' + ', '.join(args.methods) if args.methods else ''} in "
                         f"{', '.join(args.replot)}")
        model = Path(args.replot[0]).stem.removeprefix("caches_").split("_")[0]
        plot(rows, Path(args.out or Path(args.replot[0]).with_suffix(".png")),
             f"{model} model, {rows[0]['steps']} steps")
        return 0
    # checked before the long run (20+ minutes), not after it
    csv_path = Path(args.out or ROOT / "benchmarks" / "results" / f"caches_{args.model}.csv")
    written = [csv_path] if args.no_plot else [csv_path, csv_path.with_suffix(".png")]
    existing = [path for path in written if path.exists()]
    if existing and not args.overwrite:
        return _fail(f"{existing[0]} exists: pass --overwrite to replace it, or --out another path")
    if not args.no_plot and not _have_matplotlib():
        return _fail("the plot needs matplotlib: pip install -r requirements-bench.txt (or pass --no-plot)")
    torch.manual_seed(0)
    subject = (Trained if args.model == "trained" else Random)(args.steps)
    counter = computed_counter(subject.transformer)
    profile, mag_ratios = calibrate(subject)

    baseline, rows = {}, []
    judge = getattr(subject, "same_content", None)  # the trained model's content check; None for random weights
    for name, setting, config in methods(subject, profile, mag_ratios, args.quick):
        if name not in ("none", *(args.methods or [])) and (args.methods or name in STUDIES):
            continue
        psnrs, ssims, walls, base_walls, computed, same = [], [], [], [], [], []
        for run in subject.eval_runs:
            times, base_times = [], []
            for _ in range(args.repeats):
                counter[0] = 0
                out, seconds = generate(subject, config, run)
                n = counter[0]
                times.append(seconds)
                if name != "none":  # the uncached run again, right after: a shared machine's speed drifts
                    base_times.append(generate(subject, None, run)[1])
            walls.append(min(times))
            base_walls.append(min(base_times or times))
            computed.append(n)
            if name == "none":
                baseline[str(run)] = out
            ref = baseline[str(run)]
            rng = subject.data_range or float(ref.max() - ref.min())
            if name != "none":
                psnrs.append(metrics.psnr(_video(out), _video(ref), data_range=rng))
                ssims.append(metrics.ssim(_video(out), _video(ref), data_range=rng))
                if judge:
                    same.append(judge(out, ref))
        speedup = sum(base_walls) / sum(walls)
        rows.append(dict(method=name, setting=setting, computed=float(np.mean(computed)), steps=args.steps,
                         wall_s=float(np.mean(walls)), speedup=speedup,
                         psnr=float(np.mean(psnrs)) if psnrs else math.inf,
                         ssim=float(np.mean(ssims)) if ssims else 1.0,
                         **({"same_content": float(np.mean(same)) if same else 1.0} if judge else {})))
        r = rows[-1]
        print(f"{name:>32} {str(setting):>12} computed {r['computed']:5.1f}/{args.steps}  {r['wall_s']:7.3f} s  "
              f"{r['speedup']:5.2f}x  PSNR {r['psnr']:6.2f}  SSIM {r['ssim']:.4f}"
              + (f"  same content {r['same_content']:.0%}" if "same_content" in r else ""), flush=True)

    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if not args.no_plot:
        plot(rows, csv_path.with_suffix(".png"), f"{args.model} model, {args.steps} steps")
    print(f"wrote {' and '.join(map(str, written))}")
    return 0


def _fail(message: str) -> int:
    print(f"{Path(__file__).name}: error: {message}", file=sys.stderr)
    return 2


def _have_matplotlib() -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        return False
    return True


def _video(x: torch.Tensor) -> torch.Tensor:
    """(T, H, W, C) frames for SSIM: videos pass through, latents (B, C, T, H, W) become frames of channels."""
    if x.dim() == 5:
        return x[0].permute(1, 2, 3, 0)
    return x


def plot(rows, path, title):
    """PSNR and SSIM (rows) against the ideal speedup (steps / computed steps: deterministic) and the measured
    wall-clock speedup (columns), one curve per method, points in the order of its setting sweep; runs with more
    steps than the benchmark's (slowdowns) stay in the table only."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharey="row")
    for name in dict.fromkeys(r["method"] for r in rows if r["method"] != "none"):
        mine = [r for r in rows if r["method"] == name and float(r["computed"]) <= float(r["steps"])]
        for (i, key), (j, speed) in itertools.product(enumerate(("psnr", "ssim")), enumerate(("ideal", "measured"))):
            x = [float(r["steps"]) / float(r["computed"]) if speed == "ideal" else float(r["speedup"]) for r in mine]
            axes[i][j].plot(x, [float(r[key]) for r in mine], marker="o", label=name)
    for (i, label), (j, xlabel) in itertools.product(
            enumerate(("PSNR vs uncached (dB)", "SSIM vs uncached")),
            enumerate(("ideal speedup (steps / computed steps)", "measured speedup (uncached wall time / wall time)"))):
        axes[i][j].set_xlabel(xlabel)
        axes[i][j].set_ylabel(label)
        axes[i][j].set_xscale("log")  # a cache that skips almost everything would squash the others' curves
        axes[i][j].xaxis.set_major_locator(matplotlib.ticker.FixedLocator([1, 1.5, 2, 3, 4, 6, 10, 20, 50]))
        axes[i][j].xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        axes[i][j].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes[i][j].grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
