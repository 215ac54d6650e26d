#!/usr/bin/env python3
"""TeaCache for HunyuanVideo: training-free ~1.6x-2.1x faster sampling.

Copy this file next to ``sample_video.py`` in a Tencent HunyuanVideo checkout (or next to
``sample_image2video.py`` in HunyuanVideo-I2V, or ``generate.py`` in HunyuanVideo-1.5: it recognises
the checkout) and run it with the same flags, plus ``--rel-l1-thresh`` (0.1 ~ 1.6x, 0.15 ~ 2.1x, 0 off;
spelled ``--rel_l1_thresh`` in 1.5's style there)::

    python3 teacache_sample_video.py --video-size 720 1280 --video-length 129 \\
        --infer-steps 50 --prompt "A cat walks on the grass" --flow-reverse \\
        --use-cpu-offload --save-path ./results --rel-l1-thresh 0.15

The method (TeaCache, arXiv 2411.19108): at every denoising step take the first
double block's modulated image input, measure its relative L1 change against the
previous step, rescale it with a fitted polynomial and accumulate it. While the
sum stays below the threshold, every transformer block is skipped and the image
residual cached at the last computed step is added instead.

Three layers, in reading order:

1. the engine: residual predictors and decision indicators, ``TeaCacheConfig`` (the single source of the
   options: ``enable_teacache``'s keywords, the CLI flags and the report come from its fields), the decision
   rule, the per-transformer state and the hooks (``TeaCache``);
2. the models: one registry of specs (``MODELS``, matched by exact class) and one small adapter per
   implementation, which says where the modulated input and the image tokens are;
3. the entry points: calibration profiles, the Tencent checkouts' CLI (HunyuanVideo, -I2V, -1.5) and the
   diffusers CLI, which share one generation loop.

Nothing here copies upstream's forward: the cache wraps the ``forward`` of the blocks on the instance, so it
composes with whatever the transformer's own ``forward`` has become (xfuser sequence parallelism, FP8 linears,
CPU offload hooks, torch.compile).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import importlib.util
import inspect
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from loguru import logger

__all__ = [
    "PUBLISHED_COEFFICIENTS",
    "RULES",
    "INDICATORS",
    "MODELS",
    "ModelSpec",
    "TeaCacheConfig",
    "TeaCache",
    "enable_teacache",
    "find_model",
    "register_model",
    "teacache_decision",
    "replay",
    "threshold_for_speedup",
    "search_schedule",
    "span_costs",
    "searched_schedules",
    "profile_schedule",
    "fit_coefficients",
    "model_identity",
    "make_profile",
    "load_profile",
    "add_teacache_args",
    "main",
]

# =========================================================================== #
# 1. The engine                                                                #
# =========================================================================== #

#: The published rescale polynomial for HunyuanVideo (highest power first),
#: fitted on 50-step 720p generations. Its minimum is about 0.052, so at a
#: threshold of 0.15 at most two steps in a row are skipped.
PUBLISHED_COEFFICIENTS = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)

#: The statistics (indicator, fitted gain) are summed over chunks of this many elements, so the temporaries they
#: need stay this small (64 MiB in fp32) whatever the resolution.
CHUNK_ELEMENTS = 1 << 24


# -- residual predictors: what a skipped call adds --------------------------- #

class Reuse:
    """The residual of the last computed call (published)."""

    name = "reuse"
    keeps_older = False  # whether the residual before the last one is kept

    def predict(self, b: "_Branch", t: Optional[float]) -> torch.Tensor:
        return b.residual

    def observe(self, b: "_Branch", residual: torch.Tensor, t: Optional[float], sums: Callable) -> None:
        """Called with each newly computed residual, before it replaces ``b.residual``."""

    @staticmethod
    def extrapolation_step(b: "_Branch", t: Optional[float]) -> Optional[float]:
        """``(t - t1) / (t1 - t0)`` for the last two computed residuals, None where it is not defined."""
        t1, t0 = b.residual_at, b.older_residual_at
        if b.older_residual is None or None in (t, t1, t0) or t1 == t0:
            return None
        return (t - t1) / (t1 - t0)


class Extrapolate(Reuse):
    """The last residual extrapolated linearly in the timestep from the last two computed ones:
    ``r1 + gain * (r1 - r0) * (t - t1) / (t1 - t0)`` with gain 1."""

    name = "extrapolate"
    keeps_older = True

    def gain(self, b: "_Branch") -> float:
        return 1.0

    def predict(self, b, t):
        step = self.extrapolation_step(b, t)
        return b.residual if step is None else torch.lerp(b.older_residual, b.residual, 1.0 + self.gain(b) * step)


class Fitted(Extrapolate):
    """That extrapolation times a gain in [0, 1], re-fitted at every computed call by least squares on how well it
    would have predicted the residual just computed (0 is reuse, 1 is extrapolate), so that it backs off where the
    residual does not move in a straight line. Both sums are reduced over the sequence-parallel group."""

    name = "fitted"

    def gain(self, b):
        return b.gains[-1] if b.gains else 1.0

    def observe(self, b, residual, t, sums):
        step = self.extrapolation_step(b, t)
        if step is None or step == 0:
            return

        def along_and_norm(now, r1, r0):
            slope = torch.sub(r1, r0)
            return torch.mul(now - r1, slope).sum(dtype=torch.float32), slope.square_().sum(dtype=torch.float32)

        along, norm = sums(along_and_norm, residual, b.residual, b.older_residual)
        if norm > 0 and math.isfinite(along / norm):
            b.gains.append(min(max(along / (norm * step), 0.0), 1.0))


PREDICTORS = {p.name: p() for p in (Reuse, Extrapolate, Fitted)}
#: The residual predictors' names (``rule=``).
RULES = tuple(PREDICTORS)


# -- decision indicators: how much a call's input changed ------------------- #

class ModulatedInput:
    """TeaCache's indicator: the relative L1 change of the first block's modulated image input since the
    branch's previous call (without the first frame's tokens with ``first_frame="exclude"``). The published
    polynomial maps it to the output's change.

    An indicator's ``change`` returns the value the rule accumulates for a call, or None where it cannot say
    (the call is then computed); ``observe`` sees the block stack's image input and output at each computed call."""

    name = "modulated-input"
    published_scale = True  # the published coefficients rescale it (other indicators: used as they are)
    probe_blocks = 0  # leading blocks that always run (their image residual is the branch's ``probe_residual``)
    accumulates = True  # False: the value itself is held against the threshold (a change since the last compute)
    whole_call = False  # whether it can decide before the transformer call runs (``skip="call"``)

    def change(self, cache: "TeaCache", b: "_Branch", block, args, kwargs) -> Optional[float]:
        now = cache.adapter.modulated_input(block, args, kwargs)
        if cache.config.first_frame == "exclude":
            now = now[:, cache.adapter.first_frame_tokens(args, kwargs):]
        previous, b.previous_signal = b.previous_signal, now
        cache.generation.activation_bytes = now.numel() * now.element_size()
        return None if previous is None else cache.relative_l1(now, previous)

    def observe(self, cache: "TeaCache", b: "_Branch", block_input: torch.Tensor, block_output: torch.Tensor):
        pass

    # An indicator that measures against the last computed call(s) also says how a traced uncached run replays
    # exactly (``replay(..., pairwise=)``): ``signals`` are the two tensors (a, b) it compares across calls, and
    # ``from_distances`` its value at call i from their L1 distances, given the last computed call c and the one
    # before it, c0 (None where there is none). This one compares consecutive calls: its trace replays as it is.
    def signals(self, cache: "TeaCache", b: "_Branch", block_input, block_output) -> Optional[tuple]:
        return None

    def from_distances(self, d: dict, i: int, c: int, c0: Optional[int]) -> Optional[float]:
        raise NotImplementedError


class TransformationRate(ModulatedInput):
    """EasyCache's signal (arXiv 2507.02860) on the block stack: at each computed call it learns the rate
    ``k = |Δ output| / |Δ input|`` of the stack's image tokens against the previous computed call; a later call's
    value is the output's relative change that rate predicts, ``k |input - input_c| / |output_c|`` against the last
    computed call c. Accumulated over skipped calls it estimates the drift that reusing adds up. It sees the
    content (the input's change), not only the timestep. Statistics on every ``RATE_TOKEN_STRIDE``-th image token,
    reduced over the sequence-parallel group; no coefficients needed (a profile may still fit some). With
    ``skip="call"`` the same on the whole call: the latent in and the model's output (EasyCache's own place)."""

    name = "transformation-rate"
    published_scale = False
    whole_call = True

    def change(self, cache, b, block, args, kwargs):
        now = cache.subsample(cache.skipped_input(args, kwargs))
        cache.generation.activation_bytes = now.numel() * now.element_size() * RATE_TOKEN_STRIDE
        if b.rate is None:
            return None
        moved, size = cache.sums(lambda a, c, o: (torch.sub(a, c).abs_().sum(dtype=torch.float32),
                                                  o.abs().sum(dtype=torch.float32)), now, b.rate_input, b.rate_output)
        return b.rate * moved / size if size else math.inf

    def observe(self, cache, b, block_input, block_output):
        now_in, now_out = cache.subsample(block_input), self.learnt_output(cache, block_input, block_output)
        if b.rate_input is not None:
            d_out, d_in = cache.sums(lambda o, po, i, pi: (torch.sub(o, po).abs_().sum(dtype=torch.float32),
                                                           torch.sub(i, pi).abs_().sum(dtype=torch.float32)),
                                     now_out, b.rate_output, now_in, b.rate_input)
            b.rate = d_out / d_in if d_in else None
        b.rate_input, b.rate_output = now_in.clone(), now_out.clone()

    def learnt_output(self, cache, block_input, block_output) -> torch.Tensor:
        """What the rate relates the input's change to (subsampled): the output."""
        return cache.subsample(block_output)

    def signals(self, cache, b, block_input, block_output):
        return cache.subsample(block_input), self.learnt_output(cache, block_input, block_output)

    def from_distances(self, d, i, c, c0):
        if c0 is None or not d["a"][c][c0]:  # no rate learnt yet
            return None
        return d["b"][c][c0] / d["a"][c][c0] * d["a"][i][c] / d["b_norm"][c] if d["b_norm"][c] else math.inf


class ResidualRate(TransformationRate):
    """The transformation rate learnt on what a skip reuses: the rate ``|Δ r| / |Δ input|`` of the residual
    ``r = output - input`` (the block stack's, or with ``skip="call"`` the call's output minus its latent); a later
    call's value is the residual's relative change that rate predicts, ``k |input - input_c| / |r_c|``. Where the
    output is large next to the residual (a velocity next to the latent's drift, early in sampling), the output's
    relative change stays small while the residual a skip reuses changes a lot: this indicator sees that, the
    transformation rate does not."""

    name = "residual-rate"

    def learnt_output(self, cache, block_input, block_output):
        out = cache.subsample(block_output)
        return out - cache.subsample(block_input)[:, :out.shape[1]]  # a call's latent: its leading (video) channels


class FirstBlockResidual(ModulatedInput):
    """FirstBlockCache's signal (ParaAttention, diffusers): the first block always runs, and the relative L1 change
    of its image residual since the last computed call is held against the threshold as it is (not accumulated);
    a skipped call reuses the other blocks' residual. Statistics on every ``RATE_TOKEN_STRIDE``-th image token."""

    name = "first-block-residual"
    published_scale = False
    probe_blocks = 1
    accumulates = False

    def change(self, cache, b, block, args, kwargs):
        return None if b.rate_input is None else cache.relative_l1(b.probe_residual, b.rate_input)

    def observe(self, cache, b, block_input, block_output):
        b.rate_input = b.probe_residual

    def signals(self, cache, b, block_input, block_output):
        return b.probe_residual, cache.subsample(block_output) - cache.subsample(block_input)

    def from_distances(self, d, i, c, c0):
        return d["a"][i][c] / d["a_norm"][c] if d["a_norm"][c] else math.inf


class FirstBlockRate(FirstBlockResidual):
    """The two combined: the first block always runs; the change of its residual since the last computed call,
    times the rate ``|Δ r| / |Δ r_first|`` of the other blocks' residual to it learnt between the last two computed
    calls, over ``|r|``: the other blocks' relative change that the first block's change predicts. Accumulated as
    the transformation rate is (EasyCache's rule with the first block as the input)."""

    name = "first-block-rate"
    accumulates = True

    def change(self, cache, b, block, args, kwargs):
        if b.rate is None:
            return None
        moved, size = cache.sums(lambda a, c, r: (torch.sub(a, c).abs_().sum(dtype=torch.float32),
                                                  r.abs().sum(dtype=torch.float32)),
                                 b.probe_residual, b.rate_input, b.rate_output)
        return b.rate * moved / size if size else math.inf

    def observe(self, cache, b, block_input, block_output):
        now = cache.subsample(block_output) - cache.subsample(block_input)
        if b.rate_input is not None:
            d_rest, d_first = cache.sums(lambda r, pr, f, pf: (torch.sub(r, pr).abs_().sum(dtype=torch.float32),
                                                               torch.sub(f, pf).abs_().sum(dtype=torch.float32)),
                                         now, b.rate_output, b.probe_residual, b.rate_input)
            b.rate = d_rest / d_first if d_first else None
        b.rate_input, b.rate_output = b.probe_residual, now

    from_distances = TransformationRate.from_distances  # the same rule, with the first block's residual as input


#: The rate and first-block indicators' statistics use every this-many-th image token (EasyCache subsamples 8x8
#: in space)
RATE_TOKEN_STRIDE = 8

INDICATORS_BY_NAME = {i.name: i() for i in (ModulatedInput, TransformationRate, FirstBlockResidual, FirstBlockRate,
                                              ResidualRate)}
#: The decision indicators' names (``indicator=``); the first is the published one.
INDICATORS = tuple(INDICATORS_BY_NAME)
#: Image-to-video with ``token_replace``: whether the indicator covers the first frame's tokens (the given image,
#: constant over the steps: it adds nothing to the change and dilutes it by its share of the tokens) or not.
FIRST_FRAME = ("include", "exclude")
#: What a skipped call skips: the block stack (the published place: the embedders, the text refiner and the final
#: layer still run) or the whole transformer call (its output is the latent in plus the cached residual; only an
#: indicator whose signal exists before the call can decide there)
SKIPS = ("blocks", "call")


# -- the configuration: the one source of the options ------------------------ #

