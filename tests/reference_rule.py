"""The published TeaCache rule re-implemented the plain way, without this project's hooks.

It drives an unmodified transformer: the indicator comes from the first block's real inputs (captured by
a pre-hook that stops the forward there), a computed step is the plain forward, and a skipped step is the
forward with its block lists emptied and the cached residual added to the input of the final layer.

The step counter is the reference script's as it stands since its fix of 2024-12-27 (TeaCache repository,
TeaCache4HunyuanVideo/teacache_sample_video.py, commit 27ecce2 "fix small bug"): ``num_steps = infer_steps``,
``cnt += 1`` wrapping to 0 at ``num_steps``, and a step is forced when ``cnt == 0 or cnt == num_steps - 1``:
the first and the last step, nothing else. (Its first version, 2024-12-24, had ``num_steps = infer_steps - 1``
with the counter wrapping at ``num_steps - 1``, which also forced the second-to-last step.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

PUBLISHED = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)


def record_first(seen: dict, key: str, index=None):
    """A forward pre-hook that keeps the first call's positional inputs (or input ``index``) in ``seen[key]`` and
    leaves every call unchanged (it returns None)."""
    def hook(module, args):
        if key not in seen:
            seen[key] = args if index is None else args[index]
    return hook


class _Stop(Exception):
    pass


class ReferenceCounter:
    """The reference's decision arithmetic, line for line: feed it each step's indicator (``None`` is fine on the
    steps it forces) and it says whether to compute. Also replays a recorded trace (``decisions``)."""

    def __init__(self, infer_steps, thresh, coefficients=PUBLISHED):
        self.num_steps, self.cnt, self.acc, self.thresh = infer_steps, 0, 0.0, thresh
        self.rescale = np.poly1d(coefficients)

    def __call__(self, rel_l1) -> bool:
        if self.cnt == 0 or self.cnt == self.num_steps - 1:
            calc, self.acc = True, 0.0
        else:
            self.acc += self.rescale(rel_l1)
            calc = not self.acc < self.thresh
            if calc:
                self.acc = 0.0
        self.cnt += 1
        if self.cnt == self.num_steps:
            self.cnt = 0
        return calc


def reference_computed_steps(rel_l1, thresh, coefficients=PUBLISHED):
    """The steps the reference computes on a recorded indicator trace (e.g. a report's ``rel_l1``)."""
    counter = ReferenceCounter(len(rel_l1), thresh, coefficients)
    return [step for step, value in enumerate(rel_l1) if counter(value)]


def decision_margin(rel_l1, thresh, coefficients=PUBLISHED) -> float:
    """How close the reference's accumulated distance comes to the threshold on the steps it decides (those it does
    not force). Two runs whose indicators differ by rounding (e.g. sequence-parallel against one process) take the
    same decisions when this is well above that difference."""
    counter, margin = ReferenceCounter(len(rel_l1), thresh, coefficients), float("inf")
    for value in rel_l1:
        if 0 < counter.cnt < counter.num_steps - 1:
            margin = min(margin, abs(counter.acc + counter.rescale(value) - thresh))
        counter(value)
    return margin


class ReferenceTeaCache:
    def __init__(self, model, infer_steps, thresh, *, block_lists, final, modulated, image_arg=0,
                 coefficients=PUBLISHED):
        self.model = model
        self.block_lists, self.final, self.modulated, self.image_arg = block_lists, final, modulated, image_arg
        self.counter = ReferenceCounter(infer_steps, thresh, coefficients)
        self.prev_mod = self.residual = None
        self.decisions = []

    def _first_block_inputs(self, args, kwargs):
        first = getattr(self.model, self.block_lists[0])[0]
        seen = {}

        def stop(module, a, kw):
            seen["args"], seen["kwargs"] = a, kw
            raise _Stop

        handle = first.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            self.model(*args, **kwargs)
        except _Stop:
            pass
        finally:
            handle.remove()
        return first, seen["args"], seen["kwargs"]

    def __call__(self, *args, **kwargs):
        first, a, kw = self._first_block_inputs(args, kwargs)
        mod = self.modulated(first, a, kw)
        rel_l1 = None if self.prev_mod is None else \
            ((mod - self.prev_mod).abs().mean() / self.prev_mod.abs().mean()).item()
        calc = self.counter(rel_l1)
        self.prev_mod = mod
        self.decisions.append(calc)
        final = getattr(self.model, self.final)
        image_in = a[self.image_arg] if isinstance(self.image_arg, int) else kw[self.image_arg]
        if calc:
            seen = {}
            handle = final.register_forward_pre_hook(lambda m, fa: seen.update(x=fa[0]))
            try:
                out = self.model(*args, **kwargs)
            finally:
                handle.remove()
            self.residual = seen["x"] - image_in
            return out
        saved = {name: getattr(self.model, name) for name in self.block_lists}
        for name in saved:
            setattr(self.model, name, nn.ModuleList())
        handle = final.register_forward_pre_hook(lambda m, fa: (fa[0] + self.residual, *fa[1:]))
        try:
            return self.model(*args, **kwargs)
        finally:
            handle.remove()
            for name, blocks in saved.items():
                setattr(self.model, name, blocks)


def hyvideo_modulated(block, args, kwargs):
    """Upstream's first double block: ``modulate(img_norm1(img), shift, scale)`` from ``img_mod(vec)``."""
    img, vec = args[0], args[2]
    shift, scale = block.img_mod(vec).chunk(6, dim=-1)[:2]
    return block.img_norm1(img) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def hyvideo_i2v_modulated(block, args, kwargs):
    """HunyuanVideo-I2V's first double block with ``token_replace``, written out: ``img_mod`` applied to
    ``token_replace_vec`` (arg 9) modulates the first ``frist_frame_token_num`` (arg 10) image tokens, ``img_mod(vec)``
    the rest; otherwise as text-to-video."""
    if len(args) < 9 or args[8] != "token_replace":
        return hyvideo_modulated(block, args, kwargs)
    img, vec, tr_vec, n = args[0], args[2], args[9], args[10]
    normed = block.img_norm1(img)
    shift, scale = block.img_mod.linear(block.img_mod.act(vec)).chunk(6, dim=-1)[:2]
    tr_shift, tr_scale = block.img_mod.linear(block.img_mod.act(tr_vec)).chunk(6, dim=-1)[:2]
    return torch.cat([normed[:, :n] * (1 + tr_scale.unsqueeze(1)) + tr_shift.unsqueeze(1),
                      normed[:, n:] * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)], dim=1)


