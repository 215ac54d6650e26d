"""The quality bar of the second tiny model (``tinyhv.scenes``), measured automatically on held-out prompts.

    python -m tinyhv.evaluate_scenes                  # held-out combinations, 50 uncached steps
    python -m tinyhv.evaluate_scenes --ground-truth   # the judge on rendered clips (should be about 100%)
    python -m tinyhv.evaluate_scenes --split train --grid /tmp/scenes_grid.png

Nothing is written but what ``--grid`` and ``--json`` name.

A rule-based judge reads each clip without looking at the prompt:

- object pixels are the saturated ones (RGB max - min above ``CHROMA``; the background is grey), each given the
  nearest palette colour; the two colours with the most such pixels are the objects;
- each object's track is the centroid of its colour's largest blob per frame; the axis is the dominant one of the
  two objects' first-to-last displacements, the first object is the one moving right (down), the second the one
  moving left (up); the speed is the mean travel (``quickly`` from ``SPEED_SPLIT_PX``);
- each object's shape is read, as ``tinyhv.evaluate`` reads it, in the frame where it is farthest from the other
  object (the least occluded): triangle when the upper half of the bounding box holds less than ``TRIANGLE_TOP`` of the
  coverage, else square when the blob fills more than ``SQUARE_FILL`` of its bounding box, else circle;
- the camera is the horizontal shift of the background between the first and the last frame (the grey level,
  object pixels left out) that matches best: ``left`` (background slid right), ``right``, or ``still`` within
  ``STILL_PX``.

The bar: all seven fields of the caption right in >= 80% of held-out samples.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tinyhv/evaluate.py

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from . import scenes
from .data import COLOURS
from . import evaluate
from .evaluate import _largest_blob

CHROMA = 0.3
SPEED_SPLIT_PX = 12.0
MIN_TRAVEL_PX = 3.0
TRIANGLE_TOP = 0.39
SQUARE_FILL = 0.9
STILL_PX = 3
MAX_SHIFT_PX = 12
MIN_PIXELS = 12  # per frame, in at least half the frames, for a colour to count as an object

PALETTE = np.array(list(COLOURS.values()))
NAMES = list(COLOURS)


def _shape(cover: np.ndarray, blob: np.ndarray) -> Dict:
    """Fill and upper-half coverage of one object's blob (soft coverage ``cover`` in its bounding box)."""
    ys, xs = np.nonzero(blob)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    bh, bw = y1 - y0 + 1, x1 - x0 + 1
    rows = cover[y0:y1 + 1, x0:x1 + 1].sum(axis=1)
    upper = rows[: bh // 2].sum() + (rows[bh // 2] / 2 if bh % 2 else 0.0)
    top = float(upper / max(rows.sum(), 1e-6))
    fill = float(blob.sum() / (bh * bw))
    shape = "triangle" if top < TRIANGLE_TOP else "square" if fill > SQUARE_FILL else "circle"
    return {"shape": shape, "fill": round(fill, 3), "top": round(top, 3), "extent": int(max(bh, bw))}


def _camera_shift(grey: np.ndarray, objects: np.ndarray) -> int:
    """The horizontal shift s (px) that best maps the first frame's background onto the last's:
    ``last[y, x + s] ~ first[y, x]``, mean absolute difference over pixels that are background in both."""
    first, last = grey[0], grey[-1]
    valid0, valid1 = ~objects[0], ~objects[-1]
    best, best_err = 0, np.inf
    w = first.shape[1]
    for s in range(-MAX_SHIFT_PX, MAX_SHIFT_PX + 1):
        a = slice(max(0, -s), min(w, w - s))
        b = slice(max(0, s), min(w, w + s))
        m = valid0[:, a] & valid1[:, b]
        if m.sum() < 0.25 * first.size:
            continue
        err = float(np.abs(first[:, a] - last[:, b])[m].mean())
        if err < best_err:
            best, best_err = s, err
    return best


def describe(video) -> Dict:
    """What a clip ``(T, H, W, 3)`` in [0, 1] shows: the seven caption fields (None where not found) plus the
    measurements behind them."""
    v = np.asarray(video.detach().cpu() if torch.is_tensor(video) else video, dtype=np.float64)
    t_len = v.shape[0]
    chroma = v.max(-1) - v.min(-1)  # (T, H, W)
    saturated = chroma > CHROMA
    nearest = np.linalg.norm(v[..., None, :] - PALETTE, axis=-1).argmin(-1)  # (T, H, W)
    grey = v.mean(-1)
    # objects' pixels, grown by one pixel (anti-aliased edges) for the background's measurement
    halo = chroma > CHROMA / 3
    halo = halo | np.roll(halo, 1, 1) | np.roll(halo, -1, 1) | np.roll(halo, 1, 2) | np.roll(halo, -1, 2)
    out: Dict = {"camera_shift_px": _camera_shift(grey, halo)}
    shift = out["camera_shift_px"]
    out["camera"] = "still" if abs(shift) <= STILL_PX else "left" if shift > 0 else "right"
    counts = np.array([[(saturated[t] & (nearest[t] == c)).sum() for c in range(len(NAMES))] for t in range(t_len)])
    present = [c for c in range(len(NAMES)) if (counts[:, c] >= MIN_PIXELS).sum() >= t_len / 2]
    present = sorted(present, key=lambda c: -counts[:, c].sum())[:2]
    tracks, blobs = {}, {}
    for c in present:
        tracks[c], blobs[c] = [], []
        for t in range(t_len):
            blob = _largest_blob(saturated[t] & (nearest[t] == c))
            ok = blob.sum() >= 3
            ys, xs = np.nonzero(blob)
            tracks[c].append((float(xs.mean()), float(ys.mean())) if ok else None)
            blobs[c].append(blob if ok else None)
    objects = {}
    for c in present:
        found = [p for p in tracks[c] if p is not None]
        # its shape where it is farthest from the other object (least occluded), else where its blob is largest
        other = [tracks[o] for o in present if o != c]

        def apart(t):
            if blobs[c][t] is None:
                return (-1.0, 0)
            gap = np.hypot(*np.subtract(tracks[c][t], other[0][t])) if other and other[0][t] else np.inf
            return (gap, int(blobs[c][t].sum()))

        t = max(range(t_len), key=apart)
        cover = np.clip(chroma[t] / np.ptp(PALETTE[c]), 0, 1) * (nearest[t] == c)
        objects[NAMES[c]] = {"displacement": [round(float(x), 2) for x in np.subtract(found[-1], found[0])],
                             **_shape(cover, blobs[c][t])}
    out["objects"] = objects
    fields = dict.fromkeys(scenes.FIELDS)
    if len(objects) == 2:
        (na, a), (nb, b) = objects.items()
        d = np.array([a["displacement"], b["displacement"]])  # (2 objects, (x, y))
        axis = 0 if np.abs(d[:, 0]).sum() >= np.abs(d[:, 1]).sum() else 1
        if d[0, axis] * d[1, axis] < 0 and np.abs(d[:, axis]).min() >= MIN_TRAVEL_PX:  # towards each other
            first, second = ((na, a), (nb, b)) if d[0, axis] > 0 else ((nb, b), (na, a))
            travel = float(np.abs(d[:, axis]).mean())
            out["travel_px"] = round(travel, 2)
            fields.update(colour1=first[0], shape1=first[1]["shape"], colour2=second[0], shape2=second[1]["shape"],
                          axis=list(scenes.AXES)[axis], speed="quickly" if travel >= SPEED_SPLIT_PX else "slowly")
    fields["camera"] = out["camera"]
    out.update(fields)
    return out


def reading(video) -> Optional[scenes.Scene]:
    """The scene the judge reads in a clip, or None where a field is missing."""
    d = describe(video)
    return scenes.Scene(**{k: d[k] for k in scenes.FIELDS}) if all(d[k] for k in scenes.FIELDS) else None


def score(videos: Sequence, wanted: Sequence[scenes.Scene]) -> Dict:
    """Per-field accuracy, the bar (all seven fields right), per-sample verdicts."""
    rows = []
    for v, s in zip(videos, wanted):
        d = describe(v)
        ok = {k: d[k] == getattr(s, k) for k in scenes.FIELDS}
        rows.append({"prompt": s.prompt, "seen": {k: d[k] for k in scenes.FIELDS}, "ok": ok,
                     "objects": d["objects"], "camera_shift_px": d["camera_shift_px"]})
    n = len(rows)
    acc = {k: sum(r["ok"][k] for r in rows) / n for k in scenes.FIELDS}
    acc["all seven"] = sum(all(r["ok"].values()) for r in rows) / n
    return {"n": n, "accuracy": acc, "samples": rows}


def _load(weights: Optional[Path]):
    from .model import TinyHunyuanVideo15

    return TinyHunyuanVideo15.from_pretrained(weights)


def _report(title: str, result: Dict) -> float:
    print(f"{title}: {result['n']} clips")
    for k in (*scenes.FIELDS, "all seven"):
        print(f"  {k:12s} {result['accuracy'][k]:6.1%}")
    return result["accuracy"]["all seven"]


def _miss(r: Dict) -> Optional[str]:
    if all(r["ok"].values()):
        return None
    return f"{r['prompt']!r} -> seen {r['seen']} objects={r['objects']} camera_shift={r['camera_shift_px']}"


# --max-combos: an even spread over the combinations (they are ordered field by field)
BAR = evaluate.Bar(
    split=scenes.split, pick=lambda combos, n: [combos[i * len(combos) // n] for i in range(min(n, len(combos)))],
    render=lambda wanted: ((scenes.render(wanted, torch.Generator().manual_seed(0)) + 1) / 2).clamp(0, 1),
    load=_load, score=score, report=_report, bar_name="all seven", miss=_miss, max_combos=48, grid_scale=4)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return evaluate.run(BAR, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