def _number(convert: Callable, minimum: float, what: str) -> Callable[[str], Any]:
    """An argparse ``type`` accepting finite numbers >= ``minimum``."""
    def parse(value: str):
        try:
            number = convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if not (math.isfinite(number) and number >= minimum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return number
    return parse


_threshold = _number(float, 0, "a number >= 0")
_speedup = _number(float, 1, "a number >= 1")


def _flag(name: str, help: str, **argparse_kwargs) -> dict:
    """A config field's CLI flag (``add_teacache_args`` builds the parser from these)."""
    return {"flag": name, "argparse": dict(help=help, **argparse_kwargs)}


@dataclass(frozen=True)
class TeaCacheConfig:
    """What the cache does; immutable, one per enabled transformer. The defaults are the published rule. Each
    field is a keyword of ``enable_teacache``, a key of the report and, where it has a flag, a CLI option."""

    rel_l1_thresh: float = field(default=0.15, metadata=_flag(
        "--rel-l1-thresh", type=_threshold,
        help="Accumulated rescaled relative-L1 change below which the transformer blocks are skipped. 0.1 ~ 1.6x, "
             "0.15 ~ 2.1x (published, 50 steps); 0 turns caching off (output identical to the checkout's own "
             "script)."))
    coefficients: Sequence[float] = PUBLISHED_COEFFICIENTS  # the rescale polynomial (a profile's, via the CLI)
    warmup_steps: int = field(default=1, metadata=_flag(
        "--teacache-warmup-steps", type=_number(int, 1, "an integer >= 1"), metavar="N",
        help="Always compute the first N steps (the published rule: 1)."))
    max_consecutive_skips: Optional[int] = field(default=None, metadata=_flag(
        "--teacache-max-skips", type=_number(int, 0, "an integer >= 0"), metavar="K",
        help="Never skip more than K calls in a row (default: no cap)."))
    rule: str = field(default="reuse", metadata=_flag(
        "--teacache-rule", choices=RULES,
        help="What a skipped step adds: 'reuse' the last residual (published), 'extrapolate' it to the current "
             "timestep from the last two computed steps, or 'fitted': that extrapolation scaled by a gain in "
             "[0, 1] re-fitted at each computed step. See docs/how-it-works.md."))
    indicator: str = field(default=INDICATORS[0], metadata=_flag(
        "--teacache-indicator", choices=INDICATORS,
        help="What decides: 'modulated-input', the change of the first block's modulated input (published); "
             "'transformation-rate', the output change that the input's change predicts at the rate learnt at "
             "computed steps (EasyCache's signal); 'first-block-residual', the first block's residual change "
             "(FirstBlockCache's; the first block always runs); 'first-block-rate', the two combined; "
             "'residual-rate', the change of the residual a skip reuses that the input's change predicts. The last "
             "four need no coefficients. Where none are published the benchmark recommends, with --teacache-skip "
             "call and --teacache-rule fitted, 'residual-rate' for 1.5 and 'transformation-rate' for I2V: "
             "docs/fidelity.md."))
    skip: str = field(default=SKIPS[0], metadata=_flag(
        "--teacache-skip", choices=SKIPS,
        help="What a skipped step skips: the transformer 'blocks' (published; the embedders, text refiner and final "
             "layer still run) or the whole transformer 'call' (nothing of the model runs: the output is the "
             "latent plus the cached output-minus-latent residual; needs --teacache-indicator transformation-rate "
             "or residual-rate, which then learn their rate on the call's latent and output). See "
             "docs/how-it-works.md."))
    first_frame: str = field(default="include", metadata=_flag(
        "--teacache-first-frame", choices=FIRST_FRAME,
        help="Image-to-video with token_replace: whether the indicator covers the first frame's tokens (the "
             "given image, the same at every step). 'exclude' makes it independent of the video's length; the "
             "residual always covers every token. A profile is tied to this choice."))
    schedule: Optional[Tuple[int, int, int]] = field(default=None, metadata=_flag(
        "--teacache-schedule", type=_number(int, 0, "an integer >= 0"), nargs=3,
        metavar=("START", "END", "INTERVAL"),
        help="Compute a fixed list of steps instead of deciding: those HunyuanVideo-1.5's built-in cache computes "
             "([0, START), every INTERVAL-th step of [START, END), [END, steps); its defaults are 11 45 4). The "
             "threshold is not used; the rule still says what a skipped step adds."))
    fixed_steps: Optional[Tuple[int, ...]] = field(default=None, metadata=_flag(
        "--teacache-steps", type=_number(int, 0, "an integer >= 0"), nargs="+", metavar="STEP",
        help="Compute exactly these steps (0-based, increasing, the first and the last included) instead of "
             "deciding: a searched schedule (search_schedule; a profile's with --teacache-budget). The threshold "
             "is not used; the rule still says what a skipped step adds. See docs/calibration.md."))
    trace: bool = False  # also record the residual change per call (calibration; one more residual held)

    def __post_init__(self):
        thresh = self.rel_l1_thresh
        if isinstance(thresh, bool) or not isinstance(thresh, (int, float)) or not math.isfinite(thresh) or thresh < 0:
            raise ValueError(f"rel_l1_thresh must be a finite number >= 0, got {thresh!r}")
        object.__setattr__(self, "coefficients", tuple(float(c) for c in self.coefficients))
        if not self.coefficients or not all(map(math.isfinite, self.coefficients)):
            raise ValueError(f"coefficients must be finite numbers, got {self.coefficients!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 1:
            raise ValueError(f"warmup_steps must be an int >= 1, got {self.warmup_steps!r}")
        cap = self.max_consecutive_skips
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise ValueError(f"max_consecutive_skips must be None or an int >= 0, got {cap!r}")
        for name, allowed in (("rule", RULES), ("indicator", INDICATORS), ("first_frame", FIRST_FRAME),
                              ("skip", SKIPS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.skip == "call" and not INDICATORS_BY_NAME[self.indicator].whole_call:
            able = [i.name for i in INDICATORS_BY_NAME.values() if i.whole_call]
            raise ValueError(f"skip='call' decides before the transformer runs, which indicator {self.indicator!r} "
                             f"cannot (its signal is computed inside the model): use indicator={able[0]!r}")
        if self.schedule is not None:
            object.__setattr__(self, "schedule", tuple(self.schedule))
            if len(self.schedule) != 3 or not all(isinstance(v, int) and v >= 0 for v in self.schedule) \
                    or self.schedule[2] < 1:
                raise ValueError(f"schedule must be (start, end, interval) ints >= 0, interval >= 1, "
                                 f"got {self.schedule!r}")
        if self.fixed_steps is not None:
            steps = tuple(self.fixed_steps)
            if self.schedule is not None:
                raise ValueError("give schedule or fixed_steps, not both")
            if not steps or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in steps) \
                    or steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:])):
                raise ValueError(f"fixed_steps must be increasing ints starting at step 0, got {steps!r}")
            object.__setattr__(self, "fixed_steps", tuple(int(v) for v in steps))

    @property
    def enabled(self) -> bool:
        """Threshold 0 turns caching off (every block runs, outputs are untouched), unless a schedule is fixed."""
        return self.rel_l1_thresh > 0 or self.schedule is not None or self.fixed_steps is not None

    @property
    def predictor(self) -> Reuse:
        return PREDICTORS[self.rule]

    def rescale(self, rel_l1: float) -> float:
        """The indicator's value as the rule accumulates it: through the coefficients' polynomial, except for an
        indicator the published coefficients were not fitted for while those are the ones given."""
        if self.coefficients == PUBLISHED_COEFFICIENTS and not INDICATORS_BY_NAME[self.indicator].published_scale:
            return float(rel_l1)
        return float(np.polyval(self.coefficients, rel_l1))

    def as_dict(self) -> dict:
        """The options as the report and the profiles hold them (``trace`` is a run's, not an option)."""
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f in dataclasses.fields(self) if f.name != "trace" for v in [getattr(self, f.name)]}

    @classmethod
    def flags(cls) -> Dict[str, dataclasses.Field]:
        """The fields that are CLI options, by their dest in a parsed command line (``teacache_rule`` for
        ``--teacache-rule``: prefixed, so that they never meet a checkout's own options)."""
        return {f.metadata["flag"][2:].replace("-", "_"): f for f in dataclasses.fields(cls) if "flag" in f.metadata}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TeaCacheConfig":
        """The config a parsed command line asks for."""
        return cls(**{f.name: getattr(args, dest) for dest, f in cls.flags().items()})


# -- the decision rule ------------------------------------------------------ #

def teacache_decision(step: int, num_steps: int, accumulated: float, rescaled: float, rel_l1_thresh: float, *,
                      warmup_steps: int = 1, skipped_in_a_row: int = 0,
                      max_consecutive_skips: Optional[int] = None):
    """The published rule for one call: returns ``(compute, new_accumulated)``.

    The first ``warmup_steps`` steps (the reference: 1) and the last step are always computed, nothing
    else: the reference script as fixed on 2024-12-27 (``num_steps = infer_steps``, its counter wrapping
    at ``num_steps``). With ``max_consecutive_skips`` a call is computed once that many were skipped in a row.
    """
    if step < warmup_steps or step >= num_steps - 1:
        return True, 0.0
    accumulated += rescaled
    if accumulated < rel_l1_thresh and (max_consecutive_skips is None or skipped_in_a_row < max_consecutive_skips):
        return False, accumulated
    return True, 0.0


def fixed_schedule(num_steps: int, start: int, end: int, interval: int) -> List[int]:
    """The steps HunyuanVideo-1.5's built-in cache computes (``generate.py --enable_cache --cache_start_step START
    --cache_end_step END --cache_step_interval INTERVAL``): ``[0, start)``, every ``interval``-th step of
    ``[start, end)`` and ``[end, num_steps)``, whatever the video (its defaults 11/45/4 compute 25 of 50)."""
    steps = set(range(min(start, num_steps))) | set(range(start, min(end, num_steps), interval))
    return sorted(steps | set(range(end, num_steps)))


def replay(rel_l1: Sequence[Optional[float]], config: TeaCacheConfig, *, steps: Optional[Sequence[int]] = None,
           num_steps: Optional[int] = None, pairwise: Optional[dict] = None) -> List[int]:
    """The calls the rule computes on a recorded indicator trace (one value per call, first ``None``); ``steps``:
    the step of each call (default one call per step), ``num_steps`` the generation's (default: the calls').
    Exact for the published indicator, whose value at a call does not depend on what was skipped. The other
    indicators measure against the last computed call: ``pairwise`` (a traced uncached run's
    ``stats()["pairwise"]``, which a profile keeps) gives their signals' distances between every two calls, and
    each call's value is then the one it has after the calls the rule computed, exactly (up to the trace's
    subsample of the signals). Without it their trace (one-step changes) replays to more computed calls than a
    cached run takes."""
    steps = range(len(rel_l1)) if steps is None else steps
    num_steps = len(rel_l1) if num_steps is None else num_steps
    computed, acc, run = [], 0.0, 0
    indicator = INDICATORS_BY_NAME[config.indicator]
    accumulates = indicator.accumulates
    if pairwise is not None and pairwise.get("indicator") != config.indicator:
        raise ValueError(f"pairwise distances of indicator {pairwise.get('indicator')!r} cannot replay "
                         f"{config.indicator!r}")
    for call, step in enumerate(steps):
        value = rel_l1[call] if pairwise is None else None if not computed else indicator.from_distances(
            pairwise, call, computed[-1], computed[-2] if len(computed) > 1 else None)
        if value is None:  # the indicator could not say: computed
            compute, acc = True, 0.0
        else:
            compute, acc = teacache_decision(step, num_steps, acc if accumulates else 0.0, config.rescale(value),
                                             config.rel_l1_thresh,
                                             warmup_steps=config.warmup_steps, skipped_in_a_row=run,
                                             max_consecutive_skips=config.max_consecutive_skips)
        run = 0 if compute else run + 1
        if compute:
            computed.append(call)
    return computed


# -- the limit: the best fixed set of computed steps for a budget ----------- #

def _check_budget(n: int, budget: int, first_last: bool) -> None:
    least = min(n, 2) if first_last else 1
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not least <= budget <= n:
        raise ValueError(f"budget must be an int in [{least}, {n}] for {n} steps, got {budget!r}")


def _search_all(span_cost, budgets: Sequence[int], first_last: bool = True) -> Dict[int, Tuple[List[int], float]]:
    """``search_schedule`` for several budgets at once (one dynamic programme serves them all): ``{budget:
    (steps, cost)}``."""
    cost = np.array(span_cost, dtype=np.float64)
    n = cost.shape[0]
    if cost.ndim not in (2, 3) or any(s != n for s in cost.shape) or n < 1:
        raise ValueError(f"span_cost must be an N x N (or N x N x N) table, got shape {cost.shape}")
    for budget in budgets:
        _check_budget(n, budget, first_last)
    top = max(budgets)
    idx = np.arange(n)
    inf = np.inf
    if cost.ndim == 2:  # state: the last computed step; best[j] = least cost of m computed steps ending at j
        c = np.where(idx[:, None] < idx[None, :], cost, inf)
        best = np.full(n, inf)
        best[0 if first_last else slice(None)] = 0.0
        layers, back = [best], [None]
        for _ in range(1, top):
            total = best[:, None] + c  # [i, j]: reach i with m steps, then compute j next
            arg = total.argmin(axis=0)
            best = total[arg, idx]
            layers.append(best)
            back.append(arg)
        found = {}
        for budget in budgets:
            best = layers[budget - 1]
            end = n - 1 if first_last else int(best.argmin())
            steps = [end]
            for m in range(budget - 1, 0, -1):
                steps.append(int(back[m][steps[-1]]))
            found[budget] = (steps[::-1], float(best[end]))
        return found
    # state: (previous computed step h, last computed step i), h == i for the first computed step (no previous)
    valid = ((idx[:, None, None] < idx[None, :, None]) | (idx[:, None, None] == idx[None, :, None])) \
        & (idx[None, :, None] < idx[None, None, :])
    c = np.where(valid, cost, inf)
    best = np.full((n, n), inf)
    if first_last:
        best[0, 0] = 0.0
    else:
        best[idx, idx] = 0.0
    layers, back = [best], [None]
    for _ in range(1, top):
        new, arg = np.full((n, n), inf), np.zeros((n, n), dtype=np.int64)
        for i in range(n):  # new[i, j] = min_h best[h, i] + c[h, i, j]
            total = best[:, i, None] + c[:, i, :]
            arg[i] = total.argmin(axis=0)
            new[i] = total[arg[i], idx]
        best = new
        layers.append(best)
        back.append(arg)
    found = {}
    for budget in budgets:
        best = layers[budget - 1]
        flat = best[:, n - 1] if first_last else best.reshape(-1)
        at = int(flat.argmin())
        h, i = (at, n - 1) if first_last else divmod(at, n)
        value, steps = float(best[h, i]), [i]
        for m in range(budget - 1, 0, -1):
            h, i = int(back[m][h, i]), h
            steps.append(i)
        found[budget] = (steps[::-1], value)
    return found


def search_schedule(span_cost, budget: int, *, first_last: bool = True) -> List[int]:
    """The set of exactly ``budget`` computed steps that minimises the summed error of the skipped spans.

    ``span_cost[i][j]`` (i < j): the error of computing step i and next computing step j (skipping i+1 .. j-1; 0 for
    j = i + 1): N x N, for a rule whose prediction depends on the last computed step only (``reuse``). Or N x N x N,
    ``span_cost[h][i][j]``: the same when h is the computed step before i (``extrapolate``, ``fitted``), with
    ``span_cost[i][i][j]`` for i the first computed step (no step before it). Entries outside ``i < j`` (and ``h < i``
    or ``h == i``) are not read. ``first_last``: step 0 and step N-1 are in the set (a cache computes the first step,
    having nothing to reuse before it, and HunyuanVideo's rule the last); without it the set may start and end
    anywhere and only the spans between its steps are charged.

    Exact dynamic programming over the computed steps: O(N^2 K) for an N x N table, O(N^3 K) for N x N x N (50 steps
    and every budget: well under a second). ``span_costs`` makes the table from one uncached run."""
    return _search_all(span_cost, [budget], first_last)[budget][0]


def _schedule_cost(span_cost, steps: Sequence[int]) -> float:
    """The summed span cost of one set of computed steps (the quantity ``search_schedule`` minimises)."""
    cost = np.asarray(span_cost, dtype=np.float64)
    if cost.ndim == 2:
        return float(sum(cost[i, j] for i, j in zip(steps, steps[1:])))
    return float(sum(cost[h, i, j] for h, i, j in zip([steps[0], *steps], steps, steps[1:])))


