"""Procedural scenes with captions: the training data of the second tiny model (HunyuanVideo 1.5's architecture).

Harder than ``tinyhv.data`` on purpose, so that a step cache has real decisions to get wrong:

- two objects (each one of the shapes and colours of ``tinyhv.data``, colours distinct) that move towards each
  other along one axis and may cross (the second named passes in front), from random positions anywhere in the
  frame, at one of two speeds;
- a textured background that the prompt does not determine: grey, a random sum of cosines (wavelengths 3-11 px),
  new for every clip, so its fine detail is whatever the sampler makes of the initial noise;
- camera motion: the background pans (``camera left``: the camera turns left, so the background slides right on
  screen) or stays still.

Caption grammar (fixed, always the same 12 words)::

    a {colour1} {shape1} and a {colour2} {shape2} cross {axis} {speed} camera {camera}

``horizontally``: the first object moves right and the second left; ``vertically``: the first moves down and the
second up. Clips are ``(T, H, W, 3)`` float tensors in [-1, 1] (8 frames of 32x32), the shapes rendered with 4x4
supersampling (anti-aliased edges), the texture evaluated exactly at every (shifted) pixel. Deterministic given a
seed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

from .data import COLOURS, SHAPES, _coverage

FRAMES, HEIGHT, WIDTH = 8, 32, 32
OBJECT_PX = 10.0  # side of each shape's bounding box
AXES = {"horizontally": (1.0, 0.0), "vertically": (0.0, 1.0)}  # the first object's direction (dx, dy), y down
SPEEDS = {"slowly": 8.0, "quickly": 16.0}  # how far (px) each object travels from the first to the last frame
CAMERAS = {"left": 1.0, "right": -1.0, "still": 0.0}  # on-screen direction of the background's motion (x)
PAN_PX = 8.0  # how far (px) the background slides over the clip when the camera pans
TEXTURE = dict(waves=12, wavelength_px=(3.0, 11.0), amplitude=0.16, grey=(0.35, 0.65))

#: (colour1, shape1, colour2, shape2) never seen in training (every axis, speed and camera of them is held out).
#: Every colour and every shape appears in both roles among them; each of their (colour, shape) pairs does appear
#: in training, in the other role or with another partner.
HELD_OUT_PAIRS: Tuple[Tuple[str, str, str, str], ...] = (
    ("red", "circle", "blue", "square"),
    ("green", "triangle", "yellow", "circle"),
    ("blue", "square", "red", "triangle"),
    ("yellow", "circle", "green", "square"),
    ("red", "square", "yellow", "triangle"),
    ("green", "circle", "blue", "circle"),
    ("blue", "triangle", "green", "triangle"),
    ("yellow", "square", "red", "circle"),
    ("red", "triangle", "green", "circle"),
    ("blue", "circle", "yellow", "square"),
    ("green", "square", "red", "square"),
    ("yellow", "triangle", "blue", "triangle"),
)

VOCAB: Tuple[str, ...] = ("<pad>", "a", "and", "cross", "camera", *COLOURS, *SHAPES, *AXES, *SPEEDS, *CAMERAS)


@dataclass(frozen=True)
class Scene:
    """What a caption asks for (and what the judge reads back from a clip)."""

    colour1: str
    shape1: str
    colour2: str
    shape2: str
    axis: str
    speed: str
    camera: str

    @property
    def prompt(self) -> str:
        return (f"a {self.colour1} {self.shape1} and a {self.colour2} {self.shape2} cross {self.axis} {self.speed} "
                f"camera {self.camera}")

    @property
    def pair(self) -> Tuple[str, str, str, str]:
        return (self.colour1, self.shape1, self.colour2, self.shape2)


FIELDS = ("colour1", "shape1", "colour2", "shape2", "axis", "speed", "camera")


def all_scenes() -> List[Scene]:
    return [Scene(c1, s1, c2, s2, ax, sp, cam)
            for c1, c2 in itertools.permutations(COLOURS, 2) for s1, s2 in itertools.product(SHAPES, SHAPES)
            for ax, sp, cam in itertools.product(AXES, SPEEDS, CAMERAS)]


def split(held_out: Sequence[Tuple[str, str, str, str]] = HELD_OUT_PAIRS) -> Tuple[List[Scene], List[Scene]]:
    """(train, held-out) scene combinations."""
    held = set(map(tuple, held_out))
    scenes = all_scenes()
    return [s for s in scenes if s.pair not in held], [s for s in scenes if s.pair in held]


def parse_prompt(prompt: str) -> Scene:
    """Inverse of ``Scene.prompt``; raises ValueError for text outside the grammar."""
    w = prompt.lower().strip().rstrip(".").split()
    if len(w) != 12 or w[0] != "a" or w[3:5] != ["and", "a"] or w[7] != "cross" or w[10] != "camera":
        raise ValueError(f"prompt outside the grammar 'a <colour> <shape> and a <colour> <shape> cross <axis> "
                         f"<speed> camera <camera>': {prompt!r}")
    s = Scene(w[1], w[2], w[5], w[6], w[8], w[9], w[11])
    for value, allowed in ((s.colour1, COLOURS), (s.shape1, SHAPES), (s.colour2, COLOURS), (s.shape2, SHAPES),
                           (s.axis, AXES), (s.speed, SPEEDS), (s.camera, CAMERAS)):
        if value not in allowed:
            raise ValueError(f"unknown word {value!r} in {prompt!r}; expected one of {sorted(allowed)}")
    if s.colour1 == s.colour2:
        raise ValueError(f"the two objects must differ in colour: {prompt!r}")
    return s


def random_layout(scenes: Sequence[Scene], g: torch.Generator) -> torch.Tensor:
    """Start centres ``(N, 2, 2)`` (object, (x, y)) anywhere that keeps both shapes inside the frame for the
    whole clip."""
    u = torch.rand(len(scenes), 2, 2, generator=g)
    out = torch.empty(len(scenes), 2, 2)
    h = OBJECT_PX / 2
    for i, s in enumerate(scenes):
        travel = SPEEDS[s.speed]
        for obj, sign in ((0, 1.0), (1, -1.0)):
            for axis, (d, extent) in enumerate(zip(AXES[s.axis], (WIDTH, HEIGHT))):
                lo, hi = h, extent - h
                if d * sign > 0:
                    hi -= travel
                elif d * sign < 0:
                    lo += travel
                out[i, obj, axis] = lo + (hi - lo) * u[i, obj, axis]
    return out


def random_textures(n: int, g: torch.Generator) -> torch.Tensor:
    """``(N, waves, 5)`` texture parameters per clip: (kx, ky, phase, amplitude, grey level)."""
    k = TEXTURE["waves"]
    lo, hi = TEXTURE["wavelength_px"]
    wavelength = lo * (hi / lo) ** torch.rand(n, k, generator=g)  # log-uniform
    angle = torch.rand(n, k, generator=g) * math.pi
    kx, ky = 2 * math.pi / wavelength * torch.cos(angle), 2 * math.pi / wavelength * torch.sin(angle)
    phase = torch.rand(n, k, generator=g) * 2 * math.pi
    amp = torch.rand(n, k, generator=g) + 0.5
    amp = amp / amp.pow(2).sum(1, keepdim=True).sqrt() * TEXTURE["amplitude"] * math.sqrt(2)  # std = amplitude
    g_lo, g_hi = TEXTURE["grey"]
    grey = (g_lo + (g_hi - g_lo) * torch.rand(n, 1, generator=g)).expand(n, k)
    return torch.stack([kx, ky, phase, amp, grey], dim=-1)


def render_batch(scenes: Sequence[Scene], starts: torch.Tensor, textures: torch.Tensor, supersample: int = 4,
                 frames: int = FRAMES) -> torch.Tensor:
    """Clips ``(N, T, H, W, 3)`` in [-1, 1]."""
    n, s = len(scenes), supersample
    f = torch.arange(frames, dtype=torch.float32) / max(frames - 1, 1)  # (T,)
    # background: the texture seen through a camera whose offset moves linearly over the clip
    ys = (torch.arange(HEIGHT, dtype=torch.float32) + 0.5).view(1, 1, -1, 1, 1)
    xs = (torch.arange(WIDTH, dtype=torch.float32) + 0.5).view(1, 1, 1, -1, 1)
    pan = torch.tensor([CAMERAS[sc.camera] for sc in scenes]).view(n, 1) * PAN_PX * f  # (N, T) on-screen shift
    kx, ky, phase, amp, grey = (textures[..., j].view(n, 1, 1, 1, -1) for j in range(5))
    bg = grey[..., 0] + (amp * torch.cos(kx * (xs - pan.view(n, frames, 1, 1, 1)) + ky * ys + phase)).sum(-1)
    video = bg.clamp(0, 1).unsqueeze(-1).expand(n, frames, HEIGHT, WIDTH, 3).clone()  # (N, T, H, W, 3)
    # the objects, first then second (in front), supersampled coverage
    yss = ((torch.arange(HEIGHT * s, dtype=torch.float32) + 0.5) / s).view(1, 1, -1, 1)
    xss = ((torch.arange(WIDTH * s, dtype=torch.float32) + 0.5) / s).view(1, 1, 1, -1)
    half = torch.full((n, 1, 1, 1), OBJECT_PX / 2)
    for obj, sign in ((0, 1.0), (1, -1.0)):
        d = torch.tensor([AXES[sc.axis] for sc in scenes]) * sign  # (N, 2)
        travel = torch.tensor([SPEEDS[sc.speed] for sc in scenes]).view(n, 1)
        cx = starts[:, obj, 0:1] + d[:, 0:1] * travel * f  # (N, T)
        cy = starts[:, obj, 1:2] + d[:, 1:2] * travel * f
        dx, dy = xss - cx[..., None, None], yss - cy[..., None, None]
        cover = torch.zeros(n, frames, HEIGHT * s, WIDTH * s)
        shapes = [sc.shape1 if obj == 0 else sc.shape2 for sc in scenes]
        for shape in SHAPES:
            idx = [i for i, sh in enumerate(shapes) if sh == shape]
            if idx:
                cover[idx] = _coverage(shape, dx[idx], dy[idx], half[idx])
        cover = cover.view(n, frames, HEIGHT, s, WIDTH, s).mean(dim=(3, 5))[..., None]
        colour = torch.tensor([COLOURS[sc.colour1 if obj == 0 else sc.colour2] for sc in scenes]).view(n, 1, 1, 1, 3)
        video = video * (1 - cover) + colour * cover
    return video * 2 - 1


def sample_batch(scenes: Sequence[Scene], batch_size: int, g: torch.Generator, jitter=None
                 ) -> Tuple[torch.Tensor, List[str]]:
    """A random batch: clips ``(B, T, H, W, 3)`` of scenes drawn uniformly from ``scenes``, and their prompts
    (``jitter`` is ``tinyhv.data``'s knob; positions here are always anywhere)."""
    idx = torch.randint(len(scenes), (batch_size,), generator=g).tolist()
    chosen = [scenes[i] for i in idx]
    return render(chosen, g), [s.prompt for s in chosen]


def render(scenes: Sequence[Scene], g: torch.Generator) -> torch.Tensor:
    """Clips ``(N, T, H, W, 3)`` in [-1, 1] of ``scenes`` with random layouts and textures from ``g``."""
    starts = random_layout(scenes, g)
    return render_batch(scenes, starts, random_textures(len(scenes), g))
