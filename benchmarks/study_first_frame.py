#!/usr/bin/env python3
"""Image-to-video (token_replace): should TeaCache's indicator leave out the first frame's tokens?

With ``token_replace`` the pipeline feeds the given image as the first latent frame at every step, modulated at
timestep 0, so those tokens are the same at every step: they add nothing to the indicator's change and only
dilute it by their share of its mass. This measures, on diffusers' I2V transformer (random weights, fed as
``HunyuanVideoImageToVideoPipeline`` feeds it, ``--steps`` Euler steps) for several video lengths:

- the first frame's share of the indicator's mass (from the two indicators' ratio, step by step), against
  1 / latent frames;
- the computed steps of ``--teacache-first-frame include`` (the published definition) and ``exclude`` at the
  published thresholds, uncalibrated;
- calibrated as docs/calibration.md says (a profile traced on one seed, ``--teacache-speedup`` on another): the computed
  steps of both and their PSNR against the uncached output (random weights: this compares the two options on the
  same model, it says nothing of the real model's fidelity).

    python3 benchmarks/study_first_frame.py            # about a minute on 2 CPU cores
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see bench_caches.py)

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--latent-frames", type=int, nargs="+", default=[2, 5, 9, 17, 33],
                        help="latent frames (video length 4 (T - 1) + 1: 5, 17, 33, 65, 129 frames)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.15, 0.2])
    parser.add_argument("--speedups", type=float, nargs="+", default=[1.5, 2.0, 2.5])
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    opts = parser.parse_args()
    if opts.out is not None and opts.out.exists():
        parser.error(f"{opts.out} exists; not overwriting it")

    import torch
    from loguru import logger

    import teacache_sample_video as tc
    from tinyhv.random_models import i2v_caller, make_i2v_transformer, make_inputs, sample

    logger.remove()  # the I2V coefficient warning, once per run, is known here
    torch.set_grad_enabled(False)

    def run(frames, seed, **cache_kw):
        model = make_i2v_transformer("token_replace")
        cache = tc.enable_teacache(model, num_steps=opts.steps, **cache_kw) if cache_kw else None
        image = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(100 + seed))
        out = sample(i2v_caller(model, "token_replace", image), make_inputs(frames=frames, seed=seed), opts.steps)
        return out, (cache.stats() if cache else None)

    def psnr(x, ref):
        peak = float(ref.max() - ref.min())
        return 10 * math.log10(peak ** 2 / float(((x - ref) ** 2).mean()))

    rows = []
    print(f"{opts.steps} steps, diffusers HunyuanVideoTransformer3DModel (token_replace, random weights), "
          "8x8 latent (16 tokens per frame)")
    print(f"{'frames':>6} {'1/T':>6} {'share':>6} {'ratio min-max':>14}  uncalibrated computed (include / exclude) "
          "at " + ", ".join(map(str, opts.thresholds)))
    for frames in opts.latent_frames:
        traces = {ff: run(frames, 0, rel_l1_thresh=0.0, trace=True, first_frame=ff)[1] for ff in tc.FIRST_FRAME}
        ratios = [x / i for x, i in zip(traces["exclude"]["rel_l1"][1:], traces["include"]["rel_l1"][1:])]
        share = 1 - 1 / (sum(ratios) / len(ratios))
        uncalibrated = {ff: [len(run(frames, 1, rel_l1_thresh=t, first_frame=ff)[1]["computed_steps"])
                             for t in opts.thresholds] for ff in tc.FIRST_FRAME}
        reference, _ = run(frames, 1)
        calibrated = {}
        for ff in tc.FIRST_FRAME:
            profile = tc.make_profile([traces[ff]], transformer=make_i2v_transformer("token_replace"), setting={},
                                      first_frame=ff)
            calibrated[ff] = []
            for speedup in opts.speedups:
                config = tc.TeaCacheConfig(0.0, profile["coefficients"], first_frame=ff)
                thresh, _ = tc.threshold_for_speedup([t["rel_l1"] for t in profile["traces"]], speedup, config)
                out, stats = run(frames, 1, rel_l1_thresh=thresh, coefficients=profile["coefficients"],
                                 first_frame=ff)
                calibrated[ff].append({"speedup": speedup, "computed_steps": stats["computed_steps"],
                                       "psnr_db": psnr(out, reference)})
        rows.append({"latent_frames": frames, "share": share, "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "uncalibrated": uncalibrated, "calibrated": calibrated})
        pairs = ", ".join(f"{a}/{b}" for a, b in zip(uncalibrated["include"], uncalibrated["exclude"]))
        print(f"{frames:>6} {1 / frames:>6.3f} {share:>6.3f} {min(ratios):>6.3f}-{max(ratios):<7.3f}  {pairs}")
    print("\ncalibrated (profile on seed 0, run on seed 1): computed steps and PSNR (dB) against uncached, "
          "include / exclude; '=' where both computed the same steps")
    for row in rows:
        cells = []
        for inc, exc in zip(row["calibrated"]["include"], row["calibrated"]["exclude"]):
            same = "=" if inc["computed_steps"] == exc["computed_steps"] else " "
            cells.append(f"{inc['speedup']}x: {len(inc['computed_steps'])}/{len(exc['computed_steps'])}{same} "
                         f"{inc['psnr_db']:.1f}/{exc['psnr_db']:.1f}")
        print(f"{row['latent_frames']:>6}  " + "   ".join(cells))
    if opts.out is not None:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps({"steps": opts.steps, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