def span_costs(residuals, timesteps: Optional[Sequence[float]] = None, rule: str = "reuse") -> np.ndarray:
    """The error table of ``search_schedule`` for residual predictor ``rule``, from one uncached run.

    ``residuals``: the block stack's residual at every step (N tensors of one shape, or a subsample of each taken
    the same way: ``trace=True`` keeps one); ``timesteps``: each step's (None: equally spaced). A skipped step k
    costs ``mean|r_k - p_k| / scale * w_k``: ``p_k`` what ``rule`` adds there, ``scale`` the mean of ``|r|`` over
    the run's steps, ``w_k = |t_k - t_{k+1}| / |t_0 - t_{N-1}|`` the step's share of the timestep range (an error in
    the model's output enters the latent times the step's length). A span costs the sum over its skipped steps:
    errors are taken to add up, neither compounding nor cancelling.

    - ``reuse``: ``p_k = r_i``; an N x N table.
    - ``extrapolate``: ``p_k = r_i + (r_i - r_h) (t_k - t_i) / (t_i - t_h)`` from the last two computed steps h < i
      (``r_i`` where i is the first computed step); an N x N x N table ``[h][i][j]``, exact.
    - ``fitted``: that extrapolation times the gain the engine fits at i from h and the computed step before h,
      clamped to [0, 1]. The table cannot know that third step: it is taken at ``max(0, 2h - i)`` (equal spacing;
      gain 1 when h is 0, as the engine has no fit then): an approximation.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    r = torch.stack([torch.as_tensor(x).reshape(-1) for x in residuals]).to(torch.float64)
    n = r.shape[0]
    t = torch.arange(n, 0, -1, dtype=torch.float64) if timesteps is None else \
        torch.as_tensor([float(v) for v in timesteps], dtype=torch.float64)
    if t.shape != (n,):
        raise ValueError(f"need one timestep per residual ({n}), got {t.shape[0]}")
    scale = float(r.abs().mean()) or 1.0
    span = float((t[0] - t[-1]).abs()) if n > 1 else 0.0
    w = torch.zeros(n, dtype=torch.float64)
    if n > 1:
        w[:-1] = (t[:-1] - t[1:]).abs() / span if span else 1.0 / (n - 1)
    w /= scale

    def spans(err: torch.Tensor, i: int) -> torch.Tensor:
        """Row i of a table from ``err[k]`` (k > i): the cost of i -> j is the sum over i < k < j."""
        row = torch.zeros(n, dtype=torch.float64)
        if n - i > 2:
            row[i + 2:] = torch.cumsum(err[:n - i - 2], 0)
        return row

    reuse = np.zeros((n, n))
    for i in range(n - 1):
        reuse[i] = spans((r[i + 1:] - r[i]).abs().mean(1) * w[i + 1:], i).numpy()
    if rule == "reuse":
        return reuse
    table = np.zeros((n, n, n))
    table[np.arange(n), np.arange(n)] = reuse  # the first computed step: no step before it, reuse
    for i in range(1, n - 1):
        for h in range(i):
            gain = 1.0
            f = max(0, 2 * h - i)
            if rule == "fitted" and f < h:  # the engine's least-squares gain at i, from (f, h, i)
                slope, now = r[h] - r[f], r[i] - r[h]
                step = float((t[i] - t[h]) / (t[h] - t[f])) if t[h] != t[f] else 0.0
                norm = float(slope.square().sum())
                fit = float((now * slope).sum()) / (norm * step) if norm > 0 and step else math.nan
                gain = min(max(fit, 0.0), 1.0) if math.isfinite(fit) else 1.0
            if t[i] == t[h]:
                predicted = r[i].expand(n - i - 1, -1)
            else:
                ahead = gain * (t[i + 1:] - t[i]) / (t[i] - t[h])
                predicted = r[i] + ahead[:, None] * (r[i] - r[h])
            table[h, i] = spans((r[i + 1:] - predicted).abs().mean(1) * w[i + 1:], i).numpy()
    return table


def threshold_for_speedup(traces: Sequence[Any], speedup: float, config: TeaCacheConfig) -> tuple:
    """Pick the threshold whose replay on recorded traces computes closest to ``calls / speedup`` calls.

    ``traces``: indicator traces (one value per step), or dicts with ``rel_l1`` and, for several calls per step,
    ``steps`` and ``num_steps``. Returns ``(threshold, mean computed calls on the traces)``; among equally close
    thresholds the smallest (most calls computed) wins.
    """
    if not speedup >= 1:
        raise ValueError(f"speedup must be >= 1, got {speedup!r}")
    traces = [t if isinstance(t, dict) else {"rel_l1": t} for t in traces]
    target = float(np.mean([len(t["rel_l1"]) for t in traces])) / speedup
    best = None
    for thresh in np.concatenate([[0.0], np.geomspace(1e-4, 1e3, 3000)]):
        cfg = dataclasses.replace(config, rel_l1_thresh=float(thresh))
        mean = float(np.mean([len(replay(t["rel_l1"], cfg, steps=t.get("steps"), num_steps=t.get("num_steps"),
                                         pairwise=t.get("pairwise"))) for t in traces]))
        if best is None or abs(mean - target) < abs(best[1] - target) - 1e-9:
            best = (float(thresh), mean)
    return best


def fit_coefficients(rel_l1: Sequence[float], residual_rel_l1: Sequence[float], degree: int = 4) -> tuple:
    """Least-squares polynomial (highest power first) mapping the indicator to the residual's change."""
    x, y = np.asarray(rel_l1, dtype=np.float64), np.asarray(residual_rel_l1, dtype=np.float64)
    if len(x) != len(y) or len(x) <= degree:
        raise ValueError(f"need more than {degree} paired samples, got {len(x)} and {len(y)}")
    return tuple(float(c) for c in np.polynomial.Polynomial.fit(x, y, degree).convert().coef[::-1])


# -- per-transformer state (reset at the start of every generation) --------- #

#: ``trace=True`` keeps a subsample of each computed residual, for ``span_costs``: at most this many elements
#: (64 KiB in fp32), every s-th element of the flattened residual, s the least stride that fits and shares no factor
#: with the channel count, so that the kept elements spread over the tokens and the channels (all of a small one).
TRACE_SAMPLE_ELEMENTS = 1 << 14


def _trace_sample(x: torch.Tensor) -> torch.Tensor:
    """At most ``TRACE_SAMPLE_ELEMENTS`` of ``x``, in float32, on its device (the same elements at every call)."""
    flat = x.detach().reshape(-1)
    stride = max(1, -(-flat.numel() // TRACE_SAMPLE_ELEMENTS))
    while stride > 1 and math.gcd(stride, x.shape[-1]) != 1:
        stride += 1
    return flat[::stride][:TRACE_SAMPLE_ELEMENTS].float()


def _residual_sample(residual: torch.Tensor) -> torch.Tensor:
    return _trace_sample(residual).cpu()


class ResidualSamples(str):
    """A traced branch's residual subsamples (``stats()["residual_samples"]`` with ``trace=True``): ``steps``,
    ``timesteps`` and ``tensors``, one per computed call. It is a ``str`` (a one-line description) so that the
    reports that hold it stay JSON; the tensors live in this process only, for ``make_profile``."""

    def __new__(cls, samples: Sequence[tuple] = ()):
        samples = list(samples)
        size = samples[0][2].numel() if samples else 0
        self = super().__new__(cls, f"{len(samples)} residual subsamples of {size} elements (in memory only)")
        self.steps, self.timesteps, self.tensors = ([x[k] for x in samples] for k in range(3))
        return self

    def __reduce__(self):
        return ResidualSamples, (list(zip(self.steps, self.timesteps, self.tensors)),)


@dataclass
class _Branch:
    """What one guidance branch remembers between calls (upstream batches CFG: one branch; diffusers' true CFG
    calls the transformer once per branch: two branches, never mixed)."""

    skipping: bool = False  # decision for the call in progress
    accumulated: float = 0.0
    skipped_in_a_row: int = 0
    previous_signal: Optional[torch.Tensor] = None  # the indicator's tensor at the previous call
    residual: Optional[torch.Tensor] = None  # image tokens out of the block stack minus in, last computed call
    residual_at: Optional[float] = None  # timestep of that call
    older_residual: Optional[torch.Tensor] = None  # the computed call before (extrapolating rules, trace)
    older_residual_at: Optional[float] = None
    block_input: Optional[torch.Tensor] = None  # what is skipped's input: the stack's image tokens, or the call's
    # latent with skip="call" (computed calls only)
    call_output: Optional[tuple] = None  # skip="call": the computed calls' output structure (tensor left out), dtype
    steps: List[int] = field(default_factory=list)  # the step of each call
    computed_steps: List[int] = field(default_factory=list)  # the step of each computed call
    skipped_steps: List[int] = field(default_factory=list)  # the step of each skipped call
    rel_l1: List[Optional[float]] = field(default_factory=list)  # the indicator per call
    residual_rel_l1: List[Optional[float]] = field(default_factory=list)  # trace: residual change per call
    samples: List[tuple] = field(default_factory=list)  # trace: (step, timestep, residual subsample) per computed call
    signal_samples: List[tuple] = field(default_factory=list)  # trace: the indicator's (a, b) subsamples per call
    pairwise: List[tuple] = field(default_factory=list)  # trace: (call, |a - a_j| and |b - b_j| for each earlier
    # sampled call j, |a|, |b|), what ``replay(pairwise=)`` needs
    gains: List[float] = field(default_factory=list)  # "fitted": the extrapolation's gain after each fit
    rate: Optional[float] = None  # "transformation-rate": the stack's output/input change rate, last learnt
    rate_input: Optional[torch.Tensor] = None  # its token subsample of the last computed call's input, output
    rate_output: Optional[torch.Tensor] = None
    probe_input: Optional[tuple] = None  # first-block indicators: this call's first block's image tokens (count,
    probe_residual: Optional[torch.Tensor] = None  # subsample), and its residual (subsample)

    def held_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.previous_signal, self.residual, self.older_residual,
                                                          self.rate_input, self.rate_output, self.probe_residual)
                   if t is not None)


@dataclass
class _Generation:
    """Per-transformer state of one generation; ``reset`` replaces it whole.

    A step is an interval of the sampler's schedule: with ``timesteps`` (t_0 > t_1 > ...), every call whose
    timestep t satisfies t_k >= t > t_{k+1} belongs to step k, so a second-order sampler's intermediate
    evaluations (DPM2's midpoint) and Heun's corrector at t_{k+1} are calls of steps too. Without a schedule a step
    starts whenever the timestep changes. A host that calls the model once per guidance branch names the branch
    (diffusers' ``cache_context`` does; ``TeaCache.branch(key)`` otherwise); unnamed calls are one branch (CFG
    batched, as upstream batches it) when the schedule is given, and without it a call repeating the last timestep
    is the next branch (so a Heun-type sampler needs the schedule, or a branch name)."""

    num_steps: Optional[int] = None
    schedule: Optional[Tuple[float, ...]] = None  # one timestep per step, non-increasing
    step: int = -1  # index of the step in progress
    timestep: Optional[float] = None  # of the last call
    branches: Dict[Any, _Branch] = field(default_factory=dict)
    key: Any = None  # the branch of the call in progress
    repeats: int = 0  # calls in a row at the same timestep without a branch key
    started: Optional[float] = None
    finished: Optional[float] = None
    peak_cache_bytes: int = 0  # most memory the cache itself held at once
    activation_bytes: int = 0  # one image activation (the modulated input), for scale
    own_time_s: float = 0.0  # host time spent in the cache's own work (on a GPU: launching it, not running it)
    scheduled: Optional[frozenset] = None  # a fixed schedule's steps (TeaCacheConfig.schedule)

    @property
    def current(self) -> _Branch:
        return self.branches[self.key]

    def step_of(self, t: Optional[float]) -> int:
        """The step a call at timestep ``t`` belongs to (the schedule's interval holding it)."""
        s = self.schedule
        tol = 1e-5 * max(abs(s[0]), abs(s[-1]), 1e-6)
        return max(0, sum(1 for v in s if v >= t - tol) - 1)

    def account(self) -> None:
        self.peak_cache_bytes = max(self.peak_cache_bytes, sum(b.held_bytes() for b in self.branches.values()))


def _schedule(num_steps: int, timesteps) -> Optional[Tuple[float, ...]]:
    """The per-step timesteps of ``reset(num_steps, timesteps=...)``: consecutive repeats (Heun's schedules list
    each inner timestep twice) and one trailing terminal value (ComfyUI's sigmas end with 0) are dropped."""
    if timesteps is None:
        return None
    values = [float(v) for v in (timesteps.tolist() if torch.is_tensor(timesteps) else timesteps)]
    values = [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]
    if len(values) == num_steps + 1:
        values = values[:-1]
    if len(values) != num_steps or any(b > a for a, b in zip(values, values[1:])):
        raise ValueError(f"timesteps must give one non-increasing timestep per step ({num_steps}, or {num_steps + 1} "
                         f"with the terminal one), got {len(values)}: {values[:8]}...")
    return tuple(values)


# -- the cache: hooks, decisions, reports ------------------------------------ #

def _outside_compile(fn: Callable) -> Callable:
    """The decision and its bookkeeping run eagerly, whatever compiles around them: a compiled graph never sees
    (nor guards on) the cache's state, so it is neither broken up by it nor recompiled when it changes."""
    return torch.compiler.disable(fn)


