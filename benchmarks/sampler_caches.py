"""ComfyUI's EasyCache and LazyCache nodes, re-implemented for the benchmark's own sampler (``tinyhv``'s
``generate(wrappers=...)``), decision for decision.

Read from ComfyUI's ``comfy_extras/nodes_easycache.py`` (Comfy-Org/ComfyUI a125cd84, 2025-10-12; GPL-3.0, so not
copied: what follows restates its rule). Both are model-agnostic: they watch the sampler's input ``x`` and the
output of a call, never the transformer's inside.

- **EasyCache** wraps every diffusion-model call (``DIFFUSION_MODEL``). Inside the window ``start_percent`` ..
  ``end_percent`` of the schedule (defaults 0.15 .. 0.95, turned into sigmas by the model's
  ``percent_to_sigma``), at a computed call it learns the transformation rate ``k = mean|Δ output| / mean|Δ x|``
  against the previous computed call (on every 8th element of the last two dimensions of the first batch chunk);
  at each later call it adds ``k * mean|x - x_prev| / mean|output_prev|`` to an accumulator and skips while that
  stays below ``reuse_threshold`` (0.2), returning ``x + (output_prev - x_prev)`` per batch chunk (its cached
  "transformation"). A computed call resets the accumulator. The first two calls in the window always compute (no
  rate yet); before the window nothing is recorded; past its end every call computes and nothing is updated.
  The decision is made on the batch's first chunk: with CFG batched, ComfyUI puts the unconditional chunk first
  (``cond_or_uncond == [1, 0]``), so that one decides for both. ``mean|output_prev|`` is over the whole batch.
- **LazyCache** is the same rule one level up (``PREDICT_NOISE``): on the guided prediction, which ComfyUI's
  sampler sees as the denoised sample ``x0 = x - sigma * v`` for a flow model; it records ``x`` and the output at
  every computed call, also before the window (so its rate is known from the window's first call on), and a
  skipped call returns ``x + (x0_prev - x_prev)``: for a flow model, the last guided velocity times
  ``sigma_prev / sigma``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch


def percent_to_sigma(percent: float, shift: float) -> float:
    """ComfyUI's ``ModelSamplingDiscreteFlow.percent_to_sigma``: the shifted flow sigma at ``percent`` of the
    schedule (1 at 0%, 0 at 100%)."""
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    t = 1.0 - percent
    return shift * t / (1 + (shift - 1) * t)


class _Rule:
    """State and rule shared by both caches: one instance per sampling run (``start`` makes it fresh)."""

    name = "?"

    def __init__(self, reuse_threshold: float = 0.2, start_percent: float = 0.15, end_percent: float = 0.95,
                 subsample_factor: int = 8):
        self.reuse_threshold, self.start_percent, self.end_percent = reuse_threshold, start_percent, end_percent
        self.subsample_factor = subsample_factor
        self.start(shift=1.0)

    def start(self, shift: float) -> "_Rule":
        """A new sampling run on a flow schedule of this ``shift`` (ComfyUI: its OUTER_SAMPLE wrapper clones the
        holder and maps the percents to sigmas)."""
        self.start_t = percent_to_sigma(self.start_percent, shift)
        self.end_t = percent_to_sigma(self.end_percent, shift)
        self.rate: Optional[torch.Tensor] = None  # relative_transformation_rate
        self.cumulative = 0.0
        self.x_prev = self.out_prev = self.out_prev_norm = None
        self.skipped = 0
        self.decisions: List[bool] = []  # per call inside the window: computed?
        return self

    def subsample(self, x: torch.Tensor) -> torch.Tensor:
        f = self.subsample_factor
        return x[..., ::f, ::f] if f > 1 else x

    def _skip(self, input_change) -> bool:
        """The accumulator step at a call inside the window whose input change is known."""
        if self.out_prev_norm is None or self.rate is None:
            return False
        self.cumulative = self.cumulative + self.rate * input_change / self.out_prev_norm
        if self.cumulative < self.reuse_threshold:
            return True
        self.cumulative = 0.0
        return False

    def _learn(self, out_sub, input_change) -> None:
        """After a computed call: the rate from the output's change against the previous computed call."""
        if self.out_prev_norm is not None and input_change is not None:
            self.rate = (out_sub - self.out_prev).flatten().abs().mean() / input_change


class EasyCache(_Rule):
    """ComfyUI's EasyCache: ``wrap(call, x, sigma, chunks)`` around each diffusion-model call (``chunks`` names the
    batch's parts in this sampler's order, ``["cond", "uncond"]`` with CFG)."""

    name = "easycache"

    def start(self, shift):
        super().start(shift)
        self.diffs: Dict[str, torch.Tensor] = {}  # per chunk: output - x of the last computed call
        self.decider: Optional[str] = None  # first_cond_uuid
        return self

    def __call__(self, call: Callable, x: torch.Tensor, sigma: float, chunks: List[str]) -> torch.Tensor:
        order = list(reversed(chunks))  # ComfyUI batches the unconditional chunk first
        if not sigma > self.end_t:  # past the window: computed, nothing recorded
            return call(x, sigma)
        n = x.shape[0] // len(chunks)
        part = {name: slice(i * n, (i + 1) * n) for i, name in enumerate(chunks)}
        input_change = None
        if sigma <= self.start_t:
            if self.decider is None:
                self.decider = order[0]
            x_sub = self.subsample(x[part[self.decider]])
            if self.x_prev is not None:
                input_change = (x_sub - self.x_prev).flatten().abs().mean()
                if self._skip(input_change):
                    self.skipped += 1
                    self.decisions.append(False)
                    return torch.cat([x[part[c]] + self.diffs[c] for c in chunks])
            self.decisions.append(True)
        out = call(x, sigma)
        if self.decider is not None:
            out_sub = self.subsample(out[part[self.decider]])
            self._learn(out_sub, input_change)
        for c in chunks:
            self.diffs[c] = out[part[c]] - x[part[c]]
        if self.decider is not None:
            self.x_prev = self.subsample(x[part[self.decider]]).clone()
            self.out_prev = out_sub.clone()
            self.out_prev_norm = out.flatten().abs().mean()
        return out


class LazyCache(_Rule):
    """ComfyUI's LazyCache: ``wrap(call, x, sigma)`` around the guided prediction (a velocity here; the rule runs on
    the denoised sample ``x - sigma * v``, as ComfyUI's sampler sees it)."""

    name = "lazycache"

    def start(self, shift):
        super().start(shift)
        self.diff: Optional[torch.Tensor] = None  # x0 - x of the last computed call
        return self

    def __call__(self, call: Callable, x: torch.Tensor, sigma: float) -> torch.Tensor:
        if not sigma > self.end_t:
            return call(x, sigma)
        input_change = None
        x_sub = self.subsample(x)
        if sigma <= self.start_t:
            if self.x_prev is not None:
                input_change = (x_sub - self.x_prev).flatten().abs().mean()
                if self._skip(input_change):
                    self.skipped += 1
                    self.decisions.append(False)
                    denoised = x + self.diff
                    return (x - denoised) / sigma
            self.decisions.append(True)
        v = call(x, sigma)
        denoised = x - sigma * v
        out_sub = self.subsample(denoised)
        self._learn(out_sub, input_change)
        self.diff = denoised - x
        self.x_prev, self.out_prev = x_sub.clone(), out_sub.clone()
        self.out_prev_norm = denoised.flatten().abs().mean()
        return v
