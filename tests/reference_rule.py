"""The published TeaCache rule re-implemented the plain way, without this project's hooks.

It drives an unmodified transformer: the indicator comes from the first block's real inputs (captured by
a pre-hook that stops the forward there), a computed step is the plain forward, and a skipped step is the
forward with its block lists emptied and the cached residual added to the input of the final layer. The
step counter is the reference script's: ``num_steps = infer_steps - 1`` and it wraps there.
"""

from __future__ import annotations

import numpy as np
from torch import nn

PUBLISHED = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)


class _Stop(Exception):
    pass


class ReferenceTeaCache:
    def __init__(self, model, infer_steps, thresh, *, block_lists, final, modulated, image_arg=0,
                 coefficients=PUBLISHED):
        self.model, self.thresh = model, thresh
        self.block_lists, self.final, self.modulated, self.image_arg = block_lists, final, modulated, image_arg
        self.num_steps, self.cnt, self.acc = infer_steps - 1, 0, 0.0
        self.prev_mod = self.residual = None
        self.rescale = np.poly1d(coefficients)
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
        if self.cnt == 0 or self.cnt == self.num_steps - 1:
            calc, self.acc = True, 0.0
        else:
            self.acc += self.rescale(((mod - self.prev_mod).abs().mean() / self.prev_mod.abs().mean()).item())
            calc = not self.acc < self.thresh
            if calc:
                self.acc = 0.0
        self.prev_mod = mod
        self.cnt = 0 if self.cnt == self.num_steps - 1 else self.cnt + 1
        self.decisions.append(calc)
        final = getattr(self.model, self.final)
        image_in = a[self.image_arg]
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


HYVIDEO = dict(block_lists=("double_blocks", "single_blocks"), final="final_layer", modulated=hyvideo_modulated)
DIFFUSERS = dict(block_lists=("transformer_blocks", "single_transformer_blocks"), final="norm_out",
                 modulated=lambda block, args, kwargs: block.norm1(args[0], emb=args[2])[0])
