"""The quality bar of the tiny model, measured automatically on prompt combinations it never saw.

    python -m tinyhv.evaluate                       # held-out combinations, 3 seeds each, 50 uncached steps
    python -m tinyhv.evaluate --ground-truth        # the judge on rendered clips (should be 100%)
    python -m tinyhv.evaluate --split train --grid /tmp/train_grid.png   # also a PNG of the first samples

Nothing is written but what ``--grid`` and ``--json`` name.

A rule-based judge reads each sample: the background is the per-frame median colour, the
foreground the largest connected blob of pixels far from it; colour = nearest palette entry to
the blob's core mean colour, direction = sign of the dominant axis of the centroid's first->last
frame displacement (at least 2 px), size = bounding-box extent (< 7.5 px small), shape = triangle
when the upper half of the bounding box holds < 39% of the blob's coverage (apex-up triangle
~0.25-0.35, circle and square ~0.5), else square when the blob fills > 92% of its bounding box
(square >= 0.95, circle <= 0.89). On rendered clips the judge is 100% right (``--ground-truth``).
The bar: colour, shape and direction all right in >= 80% of held-out samples.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # before torch loads (OpenMP reads it then): threads that spin-wait between ops make torch 4-6x slower when
    # another process is busy on the CPUs; a user's own setting wins, importers are untouched
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from . import data

ATTRIBUTES = ("colour", "shape", "direction", "size", "background")
BAR_ATTRIBUTES = ("colour", "shape", "direction")
FG_DISTANCE = 0.3  # RGB distance from the background (in [0, 1] units) that makes a pixel foreground
MIN_TRAVEL_PX = 2.0
SIZE_SPLIT_PX = 7.5
TRIANGLE_TOP = 0.39  # coverage fraction in the upper half of the bounding box below which it is a triangle
SQUARE_FILL = 0.92  # else: fraction of the bounding box the blob fills above which it is a square


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a 2-D boolean mask."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    best: List[tuple] = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp, queue = [], deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            comp.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    queue.append((yy, xx))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def describe(video) -> Dict:
    """What a clip ``(T, H, W, 3)`` in [0, 1] shows: the five attributes plus the measurements behind them
    (an attribute is None when no object is found)."""
    v = np.asarray(video.detach().cpu() if torch.is_tensor(video) else video, dtype=np.float64)
    t_len = v.shape[0]
    bg = np.median(v.reshape(t_len, -1, 3), axis=1)  # (T, 3)
    dist = np.linalg.norm(v - bg[:, None, None, :], axis=-1)  # (T, H, W)
    grey = float(bg.mean())
    out = {"background": min(data.BACKGROUNDS, key=lambda k: abs(data.BACKGROUNDS[k] - grey)), "bg_grey": grey}
    centroids, extents, fills, tops, colours = [], [], [], [], []
    for t in range(t_len):
        blob = _largest_blob(dist[t] > FG_DISTANCE)
        n = int(blob.sum())
        if n < 3:
            centroids.append(None)
            continue
        ys, xs = np.nonzero(blob)
        wts = dist[t][blob]
        centroids.append((float((xs * wts).sum() / wts.sum()), float((ys * wts).sum() / wts.sum())))
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        bh, bw = y1 - y0 + 1, x1 - x0 + 1
        extents.append(max(bh, bw))
        fills.append(n / (bh * bw))
        core = blob & (dist[t] >= np.quantile(dist[t][blob], 0.5))
        colours.append(v[t][core].mean(axis=0))
        # soft coverage (anti-aliased edges count partly) by rows of the bounding box: mass in the upper half
        contrast = max(float(np.linalg.norm(colours[-1] - bg[t])), 1e-6)
        rows = np.clip(dist[t][y0:y1 + 1, x0:x1 + 1] / contrast, 0, 1).sum(axis=1)
        upper = rows[: bh // 2].sum() + (rows[bh // 2] / 2 if bh % 2 else 0.0)
        tops.append(float(upper / max(rows.sum(), 1e-6)))
    found = [c for c in centroids if c is not None]
    out["frames_with_object"] = len(found)
    if len(found) < max(2, t_len // 2):
        out.update(colour=None, shape=None, direction=None, size=None)
        return out
    colour = np.mean(colours, axis=0)
    out["rgb"] = [round(float(c), 3) for c in colour]
    out["colour"] = min(data.COLOURS, key=lambda k: float(np.linalg.norm(np.array(data.COLOURS[k]) - colour)))
    d = np.subtract(found[-1], found[0])
    out["displacement"] = [round(float(x), 2) for x in d]
    if np.abs(d).max() < MIN_TRAVEL_PX:
        out["direction"] = None
    elif abs(d[0]) >= abs(d[1]):
        out["direction"] = "right" if d[0] > 0 else "left"
    else:
        out["direction"] = "down" if d[1] > 0 else "up"
    out["extent"] = float(np.median(extents))
    out["size"] = "small" if out["extent"] < SIZE_SPLIT_PX else "big"
    out["fill"] = float(np.median(fills))
    out["top"] = float(np.median(tops))
    out["shape"] = "triangle" if out["top"] < TRIANGLE_TOP else "square" if out["fill"] > SQUARE_FILL else "circle"
    return out


def score(videos: Sequence, attrs: Sequence[data.Attributes]) -> Dict:
    """Per-attribute accuracy, the bar (colour & shape & direction) and all five, plus per-sample verdicts."""
    rows = []
    for v, a in zip(videos, attrs):
        d = describe(v)
        ok = {k: d[k] == getattr(a, k) for k in ATTRIBUTES}
        rows.append({"prompt": a.prompt, "seen": {k: d.get(k) for k in ATTRIBUTES}, "ok": ok,
                     "fill": d.get("fill"), "top": d.get("top"), "extent": d.get("extent"),
                     "displacement": d.get("displacement"),
                     "rgb": d.get("rgb")})
    n = len(rows)
    acc = {k: sum(r["ok"][k] for r in rows) / n for k in ATTRIBUTES}
    acc["colour+shape+direction"] = sum(all(r["ok"][k] for k in BAR_ATTRIBUTES) for r in rows) / n
    acc["all five"] = sum(all(r["ok"].values()) for r in rows) / n
    return {"n": n, "accuracy": acc, "samples": rows}


def save_grid(videos: Sequence, path: Path, scale: int = 6, pad: int = 2) -> Path:
    """Rows = clips, columns = frames, upscaled (nearest) for viewing."""
    import imageio.v2 as imageio

    vids = [np.asarray(v.detach().cpu() if torch.is_tensor(v) else v) for v in videos]
    t, h, w, _ = vids[0].shape
    hh, ww = h * scale + pad, w * scale + pad
    grid = np.full((len(vids) * hh + pad, t * ww + pad, 3), 255, np.uint8)
    for i, v in enumerate(vids):
        for j in range(t):
            frame = np.kron((np.clip(v[j], 0, 1) * 255).round().astype(np.uint8), np.ones((scale, scale, 1), np.uint8))
            grid[pad + i * hh: pad + i * hh + h * scale, pad + j * ww: pad + j * ww + w * scale] = frame
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(str(path), grid)
    return path


def print_report(name: str, result: Dict) -> None:
    acc = result["accuracy"]
    print(f"{name}: {result['n']} samples")
    for k in (*ATTRIBUTES, "colour+shape+direction", "all five"):
        print(f"  {k:24s} {acc[k]:6.1%}")


@dataclass(frozen=True)
class Bar:
    """One model's quality bar, for ``run``: its data, its judge and how it reports."""

    split: Callable[[], tuple]  # () -> (training combinations, held-out combinations)
    pick: Callable[[list, int], list]  # (combinations, --max-combos) -> the ones evaluated
    render: Callable[[list], list]  # combinations -> ground-truth clips in [0, 1], (T, H, W, 3) each
    load: Callable[[Optional[Path]], object]  # --weights -> the model (``generate`` as TinyHunyuanVideo's)
    score: Callable[[Sequence, Sequence], Dict]  # (clips, combinations) -> {"n", "accuracy", "samples"}
    report: Callable[[str, Dict], float]  # prints the split's accuracies, returns the bar's figure
    bar_name: str  # what the bar counts, e.g. "colour+shape+direction"
    miss: Callable[[Dict], Optional[str]]  # a sample's verdict -> a line when it misses the bar, else None
    seeds: int = 1  # --seeds' default: samples per combination
    max_combos: Optional[int] = None  # --max-combos' default
    grid_scale: int = 6