class TeaCache:
    """A TeaCache attached to one transformer instance; ``enable_teacache`` makes one.

    ``reset(num_steps[, timesteps=])`` starts a generation, ``disable()`` restores the transformer,
    ``stats()`` / ``report()`` / ``summary()`` describe the last generation.
    """

    def __init__(self, transformer: torch.nn.Module, spec: "ModelSpec", config: TeaCacheConfig,
                 reduce_sum: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, adapter: "_Adapter" = None):
        self.transformer, self.spec, self.config = transformer, spec, config
        self.adapter = adapter or spec.adapter(transformer)
        self.indicator = INDICATORS_BY_NAME[config.indicator]
        self.whole_call = config.skip == "call"
        probe = self.indicator.probe_blocks
        self._reduce_sum = reduce_sum
        self.generation = _Generation()
        self._sections: Optional[List[dict]] = None  # reset(..., sections=True): the stats of finished sections
        self._branch_key: Any = None  # set by the host around a call (diffusers' cache_context)
        self._restore: List[Callable[[], None]] = []
        self.notes: dict = {}  # what chose this configuration (profile, target speedup), for the report
        blocks = self.adapter.blocks
        if probe and (len(blocks) <= probe or type(blocks[probe]) is not type(blocks[0])):
            raise ValueError(f"indicator {config.indicator!r} runs the first {probe} block(s) at every call and "
                             f"decides at the next one, which must be of the same kind: this {spec.name} has "
                             f"{len(blocks)} block(s) starting with {[type(b).__name__ for b in blocks[:probe + 1]]}")
        if self.whole_call:  # the forward in place now (upstream's sequence-parallel one, if already there)
            self._wrap(transformer, self._before_call, self._after_call)
        for i, block in enumerate(blocks if not self.whole_call else ()):
            before = self._probe_in if i < probe else functools.partial(self._before_blocks, block) if i == probe \
                else functools.partial(self._skipped_block, block)
            self._wrap(block, before, self._probe_out if i < probe else self._after_blocks if i == len(blocks) - 1
                       else None)
        self._restore.append(transformer.register_forward_pre_hook(self._begin_call, with_kwargs=True).remove)
        self._restore.append(transformer.register_forward_hook(self._end_call).remove)
        self._restore.extend(self.adapter.attach(self))

    # -- lifecycle ---------------------------------------------------------- #
    def reset(self, num_steps: int, *, timesteps=None, sections: bool = False) -> "TeaCache":
        """Forget everything cached and expect a generation of ``num_steps`` denoising steps.

        ``timesteps``: the sampler's schedule, in the units the transformer receives its timestep (diffusers'
        ``scheduler.timesteps``; ComfyUI's sigmas mapped by ``model_sampling.timestep``): with it, every call is
        placed in its step, also a second-order sampler's intermediate ones. ``sections=True``: the generation is
        several denoising runs of ``num_steps`` steps in a row (diffusers' FramePack denoises a video section by
        section); each section starts from a fresh state, as a generation of its own would; ``stats()``
        describes the section in progress and ``report()["sections"]`` lists them all."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        steps = self.config.fixed_steps
        if steps is not None and steps[-1] != num_steps - 1:
            raise ValueError(f"fixed_steps {list(steps)} must end at the last step, {num_steps - 1}, of a "
                             f"{num_steps}-step generation")
        self.generation = _Generation(num_steps=num_steps, schedule=_schedule(num_steps, timesteps))
        self._sections = [] if sections else None
        return self

    def disable(self) -> None:
        """Remove every hook and wrapper; the transformer is as it was before ``enable_teacache``."""
        while self._restore:
            self._restore.pop()()
        self.generation, self._sections = _Generation(), None
        if getattr(self.transformer, "_teacache", None) is self:
            del self.transformer._teacache

    @contextlib.contextmanager
    def branch(self, key: Any):
        """Calls inside belong to guidance branch ``key`` (a host that calls the model once per branch)."""
        previous, self._branch_key = self._branch_key, key
        try:
            yield
        finally:
            self._branch_key = previous

    # -- reports ------------------------------------------------------------ #
    def stats(self) -> dict:
        return _stats(self)

    def report(self) -> dict:
        """``stats()`` plus the configuration: what the JSON report beside each video holds."""
        published = self.config.coefficients == PUBLISHED_COEFFICIENTS
        source = ("none: the indicator's value is used as it is" if published and not self.indicator.published_scale
                  else self.spec.coefficients_source if published and self.spec.coefficients else
                  "HunyuanVideo 1.0's text-to-video ones: none are published for this model" if published else
                  "given (a calibration profile, or the caller)")
        return {"method": "TeaCache (arXiv 2411.19108)", "model_spec": self.spec.name, **self.config.as_dict(),
                "coefficients_source": source,
                **self.notes, **self.stats(),
                **({} if self._sections is None else {"sections": self._all_sections()}),
                "sequence_parallel_reduced": self._reduce_sum is not None}

    def summary(self) -> str:
        return _summary(self)

    def _all_sections(self) -> Optional[List[dict]]:
        return None if self._sections is None else [*self._sections, self.stats()]

    # -- per call (outside compiled code) ---------------------------------- #
    @_outside_compile
    def _begin_call(self, module, args, kwargs):
        g = self.generation
        if g.num_steps is None:
            raise RuntimeError("TeaCache: call reset(num_steps) on the handle returned by enable_teacache "
                               "before each generation")
        t = self.adapter.timestep(args, kwargs)
        key = self._branch_key if self._branch_key is not None else self.adapter.branch_key(args, kwargs)
        same_t = g.step >= 0 and t is not None and t == g.timestep
        if g.schedule is not None and t is not None:
            step = g.step_of(t)
        else:
            step = g.step if same_t else g.step + 1
        if step < g.step or step >= g.num_steps:  # a new generation (or FramePack section) without reset
            if self._sections is None:
                raise RuntimeError(f"TeaCache: transformer called for step {step + 1} of a {g.num_steps}-step "
                                   f"generation after step {g.step + 1}; call reset(num_steps) before each "
                                   "generation (a stale residual would be reused otherwise)")
            self._sections.append(self.stats())
            self.generation = g = _Generation(num_steps=g.num_steps, schedule=g.schedule)
            step, same_t = (g.step_of(t) if g.schedule is not None and t is not None else 0), False
        if key is None and g.schedule is None:  # neither: a repeated timestep is the next guidance branch
            g.repeats = g.repeats + 1 if same_t else 0
            key = g.repeats
        if g.step < 0:
            g.started = time.perf_counter()
        g.step, g.timestep, g.key = step, t, key
        g.branches.setdefault(key, _Branch()).skipping = False

    @_outside_compile
    def _end_call(self, module, args, output):
        g = self.generation
        if g.step == g.num_steps - 1:  # the generation's end is its last step's last call
            out = self.spec.output(output)
            if torch.is_tensor(out) and out.is_cuda:
                torch.cuda.synchronize(out.device)
            g.finished = time.perf_counter()

    @_outside_compile
    def _before_blocks(self, block, args, kwargs):
        """The first (deciding) block's call: on a skip, the stack's output (the cached residual added), else None."""
        with self._own_time():
            if self._decide(self.generation.current, block, args, kwargs):
                return None
            b = self.generation.current
            return self.adapter.passthrough(block, args, kwargs,
                                            image_delta=self.config.predictor.predict(b, self.generation.timestep))

    @_outside_compile
    def _before_call(self, args, kwargs):
        """``skip="call"``: the transformer call itself; on a skip, its output (the latent in plus the cached
        residual, in the computed calls' structure and dtype), else None."""
        with self._own_time():
            if self._decide(self.generation.current, None, args, kwargs):
                return None
            b = self.generation.current
            latent = self.skipped_input(args, kwargs)[:, :b.residual.shape[1]]
            video = latent + self.config.predictor.predict(b, self.generation.timestep)
            skeleton, dtype = b.call_output
            return self.spec.rebuild(skeleton, video.to(dtype))

    def _decide(self, b: _Branch, block, args, kwargs) -> bool:
        """Whether this call computes (the indicator, the rule, the bookkeeping); a computed call keeps the input of
        what a skip leaves out, for ``_computed``."""
        g, cfg = self.generation, self.config
        rel_l1 = self.indicator.change(self, b, block, args, kwargs) if cfg.enabled or cfg.trace else None
        b.rel_l1.append(rel_l1)
        b.steps.append(g.step)
        if cfg.schedule is not None or cfg.fixed_steps is not None:  # fixed: the indicator is only recorded
            if g.scheduled is None:
                g.scheduled = frozenset(cfg.fixed_steps or fixed_schedule(g.num_steps, *cfg.schedule))
            compute = g.step in g.scheduled
        elif rel_l1 is None:  # the indicator could not say (a branch's first call, no rate learnt yet)
            compute, b.accumulated = True, 0.0
        else:
            compute, b.accumulated = teacache_decision(
                g.step, g.num_steps, b.accumulated if self.indicator.accumulates else 0.0, cfg.rescale(rel_l1),
                cfg.rel_l1_thresh,
                warmup_steps=cfg.warmup_steps, skipped_in_a_row=b.skipped_in_a_row,
                max_consecutive_skips=cfg.max_consecutive_skips)
        compute = compute or b.residual is None or not cfg.enabled
        (b.computed_steps if compute else b.skipped_steps).append(g.step)
        b.skipped_in_a_row = 0 if compute else b.skipped_in_a_row + 1
        b.skipping = not compute
        if compute:
            if not cfg.predictor.keeps_older and not cfg.trace:
                b.residual = None  # freed before the blocks run: never two residuals of a branch at once
            if cfg.enabled or cfg.trace:
                b.block_input = self.skipped_input(args, kwargs)
        return compute

    @contextlib.contextmanager
    def _own_time(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.generation.account()
            self.generation.own_time_s += time.perf_counter() - start

    @_outside_compile
    def _probe_in(self, args, kwargs):
        """A probe block's call (it always runs): keep its image input's token subsample."""
        if self.config.enabled or self.config.trace:
            image = self.adapter.image_in(args, kwargs)
            self.generation.current.probe_input = (image.shape[1], self.subsample(image).clone())

    @_outside_compile
    def _probe_out(self, output) -> None:
        b = self.generation.current
        if b.probe_input is not None:
            tokens, sample = b.probe_input
            image = self.adapter.image_out(output, num_image_tokens=tokens)
            b.probe_residual, b.probe_input = self.subsample(image) - sample, None

    @_outside_compile
    def _skipped_block(self, block, args, kwargs):
        """A later block's call: its inputs unchanged when the stack is skipped, else None."""
        return self.adapter.passthrough(block, args, kwargs) if self.generation.current.skipping else None

    @_outside_compile
    def _after_blocks(self, output) -> None:
        """The last block's output: store the stack's residual of a computed call."""
        b = self.generation.current
        if b.block_input is not None:
            with self._own_time():
                self._computed(b, self.adapter.image_out(output, num_image_tokens=b.block_input.shape[1]))

    @_outside_compile
    def _after_call(self, output) -> None:
        """``skip="call"``: the output of a computed call: store its residual (output minus the latent in)."""
        b = self.generation.current
        if b.block_input is not None:
            with self._own_time():
                video = self.spec.output(output)
                b.call_output = (self.spec.rebuild(output, None), video.dtype)
                self._computed(b, video)

    def _computed(self, b: _Branch, out: torch.Tensor) -> None:
        """A computed call's output of what is skipped (the block stack's image tokens, or the call's video):
        the indicator learns, the residual (``out`` minus its input; for a call, the latent's leading channels)
        replaces the last one."""
        g = self.generation
        inp, b.block_input = b.block_input, None
        self.indicator.observe(self, b, inp, out)
        signals = self.indicator.signals(self, b, inp, out) if self.config.trace else None
        if signals is not None:
            self._trace_distances(b, *signals)
        residual = out - inp[:, :out.shape[1]]
        self.config.predictor.observe(b, residual, g.timestep, self.sums)
        if self.config.trace:
            b.residual_rel_l1.extend([None] * (len(b.rel_l1) - 1 - len(b.residual_rel_l1)))
            b.residual_rel_l1.append(None if b.residual is None else self.relative_l1(residual, b.residual))
            b.samples.append((g.step, g.timestep, _residual_sample(residual)))
        keep = self.config.predictor.keeps_older or self.config.trace
        b.older_residual, b.older_residual_at = (b.residual, b.residual_at) if keep else (None, None)
        b.residual, b.residual_at = residual, g.timestep

    def skipped_input(self, args, kwargs) -> torch.Tensor:
        """The input of what a skip leaves out, from its call's arguments: the block stack's image tokens (the
        deciding block's call) or the transformer call's latent (``skip="call"``)."""
        return self.adapter.call_input(args, kwargs) if self.whole_call else self.adapter.image_in(args, kwargs)

    def subsample(self, x: torch.Tensor) -> torch.Tensor:
        """What the rate statistics see of a skipped unit's input or output: every ``RATE_TOKEN_STRIDE``-th image
        token (B, N, D), or of a call's latent (B, C, T, H, W) every ``RATE_TOKEN_STRIDE``-th column."""
        return x[..., ::RATE_TOKEN_STRIDE] if self.whole_call else x[:, ::RATE_TOKEN_STRIDE]

    def _trace_distances(self, b: _Branch, a: torch.Tensor, c: torch.Tensor) -> None:
        """Trace: the L1 distances of this call's indicator signals (subsampled) to every earlier traced call's,
        and their sizes, reduced over the sequence-parallel group."""
        a, c = _trace_sample(a), _trace_sample(c)
        earlier = [torch.stack([x[k] for x in b.signal_samples]) for k in (1, 2)] if b.signal_samples else None
        sums = [torch.sub(earlier[0], a).abs_().sum(1), torch.sub(earlier[1], c).abs_().sum(1)] if earlier else []
        total = torch.cat([*sums, a.abs().sum()[None], c.abs().sum()[None]])
        if self._reduce_sum is not None:
            total = self._reduce_sum(total)
        values, n = total.tolist(), len(b.signal_samples)
        call = len(b.rel_l1) - 1
        b.pairwise.append((call, values[:n], values[n:2 * n], values[2 * n], values[2 * n + 1]))
        b.signal_samples.append((call, a, c))

    # -- statistics reduced over the sequence-parallel group ----------------- #
    def relative_l1(self, now: torch.Tensor, prev: torch.Tensor) -> float:
        """mean|now - prev| / mean|prev| as a ratio of sums, so that under sequence parallelism the sums are
        all-reduced over the group first: every rank gets the full-tensor value and takes the same decision."""
        num, den = self.sums(lambda a, b: (torch.sub(a, b).abs_().sum(dtype=torch.float32),
                                           b.abs().sum(dtype=torch.float32)), now, prev)
        return num / den if den else math.inf

    def sums(self, sums: Callable, *tensors: torch.Tensor) -> List[float]:
        """The float32 sums that ``sums`` returns for ``tensors``, added up over chunks of at most ``CHUNK_ELEMENTS``
        elements (so its temporaries stay chunk-sized: a 720p x 129-frame activation is 0.7 GiB in bf16), then
        reduced over the sequence-parallel group."""
        flat = [t.reshape(-1) for t in tensors]
        total = sum(torch.stack(sums(*part)) for part in zip(*(t.split(CHUNK_ELEMENTS) for t in flat)))
        if self._reduce_sum is not None:
            total = self._reduce_sum(total)
        return total.tolist()

    # -- wrappers ----------------------------------------------------------- #
    def _wrap(self, module: torch.nn.Module, before: Callable, after: Optional[Callable]) -> None:
        """Replace ``module.forward`` on the instance (a block, or the transformer with ``skip="call"``): ``before``
        returns the output of a skipped call (else None, and the forward runs), ``after`` sees a computed one's.
        The wrapper's own frame is left out of compilation (not what it calls: the forward compiles as it would
        without the cache), the decision runs eagerly. A probe block (before the deciding one, for the first-block
        indicators) always runs; its image residual is recorded."""
        original = module.forward
        had_instance_forward = "forward" in vars(module)

        def forward(*args, **kwargs):
            out = before(args, kwargs)
            if out is not None:
                return out
            out = original(*args, **kwargs)
            if after is not None:
                after(out)
            return out

        module.forward = torch.compiler.disable(forward, recursive=False)

        def restore():
            if had_instance_forward:
                module.forward = original
            else:
                del module.forward

        self._restore.append(restore)


def _stats(cache: TeaCache) -> dict:
    """Decisions of the current/last generation; top-level lists are the first branch's."""
    g, cfg = cache.generation, cache.config
    branches = [{"steps": list(b.steps), "computed_steps": list(b.computed_steps),
                 "skipped_steps": list(b.skipped_steps), "rel_l1": list(b.rel_l1),
                 **({"residual_rel_l1": list(b.residual_rel_l1), "residual_samples": ResidualSamples(b.samples)}
                    if cfg.trace else {}),
                 **({"pairwise": _pairwise(b, cfg.indicator)} if b.pairwise and
                    [x[0] for x in b.pairwise] == list(range(len(b.rel_l1))) else {}),
                 **({"gains": list(b.gains)} if cfg.rule == "fitted" else {})} for b in g.branches.values()]
    branches = branches or [{"steps": [], "computed_steps": [], "skipped_steps": [], "rel_l1": []}]
    calls = sum(len(b["steps"]) for b in branches)
    computed = sum(len(b["computed_steps"]) for b in branches)
    return {
        "num_steps": g.num_steps,
        "steps_run": g.step + 1,
        **branches[0],
        "num_branches": len(branches),
        **({"branches": branches} if len(branches) > 1 else {}),
        "transformer_calls": calls,
        "computed_calls": computed,
        "ideal_speedup": calls / computed if computed else None,
        "denoise_time_s": None if g.started is None or g.finished is None else g.finished - g.started,
        "peak_cache_bytes": g.peak_cache_bytes,
        "image_activation_bytes": g.activation_bytes,
        "cache_own_time_s": g.own_time_s,
        **({} if cache._sections is None else {"section": len(cache._sections)}),
    }


def _pairwise(b: _Branch, indicator: str) -> dict:
    """A traced uncached run's signal distances (``replay(pairwise=)``): ``a[i][j]``, ``b[i][j]`` for j < i, and each
    call's ``a_norm``, ``b_norm``, to 6 significant digits."""
    def r(v):
        return float(f"{v:.6g}")

    return {"indicator": indicator, "a": [[r(v) for v in x[1]] for x in b.pairwise],
            "b": [[r(v) for v in x[2]] for x in b.pairwise], "a_norm": [r(x[3]) for x in b.pairwise],
            "b_norm": [r(x[4]) for x in b.pairwise]}


def _summary(cache: TeaCache) -> str:
    """One line: ``TeaCache(rel_l1_thresh=0.15, rule=reuse): computed 24/50 steps, skipped 26, denoise 12.3 s``."""
    s, cfg = cache.stats(), cache.config
    t = "n/a" if s["denoise_time_s"] is None else f"{s['denoise_time_s']:.1f} s"
    per_step = s["transformer_calls"] > s["steps_run"] * max(1, s["num_branches"])
    unit = "calls" if per_step else "steps"
    calls = f" (of {s['transformer_calls']} transformer calls: {s['computed_calls']} computed)" \
        if s["num_branches"] > 1 else ""
    decided = f"fixed schedule {'/'.join(map(str, cfg.schedule))}" if cfg.schedule is not None \
        else f"{len(cfg.fixed_steps)} given steps" if cfg.fixed_steps is not None \
        else f"rel_l1_thresh={cfg.rel_l1_thresh:g}"
    head = f"TeaCache({decided}, rule={cfg.rule}{', skip=call' if cfg.skip == 'call' else ''}): "
    sections = cache._all_sections()
    if sections is not None:
        computed, calls = sum(x["computed_calls"] for x in sections), sum(x["transformer_calls"] for x in sections)
        return (f"{head}{len(sections)} section(s) of {s['num_steps']} steps: computed {computed} of {calls} "
                f"transformer calls, per section {[len(x['computed_steps']) for x in sections]}")
    total = len(s["steps"]) if per_step else s["num_steps"]
    return (f"{head}computed {len(s['computed_steps'])}/{total} {unit}, skipped "
            f"{len(s['skipped_steps'])}{calls}, denoise {t}")


# =========================================================================== #
# 2. The models: one registry of specs, one adapter per implementation         #
# =========================================================================== #

class _Adapter:
    """Knows one transformer implementation's block layout; the rule lives in TeaCache."""

    blocks: List[torch.nn.Module]
    image_condition: Optional[str] = None  # image-to-video: how the image comes in ("token_replace", ...)

    def attach(self, cache: TeaCache) -> List[Callable[[], None]]:
        """Anything more the implementation needs hooked (returns the callbacks that undo it)."""
        return []

    def timestep(self, args, kwargs) -> Optional[float]:
        """The transformer call's timestep."""
        raise NotImplementedError

    def branch_key(self, args, kwargs) -> Any:
        """The guidance branch of a transformer call, where the call says it (None: not said)."""
        return None

    def modulated_input(self, block, args, kwargs) -> torch.Tensor:
        raise NotImplementedError

    def first_frame_tokens(self, args, kwargs) -> int:
        """Image-to-video with ``token_replace``: how many leading image tokens (of this rank's shard) are the
        first frame's, as the first block is told."""
        raise NotImplementedError

    def image_in(self, args, kwargs) -> torch.Tensor:
        raise NotImplementedError

    def image_out(self, output, num_image_tokens: int) -> torch.Tensor:
        raise NotImplementedError

    def call_input(self, args, kwargs) -> torch.Tensor:
        """The transformer call's latent (B, C, T, H, W): every implementation of the family takes it first (``x``
        or ``hidden_states``); its leading channels are the noisy video (image-to-video concatenates after them)."""
        return _arg(args, kwargs, 0, ("x", "hidden_states"))

    def passthrough(self, block, args, kwargs, image_delta=None):
        """The skipped block's output: its inputs unchanged (image plus ``image_delta`` if given)."""
        raise NotImplementedError


_REQUIRED = object()


def _arg(args, kwargs, index: int, name, default=_REQUIRED):
    """Argument ``index`` of a call, or the keyword ``name`` (a tuple: the first of these names given)."""
    if len(args) > index:
        return args[index]
    for key in (name,) if isinstance(name, str) else name:
        if key in kwargs:
            return kwargs[key]
    if default is _REQUIRED:
        raise KeyError(name)
    return default


def _modulate(normed: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
    """``normed * (1 + scale) + shift`` with the first two of the six chunks of an ``img_mod`` output."""
    shift, scale = modulation.chunk(6, dim=-1)[:2]
    return normed * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class _HunyuanVideoAdapter(_Adapter):
    """Tencent's ``HYVideoDiffusionTransformer`` (HunyuanVideo and HunyuanVideo-I2V): ``double_blocks`` take
    ``(img, txt, vec, cu_seqlens_q, cu_seqlens_kv, max_seqlen_q, max_seqlen_kv, freqs_cis)`` and return
    ``(img, txt)``; ``single_blocks`` take ``(x, vec, txt_len, ...)`` with image tokens first. I2V appends
    ``(condition_type, token_replace_vec, frist_frame_token_num)`` to both; with ``token_replace`` the first
    frame's tokens are modulated by ``img_mod(token_replace_vec)`` and the rest by ``img_mod(vec)``.
    HunyuanVideo-1.5's ``HunyuanVideo_1_5_DiffusionTransformer`` calls the same blocks with keywords
    (``img=, txt=, vec=, ...``), and its ``single_blocks`` may be empty."""

    def __init__(self, transformer):
        self.single = set(map(id, transformer.single_blocks))
        self.blocks = list(transformer.double_blocks) + list(transformer.single_blocks)
        self.image_condition = getattr(transformer, "i2v_condition_type", None)  # I2V's transformer only

    def timestep(self, args, kwargs):
        return float(_arg(args, kwargs, 1, ("t", "timestep")).flatten()[0])

    def modulated_input(self, block, args, kwargs):
        img, vec = _arg(args, kwargs, 0, "img"), _arg(args, kwargs, 2, "vec")
        normed = block.img_norm1(img)
        if _arg(args, kwargs, 8, "condition_type", None) == "token_replace":  # I2V: the block's two modulations
            mod, first_mod = block.img_mod(vec, condition_type="token_replace",
                                           token_replace_vec=_arg(args, kwargs, 9, "token_replace_vec"))
            n = _arg(args, kwargs, 10, "frist_frame_token_num")
            return torch.cat([_modulate(normed[:, :n], first_mod), _modulate(normed[:, n:], mod)], dim=1)
        return _modulate(normed, block.img_mod(vec))

    def first_frame_tokens(self, args, kwargs):
        return _arg(args, kwargs, 10, "frist_frame_token_num")

    def image_in(self, args, kwargs):
        return _arg(args, kwargs, 0, "img")

    def image_out(self, output, num_image_tokens):
        if isinstance(output, tuple):  # a double block was last (no single blocks)
            return output[0]
        return output[:, :num_image_tokens]

    def passthrough(self, block, args, kwargs, image_delta=None):
        if id(block) in self.single:
            return _arg(args, kwargs, 0, "x")
        img, txt = _arg(args, kwargs, 0, "img"), _arg(args, kwargs, 1, "txt")
        return (img if image_delta is None else img + image_delta), txt


class _DiffusersHunyuanVideoAdapter(_Adapter):
    """diffusers' HunyuanVideo transformers (``HunyuanVideoTransformer3DModel``, FramePack's, and 1.5's
    ``HunyuanVideo15Transformer3DModel``): ``transformer_blocks`` and (not in 1.5) ``single_transformer_blocks``
    take ``(hidden_states, encoder_hidden_states, temb, attention_mask, rotary[, token_replace_emb,
    first_frame_num_tokens])`` and return both streams, image first; ``norm1(hidden_states, temb)`` gives the
    modulated input first. diffusers' pipelines call the model once per guidance branch inside
    ``transformer.cache_context("cond" / "uncond")``: that name is the branch key."""

    def __init__(self, transformer):
        self.blocks = list(transformer.transformer_blocks) + list(getattr(transformer, "single_transformer_blocks", []))
        self.image_condition = getattr(transformer.config, "image_condition_type", None)
        self.transformer = transformer

    def attach(self, cache):
        """The pipeline's ``cache_context(name)`` also names the branch of the calls inside it."""
        original = getattr(self.transformer, "cache_context", None)
        if original is None:
            return []
        had_instance_attribute = "cache_context" in vars(self.transformer)

        @contextlib.contextmanager
        def cache_context(name, *args, **kwargs):
            with original(name, *args, **kwargs), cache.branch(name):
                yield

        self.transformer.cache_context = cache_context

        def restore():
            if had_instance_attribute:
                self.transformer.cache_context = original
            else:
                del self.transformer.cache_context
        return [restore]

    def timestep(self, args, kwargs):
        return float(_arg(args, kwargs, 1, "timestep").flatten()[0])

    def modulated_input(self, block, args, kwargs):
        hidden, temb = _arg(args, kwargs, 0, "hidden_states"), _arg(args, kwargs, 2, "temb")
        if "TokenReplace" in type(block.norm1).__name__:  # image-to-video: first frame modulated apart
            return block.norm1(hidden, temb, _arg(args, kwargs, 5, "token_replace_emb"),
                               _arg(args, kwargs, 6, "first_frame_num_tokens"))[0]
        return block.norm1(hidden, emb=temb)[0]

    def first_frame_tokens(self, args, kwargs):
        return _arg(args, kwargs, 6, "first_frame_num_tokens")

    def image_in(self, args, kwargs):
        return _arg(args, kwargs, 0, "hidden_states")

    def image_out(self, output, num_image_tokens):
        return output[0]

    def passthrough(self, block, args, kwargs, image_delta=None):
        hidden, context = _arg(args, kwargs, 0, "hidden_states"), _arg(args, kwargs, 1, "encoder_hidden_states")
        return (hidden if image_delta is None else hidden + image_delta), context


class _ComfyUIHunyuanVideoAdapter(_Adapter):
    """ComfyUI's ``comfy.ldm.hunyuan_video.model.HunyuanVideo`` (one class for text-to-video, I2V v1 ``concat``,
    I2V v2 token replace and, in newer ComfyUI, HunyuanVideo-1.5). Its blocks are Flux's: ``double_blocks`` are
    called with keywords ``(img=, txt=, vec=, pe=, attn_mask=, modulation_dims_img=, modulation_dims_txt=,
    transformer_options=)`` and return ``(img, txt)``; ``single_blocks`` take ``(x, vec=, pe=, ...)`` on the joint
    stream, ``cat(img, txt)`` (newer versions: ``cat(txt, img)`` with ``transformer_options["img_slice"]``).
    I2V v2 (``guiding_frame_index``) makes ``vec`` (B, 2, D) and passes ``modulation_dims_img``: the first frame's
    tokens are modulated by ``vec[:, 0]``, the rest by ``vec[:, 1]``; the modulated input is the block's own
    ``apply_mod`` on those. Blocks may add into their inputs in place (newer double blocks do ``img +=``), so the
    stack's input is copied before they run. The model is called as ``(x, timestep, context=...,
    transformer_options=...)`` with ComfyUI's sigma-derived timestep; ``transformer_options["cond_or_uncond"]``
    names the guidance branches of a call (cond and uncond batched in one call are one branch, as upstream batches
    them; split calls are a branch each)."""

    def __init__(self, transformer, image_condition: Optional[str] = "auto"):
        self.single = set(map(id, transformer.single_blocks))
        self.blocks = list(transformer.double_blocks) + list(transformer.single_blocks)
        if image_condition == "auto":  # v1 (33 channels) and SkyReels (32) concatenate the image latent
            params = getattr(transformer, "params", None)
            image_condition = "concat" if getattr(params, "in_channels", None) in (32, 33) else None
        self.image_condition = image_condition  # token replace is per call here: the host says it (see comfyui/)
        self.options: Optional[dict] = None  # transformer_options of the call in progress (img_slice)

    def timestep(self, args, kwargs):
        return float(_arg(args, kwargs, 1, "timestep").flatten()[0])

    def branch_key(self, args, kwargs):
        branches = (kwargs.get("transformer_options") or {}).get("cond_or_uncond")
        return None if branches is None else tuple(branches)

    @staticmethod
    def _apply_mod(block):
        """The ``apply_mod`` of the block's own module (``comfy.ldm.flux.layers``), as the block calls it."""
        return sys.modules[type(block).__module__].apply_mod

    def modulated_input(self, block, args, kwargs):
        img, vec = _arg(args, kwargs, 0, "img"), _arg(args, kwargs, 2, "vec")
        mod = block.img_mod(vec)[0]
        dims = _arg(args, kwargs, 5, "modulation_dims_img", None)
        return self._apply_mod(block)(block.img_norm1(img), 1 + mod.scale, mod.shift, dims)

    def first_frame_tokens(self, args, kwargs):
        dims = _arg(args, kwargs, 5, "modulation_dims_img", None)
        return dims[0][1] if dims else 0  # [(0, frame_tokens, 0), (frame_tokens, None, 1)]; none: no first frame

    def image_in(self, args, kwargs):
        self.options = kwargs.get("transformer_options")
        return _arg(args, kwargs, 0, "img").clone()  # the blocks may add into it in place

    def image_out(self, output, num_image_tokens):
        if isinstance(output, tuple):  # a double block was last (HunyuanVideo-1.5: no single blocks)
            return output[0]
        where = (self.options or {}).get("img_slice")
        return output[:, where[0]:where[1]] if where else output[:, :num_image_tokens]

    def passthrough(self, block, args, kwargs, image_delta=None):
        if id(block) in self.single:
            return _arg(args, kwargs, 0, "x")
        img, txt = _arg(args, kwargs, 0, "img"), _arg(args, kwargs, 1, "txt")
        return (img if image_delta is None else img + image_delta), txt


def _is_comfyui_hunyuanvideo_15(transformer) -> bool:
    """ComfyUI folds HunyuanVideo-1.5 into the same class: its vision projection and cond-type embedding."""
    params = getattr(transformer, "params", None)
    return getattr(params, "vision_in_dim", None) is not None or bool(getattr(params, "use_cond_type_embedding", False))


def _first_tensor(output) -> Any:
    """The video out of a transformer's output: Tencent's dict (``"x"``), diffusers' tuple or output object."""
    if isinstance(output, dict):
        return output.get("x", output.get("sample"))
    if isinstance(output, (tuple, list)):
        return output[0]
    return getattr(output, "sample", output)


def _with_first_tensor(output, tensor) -> Any:
    """``output`` with its video replaced by ``tensor`` (``_first_tensor``'s inverse; None takes the video out)."""
    if isinstance(output, dict):  # Tencent's dict; diffusers' output classes are dicts too
        return type(output)(**{**output, "x" if "x" in output else "sample": tensor})
    if isinstance(output, (tuple, list)):
        return type(output)([tensor, *output[1:]])
    return tensor


@dataclass(frozen=True)
class ModelSpec:
    """One model of the family as this file serves it."""

    name: str
    classes: Tuple[str, ...]  # "module:QualName" of the exact classes (and their subclasses) it serves
    adapter: type
    version: str  # the family's version: "1.0" (the published coefficients' model) or "1.5"
    coefficients: Optional[Tuple[float, ...]] = None  # published for this model, if any
    coefficients_source: str = ""  # where the published coefficients come from
    output: Callable[[Any], Any] = _first_tensor  # how to read the model's output
    rebuild: Callable[[Any, Any], Any] = _with_first_tensor  # and make one with another video (skip="call")
    instances: Optional[Callable[[Any], bool]] = None  # where one class serves several models: which instances

    def serves(self, cls: type) -> bool:
        return any(f"{c.__module__}:{c.__qualname__}" in self.classes for c in cls.__mro__)

    def serves_instance(self, transformer) -> bool:
        return self.serves(type(transformer)) and (self.instances is None or self.instances(transformer))


_PAPER = "TeaCache (arXiv 2411.19108), TeaCache4HunyuanVideo: fitted on 50-step 720p text-to-video"
#: Every model this file serves, most specific first. Adding a model of the family: a spec and an adapter.
MODELS: List[ModelSpec] = [
    ModelSpec("Tencent HunyuanVideo / HunyuanVideo-I2V", ("hyvideo.modules.models:HYVideoDiffusionTransformer",),
              _HunyuanVideoAdapter, "1.0", PUBLISHED_COEFFICIENTS, _PAPER),
    ModelSpec("Tencent HunyuanVideo-1.5", (
        "hyvideo.models.transformers.hunyuanvideo_1_5_transformer:HunyuanVideo_1_5_DiffusionTransformer",),
        _HunyuanVideoAdapter, "1.5"),
    ModelSpec("diffusers HunyuanVideo", (
        "diffusers.models.transformers.transformer_hunyuan_video:HunyuanVideoTransformer3DModel",
        "diffusers.models.transformers.transformer_hunyuan_video_framepack:HunyuanVideoFramepackTransformer3DModel"),
        _DiffusersHunyuanVideoAdapter, "1.0", PUBLISHED_COEFFICIENTS, _PAPER),
    ModelSpec("diffusers HunyuanVideo 1.5", (
        "diffusers.models.transformers.transformer_hunyuan_video15:HunyuanVideo15Transformer3DModel",),
        _DiffusersHunyuanVideoAdapter, "1.5"),
    ModelSpec("ComfyUI HunyuanVideo 1.5", ("comfy.ldm.hunyuan_video.model:HunyuanVideo",),
              _ComfyUIHunyuanVideoAdapter, "1.5", instances=_is_comfyui_hunyuanvideo_15),
    ModelSpec("ComfyUI HunyuanVideo (text-to-video, I2V v1/v2)", ("comfy.ldm.hunyuan_video.model:HunyuanVideo",),
              _ComfyUIHunyuanVideoAdapter, "1.0", PUBLISHED_COEFFICIENTS, _PAPER),
]


def find_model(transformer: torch.nn.Module) -> ModelSpec:
    """The spec serving ``transformer``'s class (by module and name, the class or one it derives from)."""
    spec = next((s for s in MODELS if s.serves_instance(transformer)), None)
    if spec is None:
        served = ", ".join(dict.fromkeys(c.split(":")[1] for s in MODELS for c in s.classes))
        raise TypeError(f"TeaCache does not know the block layout of {type(transformer).__name__} (module "
                        f"{type(transformer).__module__}); it serves {served}")
    return spec


def register_model(spec: ModelSpec) -> ModelSpec:
    """Serve one more model (a spec of the same family: an adapter for its block layout); it is matched first."""
    MODELS.insert(0, spec)
    return spec


#: The settings the fidelity benchmark recommends where no coefficients are published (docs/fidelity.md), for
#: 1.5's architecture (its second trained model) and HunyuanVideo's (image-to-video; its first)
RECOMMENDED = {"1.5": "Recommended there (no coefficients needed): --teacache-indicator residual-rate "
                      "--teacache-skip call --teacache-rule fitted --rel-l1-thresh 0.2 (docs/fidelity.md)",
               "1.0": "Recommended there (no coefficients needed): --teacache-indicator transformation-rate "
                      "--teacache-skip call --teacache-rule fitted --rel-l1-thresh 0.05 --teacache-warmup-steps 4 "
                      "(docs/fidelity.md)"}


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    """Each distinct warning once per process."""
    logger.warning(message)


def _all_reduce_sum(group) -> Callable[[torch.Tensor], torch.Tensor]:
    def reduce_sum(t: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(t, group=group)
        return t
    return reduce_sum


def _sequence_parallel_reduce_sum():
    """The all-reduce over the sequence-parallel group in use, if any with more than one rank: HunyuanVideo-1.5's
    own (``hyvideo.commons.parallel_states``, set up by its ``generate.py``), or xfuser's."""
    states = sys.modules.get("hyvideo.commons.parallel_states")
    dims = getattr(states, "__parallel_dims", None)  # that module's global, once initialize_parallel_state() ran
    if dims is not None and dims.sp_enabled:
        return _all_reduce_sum(dims.sp_group)
    xdist = sys.modules.get("xfuser.core.distributed")
    if xdist is None:
        return None
    try:
        if not xdist.model_parallel_is_initialized() or xdist.get_sequence_parallel_world_size() <= 1:
            return None
    except Exception:  # xfuser present but not initialised
        return None
    return xdist.get_sp_group().all_reduce


def _reducer(process_group) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    if process_group == "auto":
        return _sequence_parallel_reduce_sum()
    if process_group is None:
        return None
    return process_group.all_reduce if hasattr(process_group, "all_reduce") else _all_reduce_sum(process_group)


def enable_teacache(transformer: torch.nn.Module, rel_l1_thresh: float = 0.15, *, num_steps: Optional[int] = None,
                    process_group: Any = "auto", **options) -> TeaCache:
    """Attach TeaCache to ``transformer`` (a class in ``MODELS``: Tencent's HunyuanVideo, -I2V and -1.5
    transformers, diffusers' HunyuanVideo transformers) and return its handle.

    ``options`` are ``TeaCacheConfig``'s fields (``rule``, ``indicator``, ``warmup_steps``, ...); the defaults
    are the published rule. ``process_group``: ``"auto"`` (HunyuanVideo-1.5's or xfuser's sequence-parallel group
    when one is active), ``None`` (no reduction), a ``torch.distributed`` process group, or any object with an
    ``all_reduce(tensor) -> tensor`` method. Call ``reset(num_steps)`` before each generation (or pass
    ``num_steps`` here for the first one).
    """
    if getattr(transformer, "_teacache", None) is not None:
        raise ValueError("TeaCache is already enabled on this transformer; call .disable() on its handle first")
    config = TeaCacheConfig(rel_l1_thresh, **options)
    spec = find_model(transformer)
    adapter = spec.adapter(transformer)
    condition = adapter.image_condition
    if config.first_frame == "exclude" and condition != "token_replace":
        raise ValueError(f"first_frame='exclude' is for token_replace image-to-video (where the first frame is the "
                         f"given image); {type(transformer).__name__} has image condition {condition}")
    if config.coefficients == PUBLISHED_COEFFICIENTS and config.schedule is None and config.fixed_steps is None \
            and config.enabled and INDICATORS_BY_NAME[config.indicator].published_scale:
        recommended = RECOMMENDED.get(spec.version, RECOMMENDED["1.0"])
        if spec.coefficients is None:
            _warn_once(f"TeaCache: no coefficients are published for HunyuanVideo {spec.version} ({spec.name}); "
                       f"using HunyuanVideo 1.0's text-to-video ones. {recommended}, or calibrate: "
                       "--teacache-calibrate profile.json, then --teacache-profile profile.json")
        elif condition:
            _warn_once(f"TeaCache: no coefficients are published for image-to-video ({condition}); using the "
                       f"text-to-video ones. {recommended}, or calibrate on your own images: --teacache-calibrate "
                       "profile.json, then --teacache-profile profile.json")
    cache = TeaCache(transformer, spec, config, _reducer(process_group), adapter)
    transformer._teacache = cache
    if num_steps is not None:
        cache.reset(num_steps)
    return cache


enable_teacache.__signature__ = inspect.Signature([
    inspect.Parameter("transformer", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=torch.nn.Module),
    *[inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD if f.name == "rel_l1_thresh" else
                        inspect.Parameter.KEYWORD_ONLY, default=f.default) for f in dataclasses.fields(TeaCacheConfig)],
    inspect.Parameter("num_steps", inspect.Parameter.KEYWORD_ONLY, default=None),
    inspect.Parameter("process_group", inspect.Parameter.KEYWORD_ONLY, default="auto"),
], return_annotation=TeaCache)


# =========================================================================== #
# 3. Entry points: calibration profiles, the checkouts' CLI, diffusers' CLI    #
# =========================================================================== #

PROFILE_FORMAT = "teacache-profile/1"


def model_identity(transformer: torch.nn.Module) -> dict:
    """What a profile is tied to: the architecture (class, block count, parameter count, image conditioning)."""
    spec = find_model(transformer)
    adapter = spec.adapter(transformer)
    identity = {"class": type(transformer).__name__, "num_blocks": len(adapter.blocks),
                "num_parameters": sum(p.numel() for p in transformer.parameters())}
    if adapter.image_condition:  # same weights' shapes as text-to-video for token_replace
        identity["image_condition"] = adapter.image_condition
    return identity


def make_profile(traces: Sequence[dict], *, transformer: torch.nn.Module, setting: dict, degree: int = 4,
                 first_frame: str = "include", budgets: Optional[Sequence[int]] = None,
                 indicator: str = INDICATORS[0], skip: str = SKIPS[0]) -> dict:
    """Fit the rescale polynomial on traced uncached runs (``stats()`` of a ``trace=True`` cache, one per prompt).

    Pairs each call's indicator with the relative L1 change of the block stack's residual at that call.
    ``indicator``, ``first_frame``, ``skip``: the indicator the traces were taken with (``TeaCacheConfig``'s; with
    ``skip="call"`` the residual is the whole call's). Its traces keep
    the signals' pairwise distances where the indicator has them (``replay(pairwise=)``).
    Where the traces hold their residual subsamples (in the process that ran them), the profile also holds the
    searched schedules for ``budgets`` computed steps (default: every budget from 2 to the step count), per rule
    (``searched_schedules``; ``profile_schedule`` picks one).
    """
    runs = [b for t in traces for b in t.get("branches", [t])]
    pairs = [(x, y) for r in runs for x, y in zip(r["rel_l1"], r["residual_rel_l1"]) if x is not None and y is not None]
    if not pairs:
        raise ValueError("no traced steps to calibrate on: run uncached generations with trace=True first")
    coefficients = fit_coefficients([x for x, _ in pairs], [y for _, y in pairs], degree)
    num_steps = {t["num_steps"] for t in traces}
    if len(num_steps) != 1:
        raise ValueError(f"traces have different step counts {sorted(num_steps)}")
    num_steps = num_steps.pop()
    return {"format": PROFILE_FORMAT, "model": model_identity(transformer), "num_steps": num_steps,
            **searched_schedules(runs, num_steps, budgets),
            "setting": setting, "indicator": indicator, "skip": skip, "first_frame": first_frame,
            "coefficients": list(coefficients), "degree": degree,
            "traces": [{"rel_l1": r["rel_l1"], "residual_rel_l1": r["residual_rel_l1"],
                        **({"pairwise": r["pairwise"]} if r.get("pairwise") else {}),
                        **({"steps": r["steps"], "num_steps": num_steps}
                           if r.get("steps") not in (None, list(range(len(r["rel_l1"])))) else {})}
                       for r in runs]}


def searched_schedules(runs: Sequence[dict], num_steps: int, budgets: Optional[Sequence[int]] = None,
                       rules: Sequence[str] = RULES) -> dict:
    """The profile's searched schedules: ``{"schedules": {rule: {str(budget): steps}}, "schedule_search": {...}}``
    (empty where no run holds its residual subsamples). Each rule's ``span_costs`` table is averaged over the runs
    (a guidance branch or a FramePack section is a run; with several calls per step, a step's first call stands for
    it), then ``search_schedule`` runs once for all ``budgets``. ``schedule_search`` says how, on how many runs, and
    the cost each schedule reaches (the averaged table's)."""
    usable = []
    for r in runs:
        samples = r.get("residual_samples")
        if not isinstance(samples, ResidualSamples):  # not traced, or read back from JSON
            continue
        first = {}
        for step, t, x in zip(samples.steps, samples.timesteps, samples.tensors):
            first.setdefault(step, (t, x))
        if sorted(first) == list(range(num_steps)):
            usable.append([first[k] for k in range(num_steps)])
    if not usable:
        return {}
    budgets = sorted(set(range(min(2, num_steps), num_steps + 1) if budgets is None else budgets))
    schedules, costs = {}, {}
    for rule in rules:
        table = np.mean([span_costs([x for _, x in run], [t for t, _ in run], rule) for run in usable], axis=0)
        found = _search_all(table, budgets)
        schedules[rule] = {str(k): steps for k, (steps, _) in found.items()}
        costs[rule] = {str(k): cost for k, (_, cost) in found.items()}
    return {"schedules": schedules, "schedule_search": {
        "method": "dynamic programming over the skipped spans' error (span_costs, averaged over the runs); "
                  "first and last step always computed", "runs": len(usable),
        "sample_elements": int(usable[0][0][1].numel()), "costs": costs}}


def profile_schedule(profile: dict, budget: int, rule: str = "reuse") -> Tuple[int, ...]:
    """The steps a profile's searched schedule computes for ``budget`` computed steps under ``rule``
    (``fixed_steps=``)."""
    schedules = profile.get("schedules")
    if not schedules:
        raise ValueError("this profile holds no searched schedules (made before they existed, or from traces read "
                         "back from JSON): calibrate again with --teacache-calibrate")
    if rule not in schedules:
        raise ValueError(f"this profile holds no searched schedule for rule {rule!r} (it has {sorted(schedules)})")
    if str(budget) not in schedules[rule]:
        raise ValueError(f"this profile holds no searched schedule of {budget} computed steps (it has "
                         f"{sorted(map(int, schedules[rule]))})")
    return tuple(schedules[rule][str(budget)])


def load_profile(path, *, transformer: Optional[torch.nn.Module] = None, num_steps: Optional[int] = None,
                 setting: Optional[dict] = None, first_frame: Optional[str] = None,
                 indicator: Optional[str] = None, skip: Optional[str] = None) -> dict:
    """Read a profile; refuse one made for another model, step count or indicator (``indicator``, ``skip``,
    ``first_frame``), warn when the setting differs."""
    profile = json.loads(Path(path).read_text())
    if profile.get("format") != PROFILE_FORMAT:
        raise ValueError(f"{path}: not a TeaCache profile (format {profile.get('format')!r}, "
                         f"expected {PROFILE_FORMAT!r})")
    if transformer is not None and profile["model"] != model_identity(transformer):
        raise ValueError(f"{path}: profile made for model {profile['model']}, this model is "
                         f"{model_identity(transformer)}; calibrate this model with --teacache-calibrate")
    if num_steps is not None and profile["num_steps"] != num_steps:
        raise ValueError(f"{path}: profile made for {profile['num_steps']} steps, this run has {num_steps}; "
                         "calibrate with the same number of steps")
    made = profile.get("indicator", INDICATORS[0])  # profiles made before the other indicators: the published one
    if indicator is not None and made != indicator:
        raise ValueError(f"{path}: profile traced with --teacache-indicator {made}, this run uses {indicator}; "
                         "its coefficients and traces are of another indicator")
    made = profile.get("skip", SKIPS[0])
    if skip is not None and made != skip:
        raise ValueError(f"{path}: profile traced with --teacache-skip {made}, this run uses {skip}; its residuals "
                         "and traces are of another part of the model")
    made = profile.get("first_frame", "include")
    if first_frame is not None and made != first_frame:
        raise ValueError(f"{path}: profile traced with --teacache-first-frame {made}, this run uses {first_frame}; "
                         "its coefficients and traces are of another indicator")
    for key, value in (setting or {}).items():
        made = profile["setting"].get(key)
        if made is not None and json.loads(json.dumps(made)) != json.loads(json.dumps(value)):
            logger.warning(f"TeaCache profile {path} was calibrated with {key}={made}, used here with {key}={value}")
    return profile


# --------------------------------------------------------------------------- #
# CLI: upstream's argument groups + ours                                       #
# --------------------------------------------------------------------------- #


def _spelled(group, spelling: str):
    """``group.add_argument`` with the flags spelled as the checkout spells its own: ``-`` (``--rel-l1-thresh``,
    HunyuanVideo's hyvideo/config.py) or ``_`` (``--rel_l1_thresh``, HunyuanVideo-1.5's generate.py; the dashed
    spelling is accepted there too)."""
    def add_argument(name, **kwargs):
        names = (name,) if spelling == "-" else ("--" + name[2:].replace("-", "_"), name)
        return group.add_argument(*names, **kwargs)
    return add_argument


def add_teacache_args(parser: argparse.ArgumentParser, spelling: str = "-") -> argparse.ArgumentParser:
    """The TeaCache flags: one per ``TeaCacheConfig`` field that has one, then the run's own (profiles, prompts)."""
    group = parser.add_argument_group(title="TeaCache args")
    add_argument = _spelled(group, spelling)
    for dest, f in TeaCacheConfig.flags().items():
        add_argument(f.metadata["flag"], dest=dest, default=f.default, **f.metadata["argparse"])
    add_argument("--teacache-profile", metavar="JSON", default=None,
                 help="Use the coefficients of a calibration profile (made by --teacache-calibrate).")
    add_argument("--teacache-speedup", type=_speedup, default=None, metavar="S",
                 help="Pick the threshold that reaches about S-times fewer computed steps, by replaying the "
                      "rule on the profile's traces (needs --teacache-profile; overrides --rel-l1-thresh).")
    add_argument("--teacache-budget", type=_number(int, 1, "an integer >= 1"), default=None, metavar="K",
                 help="Compute the K steps of the profile's searched schedule for --teacache-rule (the set of K "
                      "steps with the least error on its calibration runs; needs --teacache-profile; instead of a "
                      "threshold). See docs/calibration.md.")
    add_argument("--teacache-calibrate", metavar="JSON", default=None,
                 help="Run uncached, record the indicator and the residual change per step, fit the rescale "
                      "polynomial and write a profile here (videos are saved as usual).")
    add_argument("--teacache-prompts", metavar="FILE", default=None,
                 help="One prompt per line, each generated in turn (e.g. to calibrate on several prompts).")
    return parser


def _check_teacache_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.teacache_speedup is not None and not args.teacache_profile:
        parser.error("--teacache-speedup needs --teacache-profile (a calibration trace to replay)")
    if args.teacache_calibrate and (args.teacache_profile or args.teacache_speedup or args.teacache_schedule):
        parser.error("--teacache-calibrate runs uncached; it cannot be combined with --teacache-profile/-speedup/"
                     "-schedule")
    if args.teacache_schedule and args.teacache_speedup is not None:
        parser.error("--teacache-schedule fixes the computed steps; it cannot be combined with --teacache-speedup")
    if args.teacache_budget is not None and not args.teacache_profile:
        parser.error("--teacache-budget needs --teacache-profile (whose searched schedules it picks from)")
    fixed = [name for name, given in (("--teacache-schedule", args.teacache_schedule),
                                      ("--teacache-steps", args.teacache_steps),
                                      ("--teacache-budget", args.teacache_budget is not None)) if given]
    if len(fixed) > 1:
        parser.error(f"{' and '.join(fixed)} each fix the computed steps; give one")
    if fixed and (args.teacache_calibrate or args.teacache_speedup is not None):
        parser.error(f"{fixed[0]} fixes the computed steps; it cannot be combined with --teacache-calibrate or "
                     "--teacache-speedup")
    if args.teacache_schedule and args.teacache_schedule[2] < 1:
        parser.error("--teacache-schedule: INTERVAL must be >= 1")
    if args.teacache_skip == "call" and not INDICATORS_BY_NAME[args.teacache_indicator].whole_call:
        able = " or ".join(i.name for i in INDICATORS_BY_NAME.values() if i.whole_call)
        parser.error(f"--teacache-skip call decides before the transformer runs: it needs --teacache-indicator "
                     f"{able} (--teacache-indicator {args.teacache_indicator} is computed inside the model)")
    if args.teacache_steps:
        try:
            TeaCacheConfig(fixed_steps=args.teacache_steps)
        except ValueError as e:
            parser.error(f"--teacache-steps: {e}")
    for path in filter(None, (args.teacache_profile, args.teacache_prompts)):
        if not Path(path).is_file():
            parser.error(f"no such file: {path}")


def _prompts(args: argparse.Namespace) -> List[str]:
    if args.teacache_prompts:
        prompts = [line.strip() for line in Path(args.teacache_prompts).read_text().splitlines() if line.strip()]
        if not prompts:
            raise SystemExit(f"error: {args.teacache_prompts} holds no prompt")
        return prompts
    if args.prompt is None:
        raise SystemExit("error: give --prompt or --teacache-prompts")
    return [args.prompt]


def cache_from_args(args: argparse.Namespace, transformer: torch.nn.Module, num_steps: int,
                    setting: dict) -> TeaCache:
    """``enable_teacache`` as the TeaCache flags ask; the chosen values (and the model) end up in every report."""
    notes: dict = {"model": model_identity(transformer)}
    config = TeaCacheConfig.from_args(args)
    if args.teacache_calibrate:
        config = dataclasses.replace(config, rel_l1_thresh=0.0, trace=True)
        notes["calibrating"] = args.teacache_calibrate
    if args.teacache_profile:
        profile = load_profile(args.teacache_profile, transformer=transformer, num_steps=num_steps, setting=setting,
                               first_frame=config.first_frame, indicator=config.indicator, skip=config.skip)
        config = dataclasses.replace(config, coefficients=profile["coefficients"])
        notes["profile"] = str(args.teacache_profile)
        if args.teacache_speedup is not None:
            thresh, predicted = threshold_for_speedup(profile["traces"], args.teacache_speedup, config)
            config = dataclasses.replace(config, rel_l1_thresh=thresh)
            notes.update(target_speedup=args.teacache_speedup, predicted_computed_steps=predicted)
            logger.info(f"TeaCache: target {args.teacache_speedup}x -> rel_l1_thresh {thresh:.4g} "
                        f"({predicted:.1f}/{num_steps} steps computed on the profile's traces)")
        if args.teacache_budget is not None:
            try:
                steps = profile_schedule(profile, args.teacache_budget, config.rule)
            except ValueError as e:
                raise SystemExit(f"error: {args.teacache_profile}: {e}") from None
            config = dataclasses.replace(config, fixed_steps=steps)
            notes.update(budget=args.teacache_budget)
            logger.info(f"TeaCache: the profile's searched schedule of {len(steps)} steps for rule {config.rule}: "
                        f"{list(steps)}")
    if config.fixed_steps is not None and config.fixed_steps[-1] != num_steps - 1:
        raise SystemExit(f"error: --teacache-steps must end at the last step, {num_steps - 1}, of this "
                         f"{num_steps}-step run; got {list(config.fixed_steps)}")
    cache = enable_teacache(transformer, **dataclasses.asdict(config))
    cache.notes.update(notes)
    return cache


def finish_calibration(args: argparse.Namespace, transformer: torch.nn.Module, traces: List[dict],
                       setting: dict) -> None:
    """Write the profile of a --teacache-calibrate run (main rank only)."""
    profile = make_profile(traces, transformer=transformer, setting=setting, first_frame=args.teacache_first_frame,
                           indicator=args.teacache_indicator, skip=args.teacache_skip)
    if _is_main_rank():
        Path(args.teacache_calibrate).parent.mkdir(parents=True, exist_ok=True)
        Path(args.teacache_calibrate).write_text(json.dumps(profile, indent=1))
        logger.info(f"TeaCache profile written to {args.teacache_calibrate}: coefficients "
                    f"{[float(f'{c:.6g}') for c in profile['coefficients']]} from {len(profile['traces'])} run(s)")


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's default in ``--help`` (where it has one)."""

    def _format_action(self, action):
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings \
                and "%(default)" not in (action.help or ""):
            action = copy.copy(action)
            action.help = f"{action.help or ''} (default: %(default)s)".lstrip()
        return super()._format_action(action)


class _ArgumentParser(argparse.ArgumentParser):
    """One-line errors (not upstream's page-long usage) and the defaults in ``--help``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"formatter_class": _HelpFormatter, **kwargs})

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _check_output_dir(parser: argparse.ArgumentParser, path, flag: str) -> Path:
    """``path`` exists as a writable folder (made here), before any model is loaded."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"{flag} {path}: cannot create it ({e.strerror or e})")
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        parser.error(f"{flag} {path}: not a writable folder")
    return path


def _check_sampling_args(parser: argparse.ArgumentParser, args: argparse.Namespace, *, size_multiple: int = 1,
                         length_rule: bool = True) -> None:
    """What can be refused before loading a model: steps, frames, size, where the videos go."""
    if args.infer_steps < 1:
        parser.error(f"--infer-steps must be >= 1, got {args.infer_steps}")
    if args.video_length < 1 or (length_rule and (args.video_length - 1) % 4):
        parser.error(f"--video-length must be 4n+1 frames (1, 5, ..., 129), got {args.video_length}")
    size = list(args.video_size)
    if len(size) not in (1, 2) or any(v < 1 or v % size_multiple for v in size):
        parser.error(f"--video-size takes HEIGHT WIDTH (or one size), positive multiples of {size_multiple}; "
                     f"got {' '.join(map(str, size))}")
    if getattr(args, "num_videos", 1) < 1:
        parser.error(f"--num-videos must be >= 1, got {args.num_videos}")


def _is_main_rank() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _unique_path(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists() or candidate.with_suffix(".json").exists():
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    return candidate


def save_video(sample: torch.Tensor, path: Path, fps: int = 24) -> None:
    """One ``(C, T, H, W)`` video in [0, 1] to mp4; the same frames upstream's ``save_videos_grid`` writes."""
    import imageio

    frames = (sample.clamp(0, 1) * 255).permute(1, 2, 3, 0).cpu().numpy().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(str(path), list(frames), fps=fps)


def _video_name(seed, prompt: str) -> str:
    """``20261205-204012_seed42_A_cat_walks_on_the_grass.mp4``: no spaces, colons or slashes."""
    words = "".join(c if c.isalnum() or c in "-." else "_" for c in prompt[:100]).strip("_.")
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}_seed{seed}_{words or 'video'}.mp4"


@dataclass
class Video:
    """One video a generation made, and what its report adds to the cache's."""

    sample: torch.Tensor  # (C, T, H, W) in [0, 1]
    path: Path  # where it goes (a free name is taken if it exists)
    report: dict = field(default_factory=dict)
    fps: int = 24


def run_generations(cache: TeaCache, num_steps: int, generations: Sequence[Tuple[str, Callable[[], List[Video]]]],
                    *, sections: bool = False, report: Optional[dict] = None) -> List[dict]:
    """The loop every entry shares: for each ``(label, generate)``, reset the cache, run, log the summary, write
    each video beside its JSON report (main rank only, never over an existing file). Returns the traces, for
    calibration (a FramePack section is a run of its own)."""
    traces: List[dict] = []
    for n, (label, generate) in enumerate(generations, 1):
        cache.reset(num_steps, sections=sections)
        start = time.perf_counter()
        videos = generate()
        done = {**cache.report(), "generation_time_s": time.perf_counter() - start, **(report or {})}
        logger.info(f"{label} {n}/{len(generations)}: {cache.summary()}")
        traces.extend(done.get("sections", [cache.stats()]))
        for video in videos if _is_main_rank() else ():
            path = _unique_path(video.path)
            save_video(video.sample, path, fps=video.fps)
            path.with_suffix(".json").write_text(json.dumps({**done, **video.report, "video": path.name}, indent=2,
                                                            default=str))
            logger.info(f"Sample save to: {path} (report: {path.with_suffix('.json').name})")
    return traces


# -- Tencent's repositories: HunyuanVideo, HunyuanVideo-I2V (hyvideo.config) ------------------------------------ #

@dataclass(frozen=True)
class Checkout:
    """One Tencent repository's CLI that this file stands in for: its argument groups (``hyvideo.config``'s
    ``add_*_args``, in upstream's order) and the arguments its script passes to ``predict`` beyond
    text-to-video's. Adding a repository of the same layout is one entry in ``CHECKOUTS``."""

    repo: str
    script: str
    groups: tuple
    predict_args: tuple = ()
    setting_args: tuple = ()  # recorded in calibration profiles (a profile used elsewhere warns)

    def matches(self, hy_config) -> bool:
        return all(hasattr(hy_config, g) for g in self.groups)


_T2V_GROUPS = ("add_network_args", "add_extra_models_args", "add_denoise_schedule_args", "add_inference_args",
               "add_parallel_args")
CHECKOUTS = (  # the most specific first
    Checkout("Tencent/HunyuanVideo-I2V", "sample_image2video.py",
             ("add_network_args", "add_extra_models_args", "add_denoise_schedule_args", "add_i2v_args",
              "add_lora_args", "add_inference_args", "add_parallel_args"),
             predict_args=("i2v_mode", "i2v_resolution", "i2v_image_path", "i2v_condition_type", "i2v_stability",
                           "ulysses_degree", "ring_degree"),
             setting_args=("i2v_mode", "i2v_resolution", "i2v_condition_type", "i2v_stability")),
    Checkout("Tencent/HunyuanVideo", "sample_video.py", _T2V_GROUPS),
)


def recognise_checkout(hy_config) -> Checkout:
    """The repository whose ``hyvideo.config`` this is (I2V's has ``add_i2v_args``)."""
    found = next((c for c in CHECKOUTS if c.matches(hy_config)), None)
    if found is None:
        raise SystemExit(f"teacache_sample_video.py: error: {hy_config.__file__} is not the config of a known "
                         f"HunyuanVideo repository ({', '.join(c.repo for c in CHECKOUTS)})")
    return found


def parse_args(argv: Optional[Sequence[str]] = None, checkout: Optional[Checkout] = None) -> argparse.Namespace:
    from hyvideo import config as hy_config

    checkout = checkout or recognise_checkout(hy_config)
    parser = _ArgumentParser(description=f"{checkout.repo} inference ({checkout.script}) with TeaCache")
    for group in checkout.groups:
        parser = getattr(hy_config, group)(parser)
    parser = add_teacache_args(parser)
    args = parser.parse_args(argv)
    _check_teacache_args(parser, args)
    _check_sampling_args(parser, args)
    if args.teacache_first_frame == "exclude" and not (
            getattr(args, "i2v_mode", False) and getattr(args, "i2v_condition_type", None) == "token_replace"):
        parser.error("--teacache-first-frame exclude is for image-to-video with --i2v-mode --i2v-condition-type "
                     "token_replace (where the first frame is the given image)")
    return hy_config.sanity_check_args(args)


def tencent_main(argv: Sequence[str], checkout: Checkout) -> int:
    """HunyuanVideo's ``sample_video.py`` (or -I2V's ``sample_image2video.py``) with a cache on its transformer."""
    args = parse_args(argv, checkout)
    prompts = _prompts(args)
    fail = _ArgumentParser(prog="teacache_sample_video.py")  # one-line errors, before anything loads
    if not Path(args.model_base).exists():
        fail.error(f"--model-base {args.model_base}: no such folder")
    save_path = Path(args.save_path if args.save_path_suffix == "" else f"{args.save_path}_{args.save_path_suffix}")
    if _is_main_rank():
        _check_output_dir(fail, save_path, "--save-path")
    from hyvideo.inference import HunyuanVideoSampler

    logger.info(args)
    sampler = HunyuanVideoSampler.from_pretrained(Path(args.model_base), args=args)
    args = sampler.args
    transformer = sampler.pipeline.transformer
    setting = {"video_size": list(args.video_size), "video_length": args.video_length, "flow_shift": args.flow_shift,
               "cfg_scale": args.cfg_scale, "embedded_cfg_scale": args.embedded_cfg_scale,
               **{k: getattr(args, k) for k in checkout.setting_args}}
    cache = cache_from_args(args, transformer, args.infer_steps, setting)
    upstream_args = {k: v for k, v in vars(args).items() if not (k == "rel_l1_thresh" or k.startswith("teacache_"))}

    def generate(prompt: str) -> List[Video]:
        outputs = sampler.predict(
            prompt=prompt, height=args.video_size[0], width=args.video_size[1], video_length=args.video_length,
            seed=args.seed, negative_prompt=args.neg_prompt, infer_steps=args.infer_steps,
            guidance_scale=args.cfg_scale, num_videos_per_prompt=args.num_videos, flow_shift=args.flow_shift,
            batch_size=args.batch_size, embedded_guidance_scale=args.embedded_cfg_scale,
            **{k: getattr(args, k) for k in checkout.predict_args})
        # upstream batches the videos of one prompt: they share one denoising run and so one set of decisions
        return [Video(sample, save_path / _video_name(seed, prompt), {"index": i, "seed": seed, "prompt": prompt})
                for i, (sample, seed) in enumerate(zip(outputs["samples"], outputs["seeds"]))]

    traces = run_generations(cache, args.infer_steps, [("prompt", functools.partial(generate, p)) for p in prompts],
                             report={"upstream_args": upstream_args})
    if args.teacache_calibrate:
        finish_calibration(args, transformer, traces, setting)
    return 0


# -- Tencent-Hunyuan/HunyuanVideo-1.5 (its own generate.py) ---------------------------------------------------- #

class _Replacing:
    """``target`` with some attributes replaced; the others are read through."""

    def __init__(self, target, **replaced):
        self._target = target
        vars(self).update(replaced)

    def __getattr__(self, name):
        return getattr(self._target, name)


def add_teacache_sr_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group(title="TeaCache args, super-resolution stage (generate.py --sr)")
    add_argument = _spelled(group, "_")
    add_argument("--teacache-sr-rel-l1-thresh", type=_threshold, default=0.0, metavar="T",
                 help="Threshold of the super-resolution stage's own cache (a second transformer, 6-8 distilled "
                      "steps; the rule options above apply to it too). 0: that stage computes every step (its "
                      "share of the work is small and its few steps leave little to skip; see docs/checkouts.md); "
                      "its report is written all the same.")
    add_argument("--teacache-sr-profile", metavar="JSON", default=None,
                 help="Coefficients for the super-resolution stage: a profile that --teacache_calibrate wrote for "
                      "it (beside the base stage's, with the suffix _sr).")
    return parser


def _sr_profile_path(path: str) -> str:
    return str(Path(path).with_name(f"{Path(path).stem}_sr{Path(path).suffix}"))


class Generate15:
    """Tencent-Hunyuan/HunyuanVideo-1.5: the checkout's own ``generate.py`` runs (its flags, loading, optimisations,
    offloading, sequence parallelism, saving on rank 0); the TeaCache flags are taken off the command line first,
    and each stage's transformer (base, and super-resolution with ``--sr``) gets its own cache once generate.py has
    optimised it. A report ``<video>_teacache.json`` is written beside every video it saves. What it replaces in
    the freshly loaded ``generate`` module (and ``sys.argv``) is put back when it returns or fails."""

    def __init__(self, argv: Sequence[str], root: Path):
        self.root = root
        self.parser = add_teacache_sr_args(add_teacache_args(_ArgumentParser(
            prog="teacache_sample_video.py", add_help=False, allow_abbrev=False,
            usage="%(prog)s [generate.py's flags] [TeaCache flags]"), spelling="_"))
        self.ours, self.upstream_argv = self.parser.parse_known_args(argv)
        self.asked_help = any(a in ("-h", "--help") for a in self.upstream_argv)
        self.args: Optional[argparse.Namespace] = None  # generate.py's, once it parsed them
        self.setting: dict = {}  # what profiles record
        self.stages: Dict[str, Tuple[argparse.Namespace, TeaCache]] = {}  # "base" / "sr": its TeaCache args, cache
        ours = self.ours
        self.stage_args = {"base": ours, "sr": argparse.Namespace(**{
            **vars(ours), "rel_l1_thresh": ours.teacache_sr_rel_l1_thresh, "teacache_profile": ours.teacache_sr_profile,
            "teacache_speedup": None, "teacache_schedule": None, "teacache_steps": None, "teacache_budget": None,
            "teacache_calibrate": ours.teacache_calibrate and _sr_profile_path(ours.teacache_calibrate)})}

    def check(self) -> None:
        ours, error = self.ours, self.parser.error
        _check_teacache_args(self.parser, ours)
        if ours.teacache_prompts:
            error("--teacache_prompts: generate.py makes one video of one --prompt per run")
        if ours.teacache_first_frame == "exclude":
            error("--teacache_first_frame exclude is for HunyuanVideo-I2V's token_replace; HunyuanVideo-1.5 gives the "
                  "image by concatenation")
        if ours.teacache_sr_profile and not Path(ours.teacache_sr_profile).is_file():
            error(f"no such file: {ours.teacache_sr_profile}")

    def run(self) -> int:
        if not self.asked_help:
            self.check()
        spec = importlib.util.spec_from_file_location("generate", self.root / "generate.py")
        generate = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(generate)  # what `python generate.py` does before its main(): parallel state, device
        missing = [name for name in ("main", "generate_video", "save_video", "HunyuanVideo_1_5_Pipeline")
                   if not hasattr(generate, name)]
        if missing:
            self.parser.exit(2, f"teacache_sample_video.py: error: {self.root / 'generate.py'} has no "
                                f"{', '.join(missing)}: not the Tencent-Hunyuan/HunyuanVideo-1.5 generate.py this file "
                                "runs\n")
        self.pipeline_cls, self.save, self.generate_video_upstream = (
            generate.HunyuanVideo_1_5_Pipeline, generate.save_video, generate.generate_video)
        replaced = [(generate, "HunyuanVideo_1_5_Pipeline",
                     _Replacing(self.pipeline_cls, create_pipeline=self.create_pipeline)),
                    (generate, "save_video", self.save_video), (generate, "generate_video", self.generate_video),
                    (sys, "argv", [sys.argv[0] if sys.argv else "teacache_sample_video.py", *self.upstream_argv])]
        before = [(owner, name, getattr(owner, name)) for owner, name, _ in replaced]
        try:
            for owner, name, value in replaced:
                setattr(owner, name, value)
            generate.main()  # parses generate.py's own flags (one-line errors come from there) and runs
        except SystemExit as exit:
            if self.asked_help and not exit.code:  # generate.py printed its flags; ours follow
                self.parser.print_help()
                return 0
            raise
        finally:
            for owner, name, value in before:
                setattr(owner, name, value)
        return 0

    def attach_after_optimisation(self, stage: str, pipe) -> None:
        """The cache goes on after ``apply_infer_optimization`` (torch.compile, FP8 GEMM, group offloading), so that
        it wraps the blocks as they will run."""
        optimise = pipe.apply_infer_optimization

        @functools.wraps(optimise)
        def apply_infer_optimization(*args, **kwargs):
            result = optimise(*args, **kwargs)
            # one generation per run; generate.py passes the base stage's steps and leaves the SR stage's default
            steps = (self.args.num_inference_steps if stage == "base" else None) or pipe.config.num_inference_steps
            cache = cache_from_args(self.stage_args[stage], pipe.transformer, steps, {**self.setting, "stage": stage})
            self.stages[stage] = (self.stage_args[stage], cache.reset(steps))
            return result

        pipe.apply_infer_optimization = apply_infer_optimization

    def create_pipeline(self, *args, **kwargs):
        pipe = self.pipeline_cls.create_pipeline(*args, **kwargs)
        self.setting["transformer_version"] = kwargs.get("transformer_version")
        self.attach_after_optimisation("base", pipe)
        if hasattr(pipe, "sr_pipeline"):
            self.attach_after_optimisation("sr", pipe.sr_pipeline)
        return pipe

    def save_video(self, video, path):  # generate.py saves on rank 0 only
        self.save(video, path)
        report_path = Path(path).with_name(f"{Path(path).stem}_teacache.json")
        report = {"video": Path(path).name, "stages": {stage: cache.report() for stage, (_, cache) in
                                                       self.stages.items()}, "generate_args": vars(self.args)}
        report_path.write_text(json.dumps(report, indent=2, default=str))
        logger.info(f"TeaCache report: {report_path}")

    def generate_video(self, args):
        error = self.parser.error  # one line, exit code 2
        if args.enable_cache:
            error("--enable_cache is generate.py's own step cache (a fixed schedule); it is not combined with "
                  "TeaCache: drop it (--teacache_schedule START END INTERVAL computes the same steps, or "
                  "--rel_l1_thresh 0 turns TeaCache off)")
        if args.output_path:
            base, ext = Path(args.output_path), Path(args.output_path).suffix
            for taken in (base, base.with_name(f"{base.stem}_teacache.json"),
                          *([base.with_name(f"{base.stem}_before_sr{ext}")] if args.save_pre_sr_video else [])):
                if taken.exists():
                    error(f"{taken} exists; give another --output_path (nothing is overwritten)")
            if _is_main_rank():
                _check_output_dir(self.parser, base.parent, "--output_path's folder")
        self.args = args
        self.setting.update({"resolution": args.resolution, "aspect_ratio": args.aspect_ratio,
                             "video_length": args.video_length, "task": "i2v" if args.image_path else "t2v"})
        self.generate_video_upstream(args)
        for stage, (options, cache) in self.stages.items():
            logger.info(f"{stage} stage: {cache.summary()}")
            if options.teacache_calibrate:
                finish_calibration(options, cache.transformer, [cache.stats()], {**self.setting, "stage": stage})


# -- diffusers' HunyuanVideo pipelines (no checkout needed) --------------------------------------------------- #

#: diffusers' HunyuanVideo pipelines the CLI runs: whether each takes an ``image``, and whether one call denoises
#: several sections in a row (FramePack), each a generation of its own for the cache.
DIFFUSERS_PIPELINES = {
    "HunyuanVideoPipeline": dict(image=False, sections=False),
    "HunyuanVideoImageToVideoPipeline": dict(image=True, sections=False),
    "HunyuanSkyreelsImageToVideoPipeline": dict(image=True, sections=False),
    "HunyuanVideoFramepackPipeline": dict(image=True, sections=True),
    # 1.5: guidance comes from the folder's guider (one transformer call per branch), not from call arguments
    "HunyuanVideo15Pipeline": dict(image=False, sections=False, guider=True),
    "HunyuanVideo15ImageToVideoPipeline": dict(image=True, sections=False, guider=True),
}
#: The diffusers releases this is tested with (the ``[diffusers]`` extra allows these).
DIFFUSERS_TESTED = "0.32 to 0.38"


def add_diffusers_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The same flag names as upstream's sample_video.py where they mean the same thing."""
    group = parser.add_argument_group(title="diffusers HunyuanVideo args")
    group.add_argument("--diffusers-model", required=True,
                       help="Local folder or hub id of a HunyuanVideo pipeline, e.g. "
                            "hunyuanvideo-community/HunyuanVideo; its class comes from its model_index.json: "
                            f"{', '.join(DIFFUSERS_PIPELINES)}.")
    group.add_argument("--pipeline", choices=list(DIFFUSERS_PIPELINES), default=None,
                       help="Load the model with this pipeline class instead of the one its model_index.json names.")
    group.add_argument("--image", type=str, default=None,
                       help="The first frame, for the image-to-video pipelines (a PIL-readable file).")
    group.add_argument("--prompt", type=str, default=None)
    group.add_argument("--neg-prompt", type=str, default=None, help="Negative prompt (used when --cfg-scale > 1).")
    group.add_argument("--video-size", type=int, nargs=2, default=(720, 1280), metavar=("HEIGHT", "WIDTH"))
    group.add_argument("--video-length", type=int, default=129, help="Number of frames (4n+1).")
    group.add_argument("--infer-steps", type=int, default=50)
    group.add_argument("--seed", type=int, default=None)
    group.add_argument("--num-videos", type=int, default=1, help="Videos per prompt (seeds seed, seed+1, ...).")
    group.add_argument("--embedded-cfg-scale", type=float, default=6.0, help="Distilled guidance (guidance_scale).")
    group.add_argument("--cfg-scale", type=float, default=1.0,
                       help="True classifier-free guidance (true_cfg_scale): > 1 with --neg-prompt calls the "
                            "transformer twice per step. 1.5's pipelines take guidance from the model folder's "
                            "guider; a value other than 1 replaces its guidance_scale.")
    group.add_argument("--flow-shift", type=float, default=None, help="Override the scheduler's shift.")
    group.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                       help="Transformer dtype (default: bf16 on GPU, fp32 on CPU).")
    group.add_argument("--use-cpu-offload", action="store_true", help="enable_model_cpu_offload()")
    group.add_argument("--sequential-cpu-offload", action="store_true", help="enable_sequential_cpu_offload()")
    group.add_argument("--vae-tiling", action="store_true")
    group.add_argument("--fps", type=int, default=24)
    group.add_argument("--save-path", type=str, default="./results")
    return parser


def _pipeline_class_name(args, parser) -> str:
    """The pipeline class: ``--pipeline``, else the one a local folder's model_index.json names (a hub id is
    resolved by diffusers at load time and checked then)."""
    if args.pipeline:
        return args.pipeline
    folder = Path(args.diffusers_model)
    if not folder.is_dir():
        if folder.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", args.diffusers_model):
            parser.error(f"--diffusers-model {args.diffusers_model}: neither a local pipeline folder nor a hub id "
                         "(owner/name)")
        return ""
    index = folder / "model_index.json"
    if not index.is_file():
        parser.error(f"--diffusers-model {folder}: no model_index.json there (not a diffusers pipeline folder)")
    name = json.loads(index.read_text()).get("_class_name", "")
    if name not in DIFFUSERS_PIPELINES:
        parser.error(f"{args.diffusers_model} is a {name or 'pipeline of unknown class'}; this CLI runs "
                     f"{', '.join(DIFFUSERS_PIPELINES)} (or pass --pipeline)")
    return name


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent that fails to import, or a module set to None in sys.modules
        return False


def diffusers_main(argv: Sequence[str]) -> int:
    parser = add_teacache_args(add_diffusers_args(_ArgumentParser(
        description="HunyuanVideo (diffusers) with TeaCache")))
    args = parser.parse_args(argv)
    if not _importable("diffusers"):
        parser.error("the diffusers CLI needs diffusers: pip install \"teacache-hunyuanvideo[diffusers]\" (tested "
                     f"with diffusers {DIFFUSERS_TESTED})")
    _check_teacache_args(parser, args)
    _check_sampling_args(parser, args, size_multiple=16, length_rule=False)
    prompts = _prompts(args)
    if args.image and not Path(args.image).is_file():
        parser.error(f"no such file: {args.image}")

    def check_image(name):
        if DIFFUSERS_PIPELINES[name]["image"] and not args.image:
            parser.error(f"{name} is image-to-video: give the first frame with --image PATH")
        if args.image and not DIFFUSERS_PIPELINES[name]["image"]:
            parser.error(f"--image: {name} is text-to-video and takes no image")

    name = _pipeline_class_name(args, parser)
    if name:
        check_image(name)  # before loading anything
    save_path = _check_output_dir(parser, args.save_path, "--save-path")
    import diffusers
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.precision or ("bf16" if device == "cuda" else "fp32")]
    pipeline_cls = getattr(diffusers, name) if name else DiffusionPipeline
    pipe = pipeline_cls.from_pretrained(args.diffusers_model, torch_dtype=dtype)
    name = type(pipe).__name__
    if name not in DIFFUSERS_PIPELINES:
        parser.error(f"{args.diffusers_model} loaded as {name}; this CLI runs {', '.join(DIFFUSERS_PIPELINES)}")
    check_image(name)  # a hub id is only known once loaded
    kind = DIFFUSERS_PIPELINES[name]
    if args.flow_shift is not None:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=args.flow_shift)
    if args.sequential_cpu_offload:
        pipe.enable_sequential_cpu_offload()
    elif args.use_cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    if args.vae_tiling:
        pipe.vae.enable_tiling()
    setting = {"video_size": list(args.video_size), "video_length": args.video_length,
               "flow_shift": pipe.scheduler.config.get("shift"), "cfg_scale": args.cfg_scale,
               "embedded_cfg_scale": args.embedded_cfg_scale, "pipeline": name}
    inputs = {}
    if kind["image"]:
        from diffusers.utils import load_image

        inputs["image"] = load_image(args.image)
    if kind.get("guider"):  # 1.5: the folder's guider; --cfg-scale other than 1 replaces its scale
        if args.cfg_scale != 1.0:
            pipe.guider = type(pipe.guider).from_config(pipe.guider.config, guidance_scale=args.cfg_scale)
        guidance = {} if args.neg_prompt is None else dict(negative_prompt=args.neg_prompt)
        setting["cfg_scale"] = pipe.guider.config.get("guidance_scale")
    else:
        guidance = dict(guidance_scale=args.embedded_cfg_scale)
        if args.cfg_scale != 1.0 or args.neg_prompt is not None:
            if "true_cfg_scale" not in inspect.signature(pipe.__call__).parameters:
                parser.error(f"--cfg-scale/--neg-prompt need diffusers >= 0.33 (true CFG); this is "
                             f"{diffusers.__version__}")
            guidance.update(true_cfg_scale=args.cfg_scale, negative_prompt=args.neg_prompt)
    if "height" in inspect.signature(pipe.__call__).parameters:
        inputs.update(height=args.video_size[0], width=args.video_size[1])
    else:
        logger.warning(f"{name} sizes the video from the image (its transformer's target_size); --video-size "
                       "is not used")
    cache = cache_from_args(args, pipe.transformer, args.infer_steps, setting)
    base_seed = args.seed if args.seed is not None else int(torch.randint(0, 1_000_000, ()).item())

    def generate(prompt: str, index: int) -> List[Video]:
        seed = base_seed + index
        frames = pipe(prompt=prompt, num_frames=args.video_length, num_inference_steps=args.infer_steps,
                      generator=torch.Generator("cpu").manual_seed(seed), output_type="pt", **inputs,
                      **guidance).frames[0]  # (T, C, H, W) in [0, 1]
        return [Video(frames.permute(1, 0, 2, 3), save_path / _video_name(seed, prompt),
                      {"index": index, "seed": seed, "prompt": prompt}, fps=args.fps)]

    runs = [("video", functools.partial(generate, p, i)) for p in prompts for i in range(args.num_videos)]
    traces = run_generations(cache, args.infer_steps, runs, sections=kind["sections"],  # one run per video
                             report={"pipeline": name, "diffusers_args": vars(args)})
    if args.teacache_calibrate:
        finish_calibration(args, pipe.transformer, traces, setting)
    return 0


