#!/usr/bin/env python3
"""TeaCache on a real (tiny, trained) HunyuanVideo-architecture model, on any CPU, in seconds.

    python demo.py                                      # default prompt, 50 steps, threshold 0.15
    python demo.py --prompt "a red circle moves left" --rel-l1-thresh 0.1 --out results/demo.gif
    python demo.py --rel-l1-thresh 0.3 --teacache-rule fitted         # fewer computed steps, extrapolated

Generates the same clip (same seed) without and with TeaCache (the published HunyuanVideo
coefficients), prints the steps TeaCache computed, the measured wall-clock speedup and the PSNR /
SSIM of the cached clip against the uncached one, and writes them side by side (uncached left,
TeaCache right) to ``--out`` (.mp4 or .gif). The model (assets/tiny_hunyuan_video.safetensors) is
diffusers' HunyuanVideoTransformer3DModel trained on 8-frame 16x16 clips of moving shapes
(see tinyhv/); "a red circle moves left" is a combination it never saw in training.

It runs on one CPU thread by default (``--threads``): one thread never spin-waits for another, so a busy
neighbour process cannot slow it down several-fold, and on this small model two threads gain little.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

from teacache_sample_video import RULES, _ArgumentParser, _number, _threshold, enable_teacache
from tinyhv import TinyHunyuanVideo
from tinyhv.data import complete_prompt
from tinyhv.evaluate import describe
from tinyhv.metrics import psnr, ssim

VIDEO_SUFFIXES = (".mp4", ".gif")
_positive_int = _number(int, 1, "an integer >= 1")


def _video_path(value: str) -> Path:
    """argparse ``type`` for ``--out``: a path ending in .mp4 or .gif (checked before any generation)."""
    path = Path(value)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise argparse.ArgumentTypeError(f"expected a path ending in {' or '.join(VIDEO_SUFFIXES)}, got {value!r}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a directory")
    return path


def _seed(value: str) -> int:
    """argparse ``type`` for ``--seed``: an integer torch.Generator.manual_seed accepts."""
    try:
        seed = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if not -2 ** 63 <= seed < 2 ** 64:
        raise argparse.ArgumentTypeError(f"expected an integer in [-2**63, 2**64), got {value!r}")
    return seed


def _weights_path(value: str) -> Path:
    """argparse ``type`` for ``--weights``: an existing safetensors file whose config sidecar (the same path with
    the suffix ``.json``, as ``TinyHunyuanVideo.from_pretrained`` reads it) exists too."""
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value!r}")
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise argparse.ArgumentTypeError(f"{value!r} has no config next to it: expected {str(sidecar)!r} "
                                         "(TinyHunyuanVideo.save_pretrained writes both)")
    return path


def side_by_side(left: torch.Tensor, right: torch.Tensor, scale: int = 8, gap: int = 16) -> np.ndarray:
    """``(T, H*scale, 2*W*scale + gap, 3)`` uint8 frames: the two clips upscaled (nearest), white gap between."""
    def up(v):
        return (v.clamp(0, 1) * 255).round().to(torch.uint8).repeat_interleave(scale, 1).repeat_interleave(scale, 2)

    a, b = up(left), up(right)
    sep = torch.full((a.shape[0], a.shape[1], gap, 3), 255, dtype=torch.uint8)
    return torch.cat([a, sep, b], dim=2).numpy()


def write_video(frames: np.ndarray, path: Path, fps: int = 8, loops: int = 3) -> None:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = list(frames) * loops
    if path.suffix.lower() == ".gif":
        imageio.mimsave(str(path), frames, duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(str(path), frames, fps=fps, macro_block_size=1)


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main(argv=None) -> int:
    p = _ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # 1-line errors
    p.add_argument("--prompt", default="a red circle moves left",
                   help="names a colour (red green blue yellow), shape (circle square triangle) and direction "
                        "(left right up down); optionally size (small big) and background (dark light); "
                        "besides these only 'a moves on background' (any other word is an error)")
    p.add_argument("--rel-l1-thresh", type=_threshold, default=0.15,
                   help="TeaCache threshold (published HunyuanVideo coefficients); 0 turns caching off. "
                        "Both TeaCache flags are those of teacache_sample_video.py, documented in docs/flags.md "
                        "('Beyond the reference: control, calibration, a better rule')")
    p.add_argument("--teacache-rule", choices=RULES, default="reuse",
                   help="what a skipped step adds (see docs/flags.md); default: the published reuse")
    p.add_argument("--steps", type=_positive_int, default=50, help="denoising steps of each run (default 50)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="noise seed; the uncached and the TeaCache run use the same one (default 0)")
    p.add_argument("--out", type=_video_path, default=Path("results/tinyhv_demo.mp4"),
                   help=".mp4 or .gif; an existing file is overwritten (default results/tinyhv_demo.mp4)")
    p.add_argument("--weights", type=_weights_path, default=None,
                   help="safetensors file with its .json config beside it (default: the shipped model)")
    p.add_argument("--repeats", type=_positive_int, default=3,
                   help="time each generation this many times, keep the fastest (default 3)")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="torch CPU threads (default 1: more spin-wait for each other when another process is busy)")
    args = p.parse_args(argv)

    try:  # all checks before any model work
        prompt = complete_prompt(args.prompt)
    except ValueError as e:
        p.error(f"argument --prompt: {e}")
    if args.out.suffix.lower() == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        p.error("argument --out: writing .mp4 needs imageio-ffmpeg (pip install imageio-ffmpeg); or write a .gif")
    torch.set_num_threads(args.threads)
    model = TinyHunyuanVideo.from_pretrained(*([args.weights] if args.weights else []))
    n_params = sum(t.numel() for t in model.parameters())
    print(f"model: tiny HunyuanVideo ({n_params / 1e6:.2f}M parameters, {model.video_shape[0]} frames of "
          f"{model.video_shape[1]}x{model.video_shape[2]}), {args.steps} steps, seed {args.seed}")
    print(f"prompt: {prompt!r}" + (f" (from {args.prompt!r})" if prompt != args.prompt else ""))

    model.generate(prompt, seed=args.seed, num_steps=2)  # warm-up: first-call allocations out of the timings
    baseline, t_base = timed(lambda: model.generate(prompt, seed=args.seed, num_steps=args.steps), args.repeats)
    cache = enable_teacache(model.transformer, args.rel_l1_thresh, rule=args.teacache_rule)
    try:
        cached, t_cache = timed(lambda: model.generate(prompt, seed=args.seed, num_steps=args.steps, cache=cache),
                                args.repeats)
        stats = cache.stats()
        summary = cache.summary()
    finally:
        cache.disable()

    computed, skipped = stats["computed_steps"], stats["skipped_steps"]
    print(summary)
    print(f"computed steps ({len(computed)}/{args.steps}): {computed}")
    print(f"skipped steps  ({len(skipped)}): {skipped}")
    print(f"wall clock (best of {args.repeats}): uncached {t_base:.3f} s, TeaCache {t_cache:.3f} s -> "
          f"speedup {t_base / t_cache:.2f}x (ideal {args.steps / len(computed):.2f}x)")
    print(f"fidelity of TeaCache vs uncached (same seed): PSNR {psnr(cached, baseline):.2f} dB, "
          f"SSIM {ssim(cached, baseline):.4f}")
    for name, video in (("uncached", baseline), ("TeaCache", cached)):
        d = describe(video)
        print(f"judge reads {name:8s}: {d.get('size')} {d.get('colour')} {d.get('shape')} moves {d.get('direction')} "
              f"on a {d.get('background')} background")
    write_video(side_by_side(baseline, cached), args.out)
    print(f"side by side (left uncached, right TeaCache): {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