def parser(doc: str, seeds: int, max_combos: Optional[int]) -> argparse.ArgumentParser:
    """The command line every ``tinyhv.evaluate*`` module shares."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=None, help="safetensors file (default: the shipped model)")
    p.add_argument("--split", choices=["heldout", "train", "both"], default="heldout")
    p.add_argument("--seeds", type=int, default=seeds, help="samples per prompt combination")
    p.add_argument("--max-combos", type=int, default=max_combos,
                   help="evaluate at most this many combinations per split (0 or none: all)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--shift", type=float, default=None)
    p.add_argument("--guidance", type=float, default=None, help="the guidance embedding's input, where it has one")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance (batched, one call/step); default: the model's sampling config")
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ground-truth", action="store_true", help="judge rendered clips instead of samples")
    p.add_argument("--grid", type=Path, default=None,
                   help="write a PNG of the first samples here (rows = clips, columns = frames; with --split both, "
                        "the held-out rows then the train rows); the rows' prompts are printed (and in --json)")
    p.add_argument("--grid-rows", type=int, default=16, help="clips per split in the grid")
    p.add_argument("--json", type=Path, default=None, help="write the full result here")
    p.add_argument("--bar", type=float, default=0.8)
    return p


def run(bar: Bar, argv: Optional[Sequence[str]], doc: str) -> int:
    """Parse ``argv``, judge the splits' samples (or ground truth), print and write what was asked; 1 when the
    held-out split misses the bar."""
    p = parser(doc, bar.seeds, bar.max_combos)
    args = p.parse_args(argv)
    if args.grid and args.grid.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"):
        p.error(f"--grid {args.grid}: name an image file (.png)")  # now, not after the run
    torch.set_num_threads(args.threads)
    train, held = bar.split()
    splits = {"heldout": [("held-out", held)], "train": [("train", train)],
              "both": [("held-out", held), ("train", train)]}[args.split]
    model = None if args.ground_truth else bar.load(args.weights)
    results, exit_code, grid = {}, 0, []  # grid: (split, clip, prompt) per row
    for name, combos in splits:
        if args.max_combos:
            combos = bar.pick(combos, args.max_combos)
        wanted = [c for c in combos for _ in range(args.seeds)]
        seeds_ = [1000 + i for i in range(len(wanted))]
        start = time.perf_counter()
        if args.ground_truth:
            videos = list(bar.render(wanted))
        else:
            videos = []
            for i in range(0, len(wanted), args.batch_size):
                chunk = wanted[i:i + args.batch_size]
                # one batched call per chunk; prompt j of the chunk uses seed seeds_[i] + j = seeds_[i + j]
                videos.extend(model.generate([c.prompt for c in chunk], seed=seeds_[i], num_steps=args.steps,
                                             guidance=args.guidance, shift=args.shift, cfg_scale=args.cfg_scale))
        elapsed = time.perf_counter() - start
        result = bar.score(videos, wanted)
        result["seconds"] = round(elapsed, 1)
        figure = bar.report(f"{name} ({'rendered ground truth' if args.ground_truth else f'{args.steps}-step samples'}"
                            f", {elapsed:.0f} s)", result)
        print(f"  bar ({bar.bar_name} >= {args.bar:.0%}): {'PASS' if figure >= args.bar else 'FAIL'}")
        if name == "held-out" and figure < args.bar:
            exit_code = 1
        for line in [m for m in map(bar.miss, result["samples"]) if m][:8]:
            print(f"    miss: {line}")
        results[name] = result
        if args.grid:
            # one clip per combination first (then further seeds), so the grid shows variety
            order = list(range(0, len(videos), args.seeds)) + [i for i in range(len(videos)) if i % args.seeds]
            rows = order[: args.grid_rows]
            grid += [(name, videos[i], wanted[i].prompt) for i in rows]
            result["grid_prompts"] = [wanted[i].prompt for i in rows]
    if grid:
        # one image, exactly at --grid (with --split both: the held-out rows, then the train rows)
        save_grid([clip for _, clip, _ in grid], args.grid, scale=bar.grid_scale)
        print(f"grid of {len(grid)} clips (rows, top to bottom): {args.grid}")
        for row, (name, _, prompt) in enumerate(grid, 1):
            print(f"  {row:3d} {name + ': ' if len(splits) > 1 else ''}{prompt}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=2))
    return exit_code


def _load(weights: Optional[Path]):
    from .model import DEFAULT_ASSETS, TinyHunyuanVideo

    return TinyHunyuanVideo.from_pretrained(weights or DEFAULT_ASSETS)


def _render(attrs: Sequence[data.Attributes]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return ((data.render_batch(attrs, data.random_starts(attrs, g)) + 1) / 2).clamp(0, 1)


def _report(title: str, result: Dict) -> float:
    print_report(title, result)
    return result["accuracy"]["colour+shape+direction"]


def _miss(r: Dict) -> Optional[str]:
    if all(r["ok"][k] for k in BAR_ATTRIBUTES):
        return None
    return (f"{r['prompt']!r} -> seen {r['seen']} fill={r['fill']} top={r['top']} extent={r['extent']} "
            f"disp={r['displacement']}")


BAR = Bar(split=data.split, pick=lambda combos, n: combos[:: max(1, len(combos) // n)][:n], render=_render,
          load=_load, score=score, report=_report, bar_name="colour+shape+direction", miss=_miss, seeds=3)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(BAR, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