def diffusers_cli() -> int:
    """Console entry of the installed package (``teacache-hunyuanvideo``): the diffusers CLI."""
    return diffusers_main(sys.argv[1:])


# -- dispatch --------------------------------------------------------------------------------------------------- #

def _standalone_help() -> None:
    """``--help`` outside a checkout: the TeaCache flags, and where the others come from."""
    parser = add_teacache_args(_ArgumentParser(
        prog="teacache_sample_video.py", usage="%(prog)s [sample_video.py's flags] [TeaCache flags]",
        description="HunyuanVideo inference with TeaCache. Copy this file next to sample_video.py in a Tencent "
                    "HunyuanVideo checkout (or next to sample_image2video.py in HunyuanVideo-I2V, or generate.py in "
                    "Tencent-Hunyuan/HunyuanVideo-1.5) and run it there with that script's flags (--help there "
                    "lists them all) plus the TeaCache flags below (in 1.5's spelling there: --rel_l1_thresh, ...).",
        epilog="No HunyuanVideo checkout here, so only the TeaCache flags are listed. Without a checkout, "
               "--diffusers-model runs diffusers' HunyuanVideoPipeline instead (see "
               "`teacache_sample_video.py --diffusers-model X --help`)."))
    parser.print_help()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Dispatch: diffusers' pipelines (``--diffusers-model``), HunyuanVideo-1.5 (a ``hyvideo`` without
    ``config.py``: its ``generate.py``), HunyuanVideo and -I2V (``hyvideo.config``: ``CHECKOUTS``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--diffusers-model" or a.startswith("--diffusers-model=") for a in argv):
        return diffusers_main(argv)
    found = importlib.util.find_spec("hyvideo")
    if found is None:
        if any(a in ("-h", "--help") for a in argv):
            _standalone_help()
            return 0
        _ArgumentParser(prog="teacache_sample_video.py").error(
            "no HunyuanVideo checkout here (`hyvideo` is not importable); copy this file next to sample_video.py in "
            "https://github.com/Tencent/HunyuanVideo (or sample_image2video.py in Tencent/HunyuanVideo-I2V, "
            "generate.py in Tencent-Hunyuan/HunyuanVideo-1.5) and run it from there (or pass --diffusers-model to use "
            "diffusers' HunyuanVideo pipelines)")
    package = Path(next(iter(found.submodule_search_locations)))
    if not (package / "config.py").is_file() and (package / "commons" / "parallel_states.py").is_file():
        return Generate15(argv, package.parent).run()
    from hyvideo import config as hy_config

    return tencent_main(argv, recognise_checkout(hy_config))


if __name__ == "__main__":
    sys.exit(main())
