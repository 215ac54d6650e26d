#!/usr/bin/env python3
"""Which signal, known before a step runs, predicts the error of skipping it: on uncached runs of a shipped trained
model, each step k's "error of skipping" is the relative L1 change of the block stack's residual,
|r_k - r_(k-1)| / |r_(k-1)| (what reusing the last residual gets wrong), and each signal is what a cache could
read at step k:

- ``modulated-input``: TeaCache's, the first block's modulated input's relative L1 change (the published
  polynomial is left out: a rank correlation does not see a monotone rescale);
- ``transformation-rate``: EasyCache's, the rate |Δ out| / |Δ in| of the stack's image tokens learnt at the
  step before, times the input's change, over the output's size;
- ``input``: the stack's input's relative change alone;
- ``first-block-residual``: FirstBlockCache's, the first block's residual's relative change (it needs that block
  run at every step);
- ``first-block-rate``: the two combined: the first block's residual change times the rate |Δ r| / |Δ r_first|
  learnt at the step before, over the residual's size (EasyCache's idea with the first block as the input);
- ``magnitude-ratio``: MagCache's, |1 - ratio_k| with ratio_k = |r_k| / |r_(k-1)| averaged over separate
  calibration prompts (what MagCache reads at run time: the same for every prompt).

Two rank correlations (Spearman), mean over the held-out prompts: over the steps of one run (does the signal
order the steps?), and over the prompts at one step, averaged over steps (does it see the content? A signal equal
for every prompt scores 0).

    python3 benchmarks/study_signals.py --model scenes --regime real-like
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_caches  # noqa: E402

tc = bench_caches.tc
SIGNALS = ("modulated-input", "transformation-rate", "input", "first-block-residual", "first-block-rate",
           "magnitude-ratio")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().sum() / b.abs().sum())


def record(subject, run) -> dict:
    """One uncached run's per-step tensors: the stack's image input, output, the first block's output and the
    first block's modulated input (through the engine's adapter)."""
    t = subject.transformer
    spec = tc.find_model(t)
    adapter = spec.adapter(t)
    blocks = adapter.blocks
    seen = {"in": [], "out": [], "first": [], "mod": []}

    def before(block, args, kwargs):
        seen["in"].append(adapter.image_in(args, kwargs).detach().clone())
        seen["mod"].append(adapter.modulated_input(block, args, kwargs).detach().clone())

    n_image = lambda: seen["in"][-1].shape[1]  # noqa: E731
    hooks = [blocks[0].register_forward_pre_hook(before, with_kwargs=True),
             blocks[0].register_forward_hook(lambda m, a, o: seen["first"].append(
                 adapter.image_out(o, n_image()).detach().clone())),
             blocks[-1].register_forward_hook(lambda m, a, o: seen["out"].append(
                 adapter.image_out(o, n_image()).detach().clone()))]
    try:
        subject.run(run)
    finally:
        for h in hooks:
            h.remove()
    return seen


def signals(seen, ratios) -> dict:
    """Per step k >= 2: the error of skipping and each signal."""
    n = len(seen["in"])
    r = [o - i for o, i in zip(seen["out"], seen["in"])]
    fr = [f - i for f, i in zip(seen["first"], seen["in"])]
    out = {"error": [], **{s: [] for s in SIGNALS}}
    for k in range(2, n):
        out["error"].append(_rel(r[k], r[k - 1]))
        out["modulated-input"].append(_rel(seen["mod"][k], seen["mod"][k - 1]))
        rate = float((seen["out"][k - 1] - seen["out"][k - 2]).abs().sum()
                     / (seen["in"][k - 1] - seen["in"][k - 2]).abs().sum())
        out["transformation-rate"].append(rate * float((seen["in"][k] - seen["in"][k - 1]).abs().sum()
                                                       / seen["out"][k - 1].abs().sum()))
        out["input"].append(_rel(seen["in"][k], seen["in"][k - 1]))
        out["first-block-residual"].append(_rel(fr[k], fr[k - 1]))
        first_rate = float((r[k - 1] - r[k - 2]).abs().sum() / (fr[k - 1] - fr[k - 2]).abs().sum())
        out["first-block-rate"].append(first_rate * float((fr[k] - fr[k - 1]).abs().sum() / r[k - 1].abs().sum()))
        out["magnitude-ratio"].append(abs(1 - ratios[k]))
    return out


def magnitude_ratios(seen) -> np.ndarray:
    r = [float((o - i).abs().mean()) for o, i in zip(seen["out"], seen["in"])]
    return np.array([1.0] + [r[k] / r[k - 1] for k in range(1, len(r))])


def spearman(a, b) -> float:
    a, b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["trained", "scenes"], default="scenes")
    parser.add_argument("--regime", choices=list(bench_caches.REGIMES), default="real-like")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    subject = bench_caches.Trained(args.steps, "shapes" if args.model == "trained" else "scenes",
                                   cfg_scale=bench_caches.REGIMES[args.regime][args.model], prompts=args.prompts)
    ratios = np.mean([magnitude_ratios(record(subject, run)) for run in subject.calib_runs], axis=0)
    per_prompt = [signals(record(subject, run), ratios) for run in subject.eval_runs]
    errors = np.array([p["error"] for p in per_prompt])  # (prompts, steps)
    print(f"{args.model} model, {args.regime} regime, {args.steps} steps, {len(per_prompt)} held-out prompts: "
          "Spearman correlation with the error of skipping")
    print("| signal | over the steps of a run | over the prompts at a step |")
    print("|---|---|---|")
    for s in SIGNALS:
        values = np.array([p[s] for p in per_prompt])
        steps_rho = np.mean([spearman(v, e) for v, e in zip(values, errors)])
        prompts_rho = np.mean([spearman(values[:, k], errors[:, k]) for k in range(errors.shape[1])])
        print(f"| {s} | {steps_rho:.3f} | {prompts_rho:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
