#!/usr/bin/env python3
"""Which sampling setting of a shipped model reproduces the real HunyuanVideo's published relations: the plain
sampler at 25 of 50 steps, and the published rule at 0.1, each against the 50-step clip, for each classifier-free
guidance scale and shift given (16 held-out prompts, seeds 5000-5015: not the benchmark's). Prints one line per
setting (mean and worst prompt). The second model (HunyuanVideo 1.5's transformer) by default; ``--model trained``
the first (HunyuanVideo's).

    python3 benchmarks/study_regime.py 12,3 20,3 12,7     # CFG,SHIFT pairs
    python3 benchmarks/study_regime.py --model trained 3,3 8,3 20,3
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import teacache_sample_video as tc  # noqa: E402
from tinyhv import data, metrics, scenes  # noqa: E402
from tinyhv.model import TinyHunyuanVideo, TinyHunyuanVideo15  # noqa: E402


def main(settings, trained: bool = False) -> int:
    model = (TinyHunyuanVideo if trained else TinyHunyuanVideo15).from_pretrained()
    _, held_out = (data if trained else scenes).split()
    stride = 5 if trained else 37  # coprime with the held-out combinations' count: no repeats
    runs = [(held_out[(i * stride + 11) % len(held_out)].prompt, 5000 + i) for i in range(16)]
    for cfg, shift in settings:
        start, half, rule, computed = time.time(), [], [], []

        def generate(prompt, seed, steps, cache=None):
            return model.generate(prompt, seed=seed, num_steps=steps, cfg_scale=cfg, shift=shift, cache=cache)

        for prompt, seed in runs:
            ref = generate(prompt, seed, 50)
            half.append(metrics.psnr(generate(prompt, seed, 25), ref, data_range=1.0))
            cache = tc.enable_teacache(model.transformer, 0.1)
            try:
                out = generate(prompt, seed, 50, cache)
                computed.append(len(cache.stats()["computed_steps"]))
            finally:
                cache.disable()
            rule.append(metrics.psnr(out, ref, data_range=1.0))
        print(f"cfg {cfg} shift {shift}: 25 of 50 plain steps {np.mean(half):.2f} dB (worst {min(half):.2f}); "
              f"published rule 0.1 {np.mean(rule):.2f} dB (worst {min(rule):.2f}) at {np.mean(computed):.1f} "
              f"computed; {time.time() - start:.0f} s", flush=True)
    return 0


def _pair(text: str) -> tuple:
    try:
        cfg, shift = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CFG,SHIFT (e.g. 20,3), got {text!r}")
    return cfg, shift


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["trained", "scenes"], default="scenes",
                        help="trained: the first shipped model; scenes: the second (default)")
    parser.add_argument("settings", nargs="+", type=_pair, metavar="CFG,SHIFT")
    args = parser.parse_args()
    sys.exit(main(args.settings, args.model == "trained"))
