"""Procedural moving-shape videos with captions: the training data of the tiny HunyuanVideo model.

Every clip is one shape (circle, square, triangle) of one colour (red, green, blue, yellow) and
size (small, big) sliding in a straight line (left, right, up, down) over a plain background
(dark, light). Caption grammar (fixed, always the same 10 words)::

    a {size} {colour} {shape} moves {direction} on a {background} background

Clips are ``(T, H, W, 3)`` float tensors in [-1, 1] (8 frames of 16x16), rendered with 4x4
supersampling so edges are anti-aliased. Everything is deterministic given a seed.
"""

from __future__ import annotations

import itertools
import string
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

FRAMES, HEIGHT, WIDTH = 8, 16, 16

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # RGB in [0, 1]
    "red": (0.90, 0.12, 0.12),
    "green": (0.10, 0.80, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # (dx, dy), y down
SIZES = {"small": 6.0, "big": 9.0}  # side of the shape's bounding box in pixels
BACKGROUNDS = {"dark": 0.10, "light": 0.85}  # grey level

#: How far the centre moves over the clip, in pixels (from the first to the last frame).
TRAVEL = 6.0

#: How far (pixels, uniform +-) the path may sit off the frame centre: (across the motion, along it).
#: Small on purpose: a 2-core CPU trains the model in minutes when where-is-the-shape is nearly fixed;
#: the prompt decides everything else. ``None`` in ``random_starts`` = anywhere the shape stays in frame.
JITTER = (2.0, 1.0)

#: Colour+shape+direction triples never seen in training (every size and background of them is held out).
HELD_OUT_TRIPLES: Tuple[Tuple[str, str, str], ...] = (
    ("red", "circle", "left"),
    ("green", "square", "up"),
    ("blue", "triangle", "right"),
    ("yellow", "circle", "down"),
    ("red", "triangle", "down"),
    ("green", "circle", "right"),
    ("blue", "square", "left"),
    ("yellow", "triangle", "up"),
)

VOCAB: Tuple[str, ...] = ("<pad>", "a", "moves", "on", "background", *SIZES, *COLOURS, *SHAPES, *DIRECTIONS,
                          *BACKGROUNDS)


@dataclass(frozen=True)
class Attributes:
    size: str
    colour: str
    shape: str
    direction: str
    background: str

    @property
    def prompt(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} moves {self.direction} on a {self.background} background"

    @property
    def triple(self) -> Tuple[str, str, str]:
        return (self.colour, self.shape, self.direction)


def all_attributes() -> List[Attributes]:
    return [Attributes(*a) for a in itertools.product(SIZES, COLOURS, SHAPES, DIRECTIONS, BACKGROUNDS)]


def split(held_out: Sequence[Tuple[str, str, str]] = HELD_OUT_TRIPLES) -> Tuple[List[Attributes], List[Attributes]]:
    """(train, held-out) attribute combinations."""
    held = set(map(tuple, held_out))
    combos = all_attributes()
    return [a for a in combos if a.triple not in held], [a for a in combos if a.triple in held]


def parse_prompt(prompt: str) -> Attributes:
    """Inverse of ``Attributes.prompt``; raises ValueError for text outside the grammar."""
    words = prompt.lower().strip().rstrip(".").split()
    if len(words) != 10 or words[0] != "a" or words[4] != "moves" or words[6:8] != ["on", "a"] \
            or words[9] != "background":
        raise ValueError(f"prompt outside the grammar 'a <size> <colour> <shape> moves <direction> on a "
                         f"<background> background': {prompt!r}")
    a = Attributes(size=words[1], colour=words[2], shape=words[3], direction=words[5], background=words[8])
    for value, allowed in ((a.size, SIZES), (a.colour, COLOURS), (a.shape, SHAPES), (a.direction, DIRECTIONS),
                           (a.background, BACKGROUNDS)):
        if value not in allowed:
            raise ValueError(f"unknown word {value!r} in {prompt!r}; expected one of {sorted(allowed)}")
    return a


def complete_prompt(prompt: str, size: str = "big", background: str = "dark") -> str:
    """The grammar's full prompt for free-form text that names a colour, a shape and a direction (in any
    order, with any other words of ``VOCAB``; punctuation ignored); size and background default to ``size`` /
    ``background`` when not named. ``"a red circle moves left"`` -> ``"a big red circle moves left on a dark
    background"``. Raises ValueError, naming them, for words outside the vocabulary (the text encoder's
    own rule: a word the model never learnt would otherwise be dropped silently and change the request)."""
    words = [w.strip(string.punctuation) for w in prompt.lower().replace(",", " ").replace(".", " ").split()]
    words = [w for w in words if w]
    known = [w for w in VOCAB if not w.startswith("<")]
    unknown = list(dict.fromkeys(w for w in words if w not in known))
    if unknown:
        raise ValueError(f"words outside the vocabulary {unknown} in {prompt!r}; known: {' '.join(known)}")
    found = {}
    for key, choices in (("size", SIZES), ("colour", COLOURS), ("shape", SHAPES), ("direction", DIRECTIONS),
                         ("background", BACKGROUNDS)):
        hits = [w for w in words if w in choices]
        if len(set(hits)) > 1:
            raise ValueError(f"prompt names several {key}s {sorted(set(hits))}: {prompt!r}")
        found[key] = hits[0] if hits else None
    missing = [k for k in ("colour", "shape", "direction") if found[k] is None]
    if missing:
        raise ValueError(f"prompt must name a {', a '.join(missing)} (colours {list(COLOURS)}, shapes {list(SHAPES)}, "
                         f"directions {list(DIRECTIONS)}): {prompt!r}")
    return Attributes(size=found["size"] or size, colour=found["colour"], shape=found["shape"],
                      direction=found["direction"], background=found["background"] or background).prompt


def _coverage(shape: str, dx: torch.Tensor, dy: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Inside-test (0/1) of a shape of half-side ``half`` at offsets (dx, dy) from its centre (pixels, y down)."""
    if shape == "circle":
        return (dx * dx + dy * dy <= half * half).float()
    if shape == "square":
        return ((dx.abs() <= half) & (dy.abs() <= half)).float()
    if shape == "triangle":  # apex up, base down, filling the bounding box
        frac = (dy + half) / (2 * half)  # 0 at the apex row, 1 at the base
        return ((dy >= -half) & (dy <= half) & (dx.abs() <= half * frac)).float()
    raise ValueError(f"unknown shape {shape!r}")


def render_batch(attrs: Sequence[Attributes], starts: torch.Tensor, frames: int = FRAMES, height: int = HEIGHT,
                 width: int = WIDTH, travel: float = TRAVEL, supersample: int = 4) -> torch.Tensor:
    """Clips ``(N, T, H, W, 3)`` in [-1, 1]; ``starts`` ``(N, 2)`` is each shape's centre (x, y) in the first frame."""
    n, s = len(attrs), supersample
    ys = ((torch.arange(height * s, dtype=torch.float32) + 0.5) / s).view(1, 1, -1, 1)
    xs = ((torch.arange(width * s, dtype=torch.float32) + 0.5) / s).view(1, 1, 1, -1)
    f = torch.arange(frames, dtype=torch.float32) / max(frames - 1, 1)  # (T,)
    d = torch.tensor([DIRECTIONS[a.direction] for a in attrs])  # (N, 2)
    cx = starts[:, 0:1] + d[:, 0:1] * travel * f  # (N, T)
    cy = starts[:, 1:2] + d[:, 1:2] * travel * f
    dx, dy = xs - cx[..., None, None], ys - cy[..., None, None]  # (N, T, Hs, Ws)
    half = torch.tensor([SIZES[a.size] / 2 for a in attrs]).view(n, 1, 1, 1)
    cover = torch.zeros(n, frames, height * s, width * s)
    for shape in SHAPES:
        idx = [i for i, a in enumerate(attrs) if a.shape == shape]
        if idx:
            cover[idx] = _coverage(shape, dx[idx], dy[idx], half[idx])
    cover = cover.view(n, frames, height, s, width, s).mean(dim=(3, 5))[..., None]  # (N, T, H, W, 1)
    bg = torch.tensor([[BACKGROUNDS[a.background]] * 3 for a in attrs]).view(n, 1, 1, 1, 3)
    fg = torch.tensor([COLOURS[a.colour] for a in attrs]).view(n, 1, 1, 1, 3)
    return (bg * (1 - cover) + fg * cover) * 2 - 1


def random_starts(attrs: Sequence[Attributes], g: torch.Generator, height: int = HEIGHT, width: int = WIDTH,
                  travel: float = TRAVEL, jitter: Optional[Tuple[float, float]] = JITTER) -> torch.Tensor:
    """Start centres ``(N, 2)`` (x, y) that keep the whole shape inside the frame for the whole clip: the
    path's midpoint is the frame centre moved by up to ``jitter`` = (across, along) pixels, or anywhere
    allowed when ``jitter`` is None."""
    u = torch.rand(len(attrs), 2, generator=g)
    out = torch.empty(len(attrs), 2)
    for i, a in enumerate(attrs):
        h = SIZES[a.size] / 2
        for axis, (d, extent) in enumerate(zip(DIRECTIONS[a.direction], (width, height))):
            lo, hi = h, extent - h  # where the centre may be, over the whole clip
            if d > 0:
                hi -= travel
            elif d < 0:
                lo += travel
            if jitter is not None:  # narrow to a window around the centred path
                centre = extent / 2 - d * travel / 2
                j = jitter[0] if d == 0 else jitter[1]
                lo, hi = max(lo, centre - j), min(hi, centre + j)
            out[i, axis] = lo + (hi - lo) * u[i, axis]
    return out


def sample_batch(combos: Sequence[Attributes], batch_size: int, g: torch.Generator,
                 jitter: Optional[Tuple[float, float]] = JITTER) -> Tuple[torch.Tensor, List[str]]:
    """A random batch: clips ``(B, T, H, W, 3)`` of combinations drawn uniformly from ``combos``, and prompts."""
    idx = torch.randint(len(combos), (batch_size,), generator=g).tolist()
    attrs = [combos[i] for i in idx]
    return render_batch(attrs, random_starts(attrs, g, jitter=jitter)), [a.prompt for a in attrs]


def render(attrs: Attributes, start: Tuple[float, float], **kw) -> torch.Tensor:
    """One clip ``(T, H, W, 3)`` in [-1, 1]; ``start`` is the shape centre (x, y) in the first frame."""
    return render_batch([attrs], torch.tensor([start], dtype=torch.float32), **kw)[0]


def make_dataset(combos: Sequence[Attributes], clips_per_combo: int, seed: int = 0) -> Tuple[torch.Tensor, List[str]]:
    """A fixed bank of ``len(combos) * clips_per_combo`` clips ``(N, T, H, W, 3)`` and their prompts."""
    g = torch.Generator().manual_seed(seed)
    attrs = [a for _ in range(clips_per_combo) for a in combos]
    return render_batch(attrs, random_starts(attrs, g)), [a.prompt for a in attrs]


def to_model_layout(videos: torch.Tensor) -> torch.Tensor:
    """``(N, T, H, W, 3)`` -> the transformer's ``(N, 3, T, H, W)``."""
    return videos.permute(0, 4, 1, 2, 3).contiguous()


def from_model_layout(latents: torch.Tensor) -> torch.Tensor:
    """``(N, 3, T, H, W)`` -> ``(N, T, H, W, 3)``."""
    return latents.permute(0, 2, 3, 4, 1)