def hyvideo15_modulated(block, args, kwargs):
    """HunyuanVideo-1.5's first double block, called with keywords: ``modulate(img_norm1(img), shift, scale)`` from
    ``img_mod(vec)``."""
    return hyvideo_modulated(block, (kwargs["img"], None, kwargs["vec"]), {})


HYVIDEO = dict(block_lists=("double_blocks", "single_blocks"), final="final_layer", modulated=hyvideo_modulated)
HYVIDEO_I2V = dict(HYVIDEO, modulated=hyvideo_i2v_modulated)
HYVIDEO15 = dict(HYVIDEO, modulated=hyvideo15_modulated, image_arg="img")
def diffusers_modulated(block, args, kwargs):
    """diffusers' first dual-stream block, written out: ``norm(x) * (1 + scale) + shift`` from
    ``norm1.linear(silu(temb))``; in image-to-video with ``token_replace`` the first frame's tokens take the
    shift and scale of ``token_replace_emb`` instead (args 5 and 6 of the block)."""
    x, temb = args[0], args[2]
    norm = block.norm1
    shift, scale = norm.linear(norm.silu(temb)).chunk(6, dim=1)[:2]
    out = norm.norm(x) * (1 + scale[:, None]) + shift[:, None]
    if "TokenReplace" in type(norm).__name__:
        tr_shift, tr_scale = norm.linear(norm.silu(args[5])).chunk(6, dim=1)[:2]
        n = args[6]
        out = torch.cat([norm.norm(x[:, :n]) * (1 + tr_scale[:, None]) + tr_shift[:, None], out[:, n:]], dim=1)
    return out


DIFFUSERS = dict(block_lists=("transformer_blocks", "single_transformer_blocks"), final="norm_out",
                 modulated=diffusers_modulated)
