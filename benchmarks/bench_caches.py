#!/usr/bin/env python3
"""Speed versus fidelity of step caches on diffusers' HunyuanVideo transformer, side by side.

Every method runs the same prompts and seeds; each output is compared with the uncached output of the
same prompt and seed. Methods: TeaCache (published coefficients, and coefficients fitted on separate
calibration prompts aimed at target speedups; rules reuse, extrapolate and fitted), diffusers' own
FirstBlockCache, MagCache (its ratios calibrated the same way), TaylorSeerCache, FasterCache and
PyramidAttentionBroadcast (attention reuse only), and, where they import (``pip install -r
requirements-bench.txt``), cache-dit's DBCache (``cachedit-dbcache``), DBCache with its TaylorSeer calibrator
(``cachedit-dbcache-taylorseer``) and DBPrune (``cachedit-dbprune``), and ParaAttention's first-block cache
(``para-attn-fbcache``), each over a sweep of its setting. Three studies run only when named in ``--methods``: TeaCache's rules on fixed intervals
(``interval-*``: the skip cap alone, threshold never reached), HunyuanVideo-1.5's built-in fixed schedule
(``schedule-*``: ``generate.py --enable_cache``'s formula, at several intervals), and the baseline of every cache,
the plain sampler with fewer steps (``steps``: as many transformer calls, no cache), and with more (how far the
reference itself is from the converged sampler). ``fbres-*`` (the engine's first-block-residual indicator),
``callrate-*`` (the transformation rate with ``skip="call"``: on the shipped models through ``Velocity``, the
velocity the real model predicts; ``callrate-*-w8`` and ``-w15`` with the first 8% or 15% of the steps computed),
``callres-*`` (the same place, deciding on the residual's rate: ``indicator="residual-rate"``), ``callsearched-*``
(the searched schedules of the whole call's residual, on the calibration runs) and ``callres-calibrated-*`` and
``callrate-calibrated-*-w8`` (a target speedup on a whole-call profile, as ``--teacache-speedup`` picks it) are
studies too.

    python3 benchmarks/bench_caches.py --model trained   # the first shipped model (HunyuanVideo's transformer)
    python3 benchmarks/bench_caches.py --model scenes    # the second (HunyuanVideo 1.5's), harder content
    python3 benchmarks/bench_caches.py --model random    # a mid-size random-weight transformer

Prints a table (computed steps = transformer calls whose block stack really ran, mean over runs; blocks run = the
blocks that really ran, over every stack, in steps' worth: a cache that always computes its first blocks counts
them here; speedup =
uncached wall time / method wall time, where the uncached run is timed again right after each timed run so
that a shared machine's drift cancels, fastest of ``--repeats`` each; PSNR/SSIM against the uncached output,
for the random model on the raw output with the uncached output's range), and writes it as CSV, plus plots of
PSNR and SSIM against the ideal and the measured speedup (PNG; needs matplotlib: ``pip install -r
requirements-bench.txt``, or pass ``--no-plot``). An existing CSV or PNG is never replaced unless ``--overwrite``
is passed (the default paths are the committed results: regenerating them needs it).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import functools
import io
import ast
import itertools
import math
import os
import sys
import time
from pathlib import Path

# before torch loads: OpenMP threads that spin-wait between ops make torch 4-6x slower when another process is
# busy on the CPUs; a user's own OMP_WAIT_POLICY wins
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# cache-dit logs several lines each time a cache is attached or removed (here: every generation); a user's own
# level wins
os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import teacache_sample_video as tc  # noqa: E402
from tinyhv import metrics  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sampler_caches  # noqa: E402

TEACACHE_THRESHOLDS = [0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.7]
SPEEDUPS = [1.5, 2.0, 2.5, 3.0, 4.0]
INTERVAL_CAPS = [2, 3, 5, 7, 9, 11]  # fixed intervals: compute one step, skip this many (first and last computed)
SAMPLER_STEPS = [6, 8, 10, 14, 19, 22, 25, 26, 30, 100, 400]  # the plain sampler, no cache
#: HunyuanVideo-1.5's built-in fixed schedule (generate.py --enable_cache): its start and end steps (for 50
#: steps), at several intervals (its default is 4: 25 of 50 computed)
SCHEDULE_START_END, SCHEDULE_INTERVALS = (11, 45), [2, 3, 4, 6, 10]


#: cache-dit (pip cache-dit): residual_diff_threshold sweep of DBCache (with and without TaylorSeer) and DBPrune
#: (cache-dit's default threshold is 0.08; random weights skip only from about 0.5 on), and DBCache's
#: (Fn_compute_blocks, Bn_compute_blocks) settings. cache-dit's default F8B0 needs 8 blocks per stack; HunyuanVideo
#: has two stacks, and the shipped model only 2 dual-stream and 4 single-stream blocks (cache-dit asserts Fn <= the
#: blocks of each stack), so F1: the first block of each stack always computed (2 of 6 blocks; HunyuanVideo's F8B0
#: computes 16 of 60), B0 or B1 (the last block of each stack too: then a skipped step skips 2 single-stream blocks
#: and no dual-stream block, whose 2 are the first and the last)
CACHE_DIT_THRESHOLDS = [0.02, 0.05, 0.08, 0.15, 0.2, 0.3, 0.5, 0.8]
#: ComfyUI's EasyCache and LazyCache: reuse_threshold sweep (the nodes' default: 0.2), their default window
COMFY_THRESHOLDS = [0.025, 0.05, 0.1, 0.2, 0.3, 0.45, 0.7, 1.0, 1.5]
CACHE_DIT_FNBN = [(1, 0), (1, 1)]
CACHE_DIT_METHODS = ("cachedit-dbcache", "cachedit-dbcache-taylorseer", "cachedit-dbprune")

#: The trained models' sampling regimes: each model's classifier-free guidance scale (None: the model's own).
#: "real-like": where the model reproduces the real HunyuanVideo's published relations (``relations``; each
#: setting was chosen with ``benchmarks/study_regime.py``, see docs/fidelity.md)
REGIMES = {"shipped": {"trained": None, "scenes": None}, "real-like": {"trained": 16.0, "scenes": 20.0}}
#: Computed steps (of 50; scaled to --steps) of the searched schedules
SEARCH_BUDGETS = [12, 15, 18, 22, 26, 30, 35]
#: TeaCache's rules deciding on the transformation rate (``indicator="transformation-rate"``)
RATE_THRESHOLDS = [0.05, 0.1, 0.2, 0.3, 0.45, 0.7, 1.0]
#: The same on the whole call (``skip="call"``): on the first model 0.05 already computes 16 of 50 steps
CALL_RATE_THRESHOLDS = [0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.7, 1.0]
#: ... and with a longer warm-up: this share of the steps always computed (``callrate-RULE-wPERCENT``)
WARMUP_PERCENTS = (8, 15)

STUDIES = {"steps", *(f"interval-{rule}" for rule in tc.RULES), *(f"schedule-{rule}" for rule in tc.RULES),
           *(f"fbres-{rule}" for rule in tc.RULES), *(f"callrate-{rule}" for rule in tc.RULES),
           *(f"callrate-{rule}-w{p}" for rule in tc.RULES for p in WARMUP_PERCENTS),
           *(f"callres-{rule}" for rule in tc.RULES), *(f"callsearched-{rule}" for rule in tc.RULES),
           *(f"callres-calibrated-{rule}" for rule in tc.RULES),
           *(f"callrate-calibrated-{rule}-w8" for rule in tc.RULES)}
#: FirstBlockCache's thresholds (diffusers' and the engine's first-block-residual indicator: the same signal)
FBCACHE_THRESHOLDS = [0.02, 0.05, 0.1, 0.15, 0.2, 0.4, 0.8, 1.6]  # random weights need the large ones to skip


class Steps(int):
    """A method setting: run the plain sampler with this many steps instead of the benchmark's."""


class Peer:
    """A method setting that is another project's cache, attached for one generation: ``attach`` puts it on the
    transformer (returns what ``detach`` needs), ``context`` wraps the generation, ``finish`` reads its stats and
    ``detach`` removes it. ``counted_block``: which block from the end must run for a step to count as computed
    (the last one a skipped step skips); ``counted_on``: where that is seen ("query": its attention's query
    projection; "block": the block's call)."""

    counted_block, counted_on = 1, "query"

    def attach(self, transformer, steps):
        raise NotImplementedError

    def context(self):
        return contextlib.nullcontext()

    def finish(self, transformer):
        pass

    @staticmethod
    def detach(handle):
        raise NotImplementedError


@functools.lru_cache(maxsize=None)
def _cache_dit():
    """(the cache_dit module, None), or (None, the import error as one line) where it does not import."""
    try:
        import cache_dit
    except Exception as e:  # ImportError, or whatever a broken install raises
        return None, f"{type(e).__name__}: {e}"
    return cache_dit, None


class CacheDit(Peer):
    """A method setting: a cache-dit cache (``DBCacheConfig``, optionally with a calibrator such as
    ``TaylorSeerCalibratorConfig``, or ``DBPruneConfig``) on the transformer for one generation.

    The transformer is not a diffusers pipeline: cache-dit is attached through a ``BlockAdapter`` over its block
    stacks (HunyuanVideo: ``[transformer_blocks, single_transformer_blocks]``; 1.5: ``[transformer_blocks]``),
    ``ForwardPattern.Pattern_0`` each, ``check_num_outputs=False``: cache-dit's own HunyuanVideo adapter). Each
    stack gets its own cache context and
    decides on its own residual. ``attach`` makes fresh contexts (``num_inference_steps`` set to the generation's
    steps) and ``detach`` removes them (``cache_dit.disable_cache``), so every generation starts from an empty cache
    and the next method runs on the plain transformer. (cache-dit's automatic refresh by ``num_inference_steps``
    alone does not suffice for back-to-back generations: in 1.5.3 it refreshes one step late, so a second
    generation's first step still runs in the first one's context.)

    Computed steps are counted as for the other methods, on the last stack (HunyuanVideo's single-stream blocks:
    its last block that a skipped step skips ran; checked against ``cache_dit.summary`` after every generation):
    HunyuanVideo's dual-stream stack decides on its own and may skip in some of those steps too (its cached steps
    are printed under the row). For DBPrune, which skips blocks, a computed step is one whose last block ran; the
    blocks pruned are printed.

    cache-dit's defaults apart from the swept knobs: ``max_warmup_steps=8`` (steps 0-7 always computed),
    ``warmup_interval=1``, ``max_cached_steps=-1`` and ``max_continuous_cached_steps=-1`` (no limits),
    ``max_accumulated_residual_diff_threshold=None``, residuals cached (not hidden states), no
    ``steps_computation_mask``, ``enable_separate_cfg`` False (one forward per step, as here); DBPrune:
    ``enable_dynamic_prune_threshold=False``, ``non_prune_block_ids=[]``; TaylorSeer: order 1
    (``taylorseer_order``'s default), on the hidden and the encoder stream's residuals."""

    def __init__(self, cache_config, calibrator_config=None):
        self.cache_config, self.calibrator_config = cache_config, calibrator_config
        self.stats = None  # cache-dit's own stats of the last generation: {stack name: {...}}
        self.stacks = None  # the names of the block stacks it was attached to

    @property
    def counted_block(self) -> int:
        """Which block from the end must run for a step to count as computed: the last one a skipped step skips
        (cache-dit always runs the last ``Bn_compute_blocks`` of each stack)."""
        return 1 + self.cache_config.Bn_compute_blocks

    def attach(self, transformer, steps):
        """cache-dit on ``transformer`` for a generation of ``steps`` steps; returns the adapter for ``detach``."""
        cache_dit, error = _cache_dit()
        if cache_dit is None:
            raise RuntimeError(f"cache-dit does not import: {error}")
        self.stacks = stacks = block_stacks(transformer)
        adapter = cache_dit.BlockAdapter(
            transformer=transformer, blocks=[getattr(transformer, name) for name in stacks],
            forward_pattern=[cache_dit.ForwardPattern.Pattern_0] * len(stacks),
            check_forward_pattern=True, check_num_outputs=False)
        config = copy.deepcopy(self.cache_config)  # cache-dit fills in fields of the config it is given
        config.num_inference_steps = steps
        return cache_dit.enable_cache(adapter, cache_config=config,
                                      calibrator_config=copy.deepcopy(self.calibrator_config))

    def finish(self, transformer):
        self.stats = self.read_stats(transformer)

    @staticmethod
    def read_stats(transformer) -> dict:
        """cache-dit's stats of the generation that just ended (``cache_dit.summary``), per block stack:
        ``cached`` (steps in which the stack reused its cache, for DBPrune: pruned at least one block),
        ``pruned`` (DBPrune: blocks pruned, all steps), ``blocks`` (DBPrune: blocks called, all steps)."""
        cache_dit, _ = _cache_dit()
        stats = {}
        # one entry per block stack, then the transformer's (the last stack's stats again)
        for s in cache_dit.summary(transformer, logging=False)[:-1]:
            stats[s.cache_options["name"].rsplit("_", 1)[0]] = dict(
                cached=len(s.cached_steps), pruned=sum(s.pruned_blocks), blocks=sum(s.actual_blocks))
        return stats

    def check(self, computed, steps):
        """The benchmark's count of computed steps against cache-dit's own stats of the same generation."""
        last = self.stats[self.stacks[-1]]
        if isinstance(self.cache_config, _cache_dit()[0].DBPruneConfig):
            # a step without any pruned block ran the last block; one with some may have run it too
            ok = steps - last["cached"] <= computed <= steps
        else:
            ok = computed == steps - last["cached"]
        if not ok:
            raise RuntimeError(f"computed {computed}/{steps} steps, but cache-dit reports {self.stats}")

    @staticmethod
    def detach(adapter):
        _cache_dit()[0].disable_cache(adapter)


@functools.lru_cache(maxsize=None)
def _para_attn():
    """(para_attn's first-block-cache utils, None), or (None, the import error as one line)."""
    try:
        from para_attn.first_block_cache import utils
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"
    return utils, None


class ParaAttention(Peer):
    """A method setting: ParaAttention's first-block cache (pip ``para-attn``) at ``residual_diff_threshold``.

    ParaAttention's own adapter (``para_attn.first_block_cache.diffusers_adapters.apply_cache_on_transformer``) does
    not run on diffusers 0.38 (see ``PARA_ATTN_ADAPTER_ERRORS``): it replaces the transformer's forward with a copy
    of an older diffusers forward. Its cache itself, ``utils.CachedTransformerBlocks`` (the decision on the first
    block's residual, the reuse of the other blocks' residuals), is used here the way that adapter uses it, around
    diffusers' own forward: during each call all blocks (HunyuanVideo: dual- then single-stream, merged into one list
    as the adapter merges them) run inside one ``CachedTransformerBlocks``. Its state lives in a context of its own:
    a fresh ``create_cache_context`` per generation is the reset. Its defaults: no warm-up steps, step 0 always
    computed, the decision on block 0's hidden-states residual (mean |change| / mean |previous| < threshold)."""

    counted_block = 1

    def __init__(self, threshold):
        self.threshold = threshold

    def attach(self, transformer, steps):
        fbc, error = _para_attn()
        if fbc is None:
            raise RuntimeError(f"para-attn does not import: {error}")
        import unittest.mock

        stacks = block_stacks(transformer)
        merged = torch.nn.ModuleList([fbc.CachedTransformerBlocks(
            [b for name in stacks for b in getattr(transformer, name)], transformer=None)])
        swap = {stacks[0]: merged, **{name: torch.nn.ModuleList() for name in stacks[1:]}}
        forward = transformer.forward

        def cached_forward(*args, **kwargs):
            with contextlib.ExitStack() as stack:
                for name, blocks in swap.items():
                    stack.enter_context(unittest.mock.patch.object(transformer, name, blocks))
                return forward(*args, **kwargs)

        transformer.forward = cached_forward  # an instance attribute, removed by detach
        return transformer

    def context(self):
        fbc = _para_attn()[0]
        return fbc.cache_context(fbc.create_cache_context(residual_diff_threshold=self.threshold))

    @staticmethod
    def detach(transformer):
        del transformer.forward


#: ParaAttention 0.3.38's own HunyuanVideo adapter on diffusers 0.38, as run here (why ``ParaAttention`` wraps its
#: cache around diffusers' forward instead)
PARA_ATTN_ADAPTER_ERRORS = {
    "HunyuanVideoTransformer3DModel": "RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x1 and 64x128) "
                                      "(para_attn/first_block_cache/diffusers_adapters/hunyuan_video.py:94, "
                                      "time_text_embed(timestep, guidance, pooled_projections): an older diffusers "
                                      "argument order, at the first call)",
    "HunyuanVideo15Transformer3DModel": "AttributeError: 'HunyuanVideo15Transformer3DModel' object has no attribute "
                                        "'single_transformer_blocks' (hunyuan_video.py:25, in "
                                        "apply_cache_on_transformer; there is no 1.5 adapter)",
}


class TimestepCache(Peer):
    """A method setting: a diffusers cache that asks for the current timestep (``FasterCacheConfig``,
    ``PyramidAttentionBroadcastConfig``): ``make(callback)`` builds its config, the callback reads the timestep of
    the transformer call under way (a forward pre-hook records it). Both reuse attention outputs only (FasterCache:
    extrapolated from the last two), so every step still runs every block: their computed steps stay at the full
    count, and their gain is in wall time only."""

    counted_block, counted_on = 1, "block"

    def __init__(self, make):
        self.make, self.now = make, None

    def attach(self, transformer, steps):
        hooks = [transformer.register_forward_pre_hook(
            lambda _, args, kwargs: setattr(self, "now", float(kwargs["timestep"].flatten()[0])), with_kwargs=True)]
        # attention calls in the block stacks, and those that really computed (their query projection ran)
        self.calls = {"attention": 0, "computed": 0}
        for name in block_stacks(transformer):
            for block in getattr(transformer, name):
                for key, module in (("attention", block.attn), ("computed", block.attn.to_q)):
                    hooks.append(module.register_forward_pre_hook(
                        lambda *_, k=key: self.calls.__setitem__(k, self.calls[k] + 1)))
        if hasattr(transformer, "_diffusers_hook"):  # see generate()
            transformer._diffusers_hook._child_registries_cache = None
        from diffusers.utils import logging

        level = logging.get_verbosity()
        logging.set_verbosity_error()  # FasterCache warns that it is experimental at every enable_cache
        try:
            transformer.enable_cache(self.make(lambda: self.now))
        finally:
            logging.set_verbosity(level)
        transformer._reset_stateful_cache()  # its per-hook step counters start at 0
        return hooks

    def finish(self, transformer):
        transformer._reset_stateful_cache()
        transformer.disable_cache()

    @staticmethod
    def detach(hooks):
        for hook in hooks:
            hook.remove()


class SamplerCache(Peer):
    """A method setting: a cache around the sampler's model calls, as ComfyUI's EasyCache and LazyCache nodes
    (``benchmarks/sampler_caches.py``), a fresh one per generation; the trained models only (``wrappers`` of
    ``generate``). ``rule``: the ``EasyCache`` or ``LazyCache`` class, ``kwargs`` its node's inputs."""

    def __init__(self, rule, **kwargs):
        self.rule, self.kwargs, self.last = rule, kwargs, None

    def attach(self, transformer, steps):
        return None

    def wrappers(self, shift: float) -> dict:
        self.last = self.rule(**self.kwargs).start(shift)
        return {"model" if self.rule is sampler_caches.EasyCache else "guided": self.last}

    @staticmethod
    def detach(handle):
        pass


# -- subjects: what is generated --------------------------------------------------------------------------------

class Velocity(torch.nn.Module):
    """A shipped model's transformer seen as the real HunyuanVideo's is: a flow (velocity) predictor. Both shipped
    models predict the clean sample; ``skip="call"`` caches a call's output minus its latent, which on HunyuanVideo's
    velocity is EasyCache's rule and on a clean sample would be another one. The sampler gets the same velocity
    as from the model's own ``velocity`` (``(x - out) / sigma``, sigma clamped as there), bit for bit."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states, timestep, return_dict=False, **kwargs):
        from tinyhv.model import SIGMA_MIN

        out = self.transformer(hidden_states=hidden_states, timestep=timestep, return_dict=False, **kwargs)[0]
        sigma = (timestep / 1000).clamp_min(SIGMA_MIN).view(-1, *[1] * (out.dim() - 1))
        return ((hidden_states[:, :out.shape[1]] - out) / sigma,)  # (1.5: conditioning channels follow the video)


class Trained:
    """A shipped trained model; outputs are videos in [0, 1]. ``shapes``: TinyHunyuanVideo (HunyuanVideo's
    transformer, one shape on a plain background); ``scenes``: TinyHunyuanVideo15 (HunyuanVideo 1.5's transformer,
    two crossing objects on a textured panning background)."""

    def __init__(self, steps, kind="shapes", cfg_scale=None, prompts=8):
        from tinyhv import data, scenes
        from tinyhv.model import TinyHunyuanVideo, TinyHunyuanVideo15

        self.kind = kind
        self.model = (TinyHunyuanVideo if kind == "shapes" else TinyHunyuanVideo15).from_pretrained()
        self.transformer, self.steps, self.data_range = self.model.transformer, steps, 1.0
        self.cfg_scale = cfg_scale  # None: the model's own sampling setting
        self.shift = self.model.config["sampling"]["shift"]
        train, held_out = (data if kind == "shapes" else scenes).split()
        # evaluation: held-out combinations spread over all of them (strides coprime with their counts, so no
        # repeats); calibration (TeaCache profile, MagCache ratios, searched schedules): 4 training combinations,
        # other seeds
        stride = 5 if kind == "shapes" else 37
        self.eval_runs = [(held_out[stride * i % len(held_out)].prompt, 1000 + i) for i in range(prompts)]
        self.calib_runs = [(a.prompt, 2000 + i) for i, a in enumerate(train[::41][:4])]

    def run(self, prompt_seed, cache=None, steps=None, wrappers=None):
        prompt, seed = prompt_seed
        return self.model.generate(prompt, seed=seed, num_steps=steps or self.steps, cache=cache,
                                   cfg_scale=self.cfg_scale, wrappers=wrappers)

    @contextlib.contextmanager
    def as_velocity(self):
        """The model called through ``Velocity`` (the engine's ``skip="call"`` then sees what it sees on the real
        model); the same samples."""
        if not any(spec.serves(Velocity) for spec in tc.MODELS):  # the engine serves it with the inner one's adapter
            tc.register_model(tc.ModelSpec("bench: a shipped model's transformer as a velocity predictor",
                                           (f"{Velocity.__module__}:{Velocity.__qualname__}",),
                                           lambda t: tc.find_model(t.transformer).adapter(t.transformer), "1.0"))
        model, config = self.model, self.model.config
        inner, prediction = model.transformer, config.get("prediction")
        model.transformer, config["prediction"] = Velocity(inner), "velocity"
        try:
            yield model.transformer
        finally:
            model.transformer, config["prediction"] = inner, prediction

    def same_content(self, out, ref) -> bool:
        """The automatic judge of the model's quality bar reads the same content in both clips (shapes: colour,
        shape and direction; scenes: all seven fields of the caption)."""
        if self.kind == "shapes":
            from tinyhv.evaluate import BAR_ATTRIBUTES as fields, describe
        else:
            from tinyhv.evaluate_scenes import describe
            from tinyhv.scenes import FIELDS as fields

        a, b = describe(out), describe(ref)
        return all(a[k] == b[k] for k in fields)


class Random:
    """A mid-size random-weight HunyuanVideoTransformer3DModel on fixed random conditioning; outputs are latents."""

    CONFIG = dict(num_attention_heads=4, attention_head_dim=32, num_layers=4, num_single_layers=8,
                  text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(8, 12, 12), in_channels=16,
                  out_channels=16, patch_size=2)

    def __init__(self, steps):
        from tinyhv.random_models import make_inputs, make_transformer, sample

        self.transformer = make_transformer(seed=0, **self.CONFIG)
        self._sample, self._inputs, self.steps = sample, make_inputs, steps
        self.eval_runs, self.calib_runs, self.data_range = [0, 1], [10, 11], None

    def run(self, seed, cache=None, steps=None):
        inputs = self._inputs(batch=1, frames=4, height=32, width=32, text_len=16, seed=seed)
        inputs["hidden_states"] = torch.randn(1, 16, 4, 32, 32, generator=torch.Generator().manual_seed(seed))
        inputs["encoder_hidden_states"] = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(seed + 1))
        inputs["pooled_projections"] = torch.randn(1, 16, generator=torch.Generator().manual_seed(seed + 2))
        steps = steps or self.steps
        if cache is not None:
            cache.reset(steps)
        with torch.no_grad():
            return self._sample(self.transformer, inputs, steps)


# -- methods ----------------------------------------------------------------------------------------------------

def block_stacks(transformer):
    """The names of the transformer's block stacks, in call order: HunyuanVideo's dual- then single-stream blocks,
    HunyuanVideo 1.5's dual-stream blocks only."""
    return [name for name in ("transformer_blocks", "single_transformer_blocks") if getattr(transformer, name, None)]


def computed_counter(transformer, from_end=1, on="query"):
    """Counts transformer calls whose last block (or the ``from_end``-th from the end) really ran: its attention's
    query projection is called (``on="query"``), or, for the caches that reuse attention outputs inside a block
    that runs (``on="block"``), the block is called."""
    block = list(getattr(transformer, block_stacks(transformer)[-1]))[-from_end]
    count = [0]
    (block.attn.to_q if on == "query" else block).register_forward_pre_hook(
        lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def block_counter(transformer):
    """Counts the blocks that really ran, over every stack: calls of each block's MLP (``ff``, or ``proj_mlp`` in
    HunyuanVideo's single-stream blocks), which runs exactly when the block computes, whether a cache skips whole
    steps (TeaCache), all blocks but the first few (FirstBlockCache, cache-dit's ``Fn``/``Bn``), single blocks
    (DBPrune), or only attention inside a block that runs (FasterCache, PAB). Returns ``(count, number of
    blocks)``: ``count[0] / blocks`` is the generation's work in steps' worth of blocks."""
    blocks = [b for name in block_stacks(transformer) for b in getattr(transformer, name)]
    count = [0]
    for block in blocks:
        (block.ff if hasattr(block, "ff") else block.proj_mlp).register_forward_pre_hook(
            lambda *_: count.__setitem__(0, count[0] + 1))
    return count, len(blocks)


def traced_profile(subject, transformer, **options):
    """A profile from uncached runs on the calibration prompts/seeds, traced with ``options`` on ``transformer``."""
    cache = tc.enable_teacache(transformer, 0.0, trace=True, **options)
    traces = []
    for run in subject.calib_runs:
        subject.run(run, cache)
        traces.append(cache.stats())
    cache.disable()
    return tc.make_profile(traces, transformer=subject.transformer, setting={"steps": subject.steps}, **options)


def calibrate(subject):
    """TeaCache profile and MagCache ratios from uncached runs on the calibration prompts/seeds."""
    profile = traced_profile(subject, subject.transformer)
    from diffusers import MagCacheConfig

    if not getattr(subject.transformer, "single_transformer_blocks", None):
        register_hunyuanvideo15_block()

    ratios = []
    for run in subject.calib_runs:
        subject.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=subject.steps))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), subject.transformer.cache_context("cond"):
            subject.run(run)
        subject.transformer._reset_stateful_cache()
        subject.transformer.disable_cache()
        ratios.append(ast.literal_eval(printed.getvalue().strip().splitlines()[-1]))
    return profile, np.mean(ratios, axis=0).tolist()


def calibrate_call(subject, indicator):
    """A whole-call profile for ``indicator``: the calibration runs traced around the transformer call (through
    ``Velocity``). Its searched schedules are a whole-call skip's (``callsearched-*``, the same for either indicator),
    its pairwise distances replay the indicator's decisions (``*-calibrated-*``: ``--teacache-speedup``)."""
    with subject.as_velocity() as velocity:
        return traced_profile(subject, velocity, indicator=indicator, skip="call")


@functools.lru_cache(maxsize=None)
def register_hunyuanvideo15_block():
    """diffusers 0.38's block caches (FirstBlockCache, MagCache) refuse HunyuanVideo 1.5's block ("Model class
    HunyuanVideo15TransformerBlock not registered"); it returns ``(hidden_states, encoder_hidden_states)`` as
    HunyuanVideo's dual-stream block does, so it is registered with that block's metadata."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
    from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15TransformerBlock

    TransformerBlockRegistry.register(model_class=HunyuanVideo15TransformerBlock, metadata=TransformerBlockMetadata(
        return_hidden_states_index=0, return_encoder_hidden_states_index=1))


def methods(subject, profile, mag_ratios, quick, call_profiles=None):
    from diffusers import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig,
                           TaylorSeerCacheConfig)

    steps = subject.steps
    pick = (lambda xs: xs[::2]) if quick else (lambda xs: xs)
    thresholds = [0.1, 0.15, 0.2, 0.3, 0.45] if quick else TEACACHE_THRESHOLDS
    yield "none", "-", None
    for n in SAMPLER_STEPS if not quick else SAMPLER_STEPS[::2]:
        if n <= steps or getattr(subject, "cfg_scale", None) is None:  # more steps: the shipped regime's question
            yield "steps", n, Steps(n)
    for thresh in thresholds:
        yield "teacache", thresh, dict(rel_l1_thresh=thresh)
    for rule in ("extrapolate", "fitted"):
        for thresh in thresholds:
            yield f"teacache-{rule}", thresh, dict(rel_l1_thresh=thresh, rule=rule)
    traces = [t["rel_l1"] for t in profile["traces"]]
    for rule in tc.RULES:
        for s in pick(SPEEDUPS):
            cfg = tc.TeaCacheConfig(coefficients=profile["coefficients"], rule=rule)
            thresh, _ = tc.threshold_for_speedup(traces, s, cfg)
            yield f"teacache-calibrated-{rule}", f"{s}x:{thresh:.3g}", dict(
                rel_l1_thresh=thresh, coefficients=profile["coefficients"], rule=rule)
    for rule in tc.RULES:  # deciding on the transformation rate (EasyCache's signal), each rule
        for thresh in pick(RATE_THRESHOLDS):
            yield f"rate-{rule}", thresh, dict(rel_l1_thresh=thresh, indicator="transformation-rate", rule=rule)
    for rule in tc.RULES:  # the same on the whole transformer call (skip="call": nothing of the model runs)
        for thresh in pick(CALL_RATE_THRESHOLDS):
            yield f"callrate-{rule}", thresh, dict(rel_l1_thresh=thresh, indicator="transformation-rate", rule=rule,
                                                   skip="call")
    for rule in tc.RULES:  # the whole call, deciding on the rate of the residual a skip reuses (output minus latent)
        for thresh in pick(CALL_RATE_THRESHOLDS):
            yield f"callres-{rule}", thresh, dict(rel_l1_thresh=thresh, indicator="residual-rate", rule=rule,
                                                  skip="call")
    for rule in tc.RULES:  # the same with the first 8% or 15% of the steps computed (EasyCache's window starts at 15%)
        for percent in WARMUP_PERCENTS:
            for thresh in pick(CALL_RATE_THRESHOLDS):
                yield f"callrate-{rule}-w{percent}", thresh, dict(
                    rel_l1_thresh=thresh, indicator="transformation-rate", rule=rule, skip="call",
                    warmup_steps=math.ceil(percent / 100 * steps))
    for rule in tc.RULES:  # deciding on the first block's residual times its learnt rate, each rule
        for thresh in pick(RATE_THRESHOLDS):
            yield f"fbrate-{rule}", thresh, dict(rel_l1_thresh=thresh, indicator="first-block-rate", rule=rule)
    for rule in tc.RULES:  # FirstBlockCache's signal (not accumulated) in the engine, each rule
        for thresh in pick(FBCACHE_THRESHOLDS):
            yield f"fbres-{rule}", thresh, dict(rel_l1_thresh=thresh, indicator="first-block-residual", rule=rule)
    for rule in tc.RULES:  # searched schedules (on the calibration runs, per rule): the limit of step placement
        for budget in pick(sorted({max(2, round(b * steps / 50)) for b in SEARCH_BUDGETS})):
            if budget < steps:
                yield f"searched-{rule}", budget, dict(fixed_steps=tc.profile_schedule(profile, budget, rule),
                                                       rule=rule)
    call_profiles = call_profiles or {}
    for rule in tc.RULES if call_profiles else ():  # the same searched on the whole call's residual, skipping the call
        for budget in pick(sorted({max(2, round(b * steps / 50)) for b in SEARCH_BUDGETS})):
            if budget < steps:
                yield f"callsearched-{rule}", budget, dict(
                    fixed_steps=tc.profile_schedule(next(iter(call_profiles.values())), budget, rule), rule=rule,
                    indicator="transformation-rate", skip="call")
    # target speedups (--teacache-speedup): the threshold whose replay on the whole-call profile computes 1/S of the
    # steps, for each whole-call recommendation (the residual's rate; the output's rate with the 8% warm-up)
    for family, indicator, warmup, suffix in (("callres", "residual-rate", 1, ""),
                                              ("callrate", "transformation-rate", math.ceil(0.08 * steps), "-w8")):
        for rule in tc.RULES if indicator in call_profiles else ():
            for s in pick(SPEEDUPS):
                cfg = tc.TeaCacheConfig(indicator=indicator, skip="call", rule=rule, warmup_steps=warmup)
                thresh, _ = tc.threshold_for_speedup(call_profiles[indicator]["traces"], s, cfg)
                yield f"{family}-calibrated-{rule}{suffix}", f"{s}x:{thresh:.3g}", dict(
                    rel_l1_thresh=thresh, indicator=indicator, skip="call", rule=rule, warmup_steps=warmup)
    for rule in tc.RULES:  # the skip cap alone (a threshold never reached): TeaCache's rules on fixed intervals
        for cap in pick(INTERVAL_CAPS):
            yield f"interval-{rule}", cap, dict(rel_l1_thresh=1e9, max_consecutive_skips=cap, rule=rule)
    start, end = (round(x * steps / 50) for x in SCHEDULE_START_END)
    for rule in tc.RULES:  # HunyuanVideo-1.5's fixed schedule, with each rule
        for interval in SCHEDULE_INTERVALS:
            yield f"schedule-{rule}", f"{start}/{end}/{interval}", dict(schedule=(start, end, interval), rule=rule)
    for thresh in pick(FBCACHE_THRESHOLDS):
        yield "diffusers-fbcache", thresh, FirstBlockCacheConfig(threshold=thresh)
    for thresh in pick([0.02, 0.06, 0.12, 0.24, 0.36, 0.5]):
        yield "diffusers-magcache", thresh, MagCacheConfig(threshold=thresh, num_inference_steps=steps,
                                                           mag_ratios=mag_ratios)
    for interval in pick([2, 3, 4, 5, 6]):
        yield "diffusers-taylorseer", interval, TaylorSeerCacheConfig(
            cache_interval=interval, disable_cache_before_step=3, taylor_factors_dtype=torch.float32)
    for interval in pick([2, 3, 4]):  # attention reuse: FasterCache (extrapolated) and PAB, their timestep ranges
        yield "diffusers-fastercache", interval, TimestepCache(lambda now, n=interval: FasterCacheConfig(
            spatial_attention_block_skip_range=n, spatial_attention_timestep_skip_range=(-1, 681),
            current_timestep_callback=now, attention_weight_callback=lambda _: 0.5, is_guidance_distilled=True))
    for interval in pick([2, 3, 4, 6]):
        yield "diffusers-pab", interval, TimestepCache(lambda now, n=interval: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=n, spatial_attention_timestep_skip_range=(100, 800),
            spatial_attention_block_identifiers=("^transformer_blocks\\.", "^single_transformer_blocks\\."),
            current_timestep_callback=now))
    if isinstance(subject, Trained):  # ComfyUI's caches, around the sampler's calls (its default threshold: 0.2)
        for rule in (sampler_caches.EasyCache, sampler_caches.LazyCache):
            for thresh in pick(COMFY_THRESHOLDS):
                yield rule.name, thresh, SamplerCache(rule, reuse_threshold=thresh)
    if _para_attn()[0] is not None:
        for thresh in pick([0.02, 0.05, 0.1, 0.2, 0.4, 0.8]):
            yield "para-attn-fbcache", thresh, ParaAttention(thresh)
    yield from cache_dit_methods(quick)


def cache_dit_methods(quick):
    """cache-dit's DBCache (Fn/Bn settings, each over its threshold sweep), the same with its TaylorSeer
    calibrator (order 1), and DBPrune (F1B0: the first block of each stack never pruned), as (name, setting,
    ``CacheDit``); none where cache-dit does not import. Every other threshold with ``quick``."""
    cache_dit, _ = _cache_dit()
    if cache_dit is None:
        return
    thresholds = CACHE_DIT_THRESHOLDS[::2] if quick else CACHE_DIT_THRESHOLDS
    for name, calibrator in (("cachedit-dbcache", None),
                             ("cachedit-dbcache-taylorseer", lambda: cache_dit.TaylorSeerCalibratorConfig(
                                 taylorseer_order=1))):
        for fn, bn in CACHE_DIT_FNBN:
            for thresh in thresholds:
                yield name, f"F{fn}B{bn}:{thresh}", CacheDit(
                    cache_dit.DBCacheConfig(Fn_compute_blocks=fn, Bn_compute_blocks=bn,
                                            residual_diff_threshold=thresh),
                    calibrator() if calibrator else None)
    for thresh in thresholds:
        yield "cachedit-dbprune", f"F1B0:{thresh}", CacheDit(
            cache_dit.DBPruneConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=thresh))


def generate(subject, config, run):
    """One generation with ``config`` (None, TeaCache kwargs, a diffusers cache config, a peer with ``attach``:
    ``CacheDit``, ``ParaAttention``, ``TimestepCache``, or ``Steps``); (output, seconds)."""
    t = subject.transformer
    cache = None
    if isinstance(config, Steps):
        start = time.perf_counter()
        out = subject.run(run, steps=int(config))
        return out, time.perf_counter() - start
    if isinstance(config, Peer):  # attached for this generation only: cache-dit, ParaAttention, ...
        handle = config.attach(t, subject.steps)
        try:
            with config.context():
                start = time.perf_counter()
                out = subject.run(run, **({"wrappers": config.wrappers(subject.shift)}
                                          if isinstance(config, SamplerCache) else {}))
                seconds = time.perf_counter() - start
            config.finish(t)
            return out, seconds
        finally:
            config.detach(handle)
    with contextlib.ExitStack() as stack:
        if isinstance(config, dict):  # a whole-call skip sees a shipped model as the velocity predictor it stands for
            whole_call = config.get("skip") == "call" and isinstance(subject, Trained)
            cache = tc.enable_teacache(stack.enter_context(subject.as_velocity()) if whole_call else t, **config)
        elif config is not None:
            # diffusers 0.38 caches the list of hooked submodules on first use; a cache enabled later on other
            # submodules (TaylorSeer after FirstBlockCache) would then never get its context set
            if hasattr(t, "_diffusers_hook"):
                t._diffusers_hook._child_registries_cache = None
            t.enable_cache(config)
        try:
            start = time.perf_counter()
            with t.cache_context("cond") if config is not None and cache is None else contextlib.nullcontext():
                out = subject.run(run, cache)
            return out, time.perf_counter() - start
        finally:
            if cache is not None:
                cache.disable()
            elif config is not None:
                t._reset_stateful_cache()
                t.disable_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["trained", "scenes", "random"], default="trained",
                        help="trained: the first shipped model (HunyuanVideo's transformer); scenes: the second "
                             "(HunyuanVideo 1.5's); random: a mid-size random-weight HunyuanVideo transformer")
    parser.add_argument("--regime", choices=list(REGIMES), default="shipped",
                        help="the trained models' sampling: 'shipped' (their own setting), or 'real-like' "
                             f"(classifier-free guidance {REGIMES['real-like']['trained']:g} on the first model, "
                             f"{REGIMES['real-like']['scenes']:g} on the second: the relations of the real model, "
                             "see docs/fidelity.md)")
    parser.add_argument("--prompts", type=int, default=None,
                        help="held-out prompts to evaluate on (trained models; default 8, 16 in the real-like regime)")
    parser.add_argument("--paired", nargs=2, metavar="METHOD=SETTING",
                        help="with --replot: the per-prompt PSNR difference of two rows (first minus second), its mean "
                             "with a 95%% interval, and each row's worst prompt; METHOD@K is that method at a budget "
                             "of its own (as --budget K), a bare METHOD the method at --budget")
    parser.add_argument("--budget", type=_budget, metavar="K",
                        help="with --paired: a bare METHOD's per-prompt PSNRs at K computed steps (K: a number), at "
                             "a measured speedup (K: e.g. 2.0x), or at K steps' worth of blocks run (K: e.g. 22b; a "
                             "first-block cache's probe counts), interpolated linearly between its two settings "
                             "around K")
    parser.add_argument("--relations", action="store_true",
                        help="with --replot: print the regime's relations beside the real model's published ones")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1, help="timed repetitions per run (min is kept)")
    parser.add_argument("--timed-prompts", type=int, default=None, metavar="N",
                        help="time only the first N prompts (and run the uncached baseline again after those only); "
                             "PSNR and SSIM still cover every prompt (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="TeaCache at 0.1, 0.15, 0.2, 0.3, 0.45 and every other setting of the other methods")
    parser.add_argument("--out", default=None, help="CSV path (default benchmarks/results/caches_<model>.csv); "
                                                    "with --replot the PNG path")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help="run only these methods (and the uncached baseline), e.g. diffusers-fbcache; "
                             "'default': every method that runs without --methods; the studies "
                             f"{', '.join(sorted(STUDIES))} run only when named here")
    parser.add_argument("--settings", nargs="+", metavar="METHOD=V,V", default=[],
                        help="run only these settings of a method (as the table writes them), e.g. easycache=0.1,0.2")
    parser.add_argument("--replot", metavar="CSV", nargs="+",
                        help="only redraw the plot of CSVs this script wrote (their methods, or those of --methods), "
                             "to --out (default: the first CSV's name, .png)")
    parser.add_argument("--no-plot", action="store_true", help="write the CSV only (no matplotlib needed)")
    parser.add_argument("--markdown", action="store_true",
                        help="with --replot: print the CSVs' rows as a Markdown table instead of plotting them")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out CSV (and its PNG); without it such a run refuses to start")
    args = parser.parse_args()
    if args.replot:
        missing = [path for path in args.replot if not Path(path).is_file()]
        if missing:
            return _fail(f"no such CSV: {missing[0]}")
        if not (args.markdown or args.relations or args.paired) and not _have_matplotlib():
            return _fail("--replot needs matplotlib: pip install -r requirements-bench.txt")
        rows = []
        for path in args.replot:
            with open(path, newline="") as f:
                rows += [r for r in csv.DictReader(f) if not args.methods or r["method"] in args.methods]
        if not rows:
            return _fail(f"no rows{' of ' + ', '.join(args.methods) if args.methods else ''} in "
                         f"{', '.join(args.replot)}")
        if args.paired:
            found = []
            for key in args.paired:
                method, at, budget = key.partition("@")
                try:
                    budget = _budget(budget) if at else args.budget
                except argparse.ArgumentTypeError as e:
                    return _fail(f"--paired {key}: {e}")
                if "=" not in key and budget is None:
                    return _fail(f"--paired: {key} names no setting: write {key}=SETTING or {key}@K, or pass "
                                 "--budget K")
                row = (next((r for r in rows if f"{r['method']}={r['setting']}" == key), None) if "=" in key
                       else at_budget(rows, method, budget))
                if row is None or not row.get("psnr_prompts"):
                    return _fail(f"--paired: no row with per-prompt PSNRs for {method}"
                                 + ("" if "=" in key else f" on both sides of {_budget_text(budget)}"))
                found.append(row)
            print(paired(*found))
            return 0
        if args.markdown or args.relations:
            print(markdown(rows) if args.markdown else "\n".join(relations(rows)))
            return 0
        model, _, study = Path(args.replot[0]).stem.removeprefix("caches_").partition("_")
        plot(rows, Path(args.out or Path(args.replot[0]).with_suffix(".png")),
             f"{model} model{' (' + study.replace('reallike', 'real-like regime') + ')' if study else ''}, "
             f"{rows[0]['steps']} steps")
        return 0
    # checked before the long run (20+ minutes), not after it
    if args.model == "random" and (args.regime != "shipped" or args.prompts):
        return _fail("--regime and --prompts apply to the trained models only")
    if args.prompts is not None and args.prompts < 2:
        return _fail(f"--prompts must be at least 2, got {args.prompts}")
    suffix = "" if args.regime == "shipped" else "_" + args.regime.replace("-", "")
    csv_path = Path(args.out or ROOT / "benchmarks" / "results" / f"caches_{args.model}{suffix}.csv")
    written = [csv_path] if args.no_plot else [csv_path, csv_path.with_suffix(".png")]
    existing = [path for path in written if path.exists()]
    if existing and not args.overwrite:
        return _fail(f"{existing[0]} exists: pass --overwrite to replace it, or --out another path")
    if not args.no_plot and not _have_matplotlib():
        return _fail("the plot needs matplotlib: pip install -r requirements-bench.txt (or pass --no-plot)")
    everything = not args.methods or "default" in args.methods
    wanted = [name for name in CACHE_DIT_METHODS if everything or name in args.methods]
    if wanted and _cache_dit()[0] is None:
        print(f"skipping {', '.join(wanted)}: cache-dit does not import ({_cache_dit()[1]}); "
              "pip install -r requirements-bench.txt", flush=True)
    if (everything or "para-attn-fbcache" in args.methods) and _para_attn()[0] is None:
        print(f"skipping para-attn-fbcache: para-attn does not import ({_para_attn()[1]}); "
              "pip install -r requirements-bench.txt", flush=True)
    only = {}
    for item in args.settings:
        method, _, values = item.partition("=")
        if not values:
            return _fail(f"--settings takes METHOD=V,V..., got {item!r}")
        only[method] = set(values.split(","))
    torch.manual_seed(0)
    subject = Random(args.steps) if args.model == "random" else Trained(
        args.steps, "shapes" if args.model == "trained" else "scenes", cfg_scale=REGIMES[args.regime][args.model],
        prompts=args.prompts or (8 if args.regime == "shipped" else 16))
    counters = {(1, "query"): computed_counter(subject.transformer)}
    blocks_run, n_blocks = block_counter(subject.transformer)
    profile, mag_ratios = calibrate(subject)
    wanted = {"residual-rate": ("callsearched-", "callres-calibrated-"),
              "transformation-rate": ("callrate-calibrated-",)}
    call_profiles = {indicator: calibrate_call(subject, indicator) for indicator, prefixes in wanted.items()
                     if isinstance(subject, Trained) and any(m.startswith(prefixes) for m in args.methods or [])}

    baseline, rows = {}, []
    judge = getattr(subject, "same_content", None)  # the trained model's content check; None for random weights
    for name, setting, config in methods(subject, profile, mag_ratios, args.quick, call_profiles):
        named = args.methods or ["default"]
        if name != "none" and name not in named and ("default" not in named or name in STUDIES):
            continue
        if name in only and str(setting) not in only[name]:
            continue
        psnrs, ssims, walls, base_walls, computed, same, cd_stats, attention, work = ([] for _ in range(9))
        key = (config.counted_block, config.counted_on) if isinstance(config, Peer) else (1, "query")
        if key not in counters:
            counters[key] = computed_counter(subject.transformer, *key)
        counter = counters[key]
        for run in subject.eval_runs:
            times, base_times = [], []
            timed = args.timed_prompts is None or subject.eval_runs.index(run) < args.timed_prompts
            for _ in range(args.repeats if timed else 1):
                counter[0] = blocks_run[0] = 0
                out, seconds = generate(subject, config, run)
                n, ran = counter[0], blocks_run[0] / n_blocks
                if isinstance(config, CacheDit):
                    config.check(n, args.steps)
                    cd_stats.append(config.stats)
                if isinstance(config, TimestepCache):
                    attention.append(dict(config.calls))
                times.append(seconds)
                if name != "none" and timed:  # the uncached run again, right after: a shared machine's speed drifts
                    base_times.append(generate(subject, None, run)[1])
            if timed:
                walls.append(min(times))
                base_walls.append(min(base_times or times))
            computed.append(n)
            work.append(ran)
            if name == "none":
                baseline[str(run)] = out
            ref = baseline[str(run)]
            rng = subject.data_range or float(ref.max() - ref.min())
            if name != "none":
                psnrs.append(metrics.psnr(_video(out), _video(ref), data_range=rng))
                ssims.append(metrics.ssim(_video(out), _video(ref), data_range=rng))
                if judge:
                    same.append(judge(out, ref))
        speedup = sum(base_walls) / sum(walls)
        rows.append(dict(method=name, setting=setting, computed=float(np.mean(computed)), steps=args.steps,
                         block_steps=float(np.mean(work)), wall_s=float(np.mean(walls)), speedup=speedup,
                         psnr=float(np.mean(psnrs)) if psnrs else math.inf,
                         ssim=float(np.mean(ssims)) if ssims else 1.0,
                         psnr_ci=_ci95(psnrs), psnr_worst=min(psnrs, default=math.inf),
                         ssim_worst=min(ssims, default=1.0), psnr_prompts=";".join(f"{v:.3f}" for v in psnrs),
                         **({"same_content": float(np.mean(same)) if same else 1.0} if judge else {})))
        r = rows[-1]
        print(f"{name:>32} {str(setting):>12} computed {r['computed']:5.1f}/{args.steps}  blocks run "
              f"{r['block_steps']:5.1f}/{args.steps}  {r['wall_s']:7.3f} s  "
              f"{r['speedup']:5.2f}x  PSNR {r['psnr']:6.2f} ± {r['psnr_ci']:.2f} (worst {r['psnr_worst']:6.2f})  "
              f"SSIM {r['ssim']:.4f}"
              + (f"  same content {r['same_content']:.0%}" if "same_content" in r else ""), flush=True)
        if attention:
            print(" " * 46 + f"attention outputs reused: {np.mean([c['attention'] - c['computed'] for c in attention]):.1f}"
                  f"/{attention[0]['attention']} calls", flush=True)
        if cd_stats:  # cache-dit's own stats, per block stack, mean over runs
            print(" " * 46 + "cache-dit: " + _cache_dit_stats(cd_stats, args.steps), flush=True)
        _write_csv(csv_path, rows)  # after every setting: a long run stopped early keeps what it measured

    for line in relations(rows):
        print(line)
    if not args.no_plot:
        plot(rows, csv_path.with_suffix(".png"), f"{args.model} model, {args.steps} steps")
    print(f"wrote {' and '.join(map(str, written))}")
    return 0


def _write_csv(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _cache_dit_stats(stats, steps) -> str:
    """cache-dit's own stats of a method's runs, per block stack, mean over the runs: steps that reused the
    cache (DBCache), blocks pruned (DBPrune)."""
    parts = []
    for stack in stats[0]:
        label = {"transformer_blocks": "dual-stream", "single_transformer_blocks": "single-stream"}.get(stack, stack)
        if stats[0][stack]["blocks"]:
            parts.append(f"{label} pruned {np.mean([s[stack]['pruned'] for s in stats]):.1f}/"
                         f"{stats[0][stack]['blocks']} blocks")
        else:
            parts.append(f"{label} cached {np.mean([s[stack]['cached'] for s in stats]):.1f}/{steps} steps")
    return ", ".join(parts)


def markdown(rows) -> str:
    """The rows as a Markdown table: method, setting, computed steps, ideal and measured speedup, wall time, PSNR,
    SSIM and, where measured, same content."""
    judged = all(r.get("same_content") not in (None, "") for r in rows)
    work = _have_block_steps(rows)
    spread = all(r.get("psnr_worst") not in (None, "") for r in rows)  # CSVs written before these columns lack them
    steps = rows[0]["steps"]
    head = ["method", "setting", f"computed /{steps}", *([f"blocks run /{steps}"] if work else []), "ideal speedup",
            "wall s", "measured speedup", "PSNR dB", *(["± 95%", "worst prompt"] if spread else []), "SSIM",
            *(["worst SSIM"] if spread else [])] + (["same content"] if judged else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["setting"], f"{float(r['computed']):.1f}",
                 *([f"{float(r['block_steps']):.1f}"] if work else []), f"{_ideal(r, work):.2f}x",
                 f"{float(r['wall_s']):.3f}", f"{float(r['speedup']):.2f}x", f"{float(r['psnr']):.2f}",
                 *([_cell(r, "psnr_ci"), _cell(r, "psnr_worst")] if spread else []), f"{float(r['ssim']):.4f}",
                 *([_cell(r, "ssim_worst", "{:.4f}")] if spread else [])]
        if judged:
            cells.append(f"{float(r['same_content']):.0%}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Student's t quantile (two-sided 95%) by degrees of freedom, for the confidence intervals of the means
_T95 = {1: 12.71, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 24: 2.064, 30: 2.042, 40: 2.021, 60: 2.000}


def _ci95(values) -> float:
    """Half-width of the 95% confidence interval of the mean of ``values`` (Student's t); nan where undefined (fewer
    than two values, or an infinite one: a prompt on which nothing was skipped)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2 or not np.all(np.isfinite(v)):
        return math.nan
    t95 = _T95[max(k for k in _T95 if k <= len(v) - 1)]
    return float(t95 * v.std(ddof=1) / math.sqrt(len(v)))


#: The real HunyuanVideo's published relations (544p, 50 steps; docs/fidelity.md gives the sources), and the
#: tolerance a harness regime must meet to count as real-like
REAL_RELATIONS = (
    ("plain sampler, half the steps", "17.6 dB (25 of 50)", "at most 22 dB"),
    ("published rule at 0.1 (1.5-1.67x)", "23.9 dB", "21 to 27 dB"),
    ("EasyCache against the published rule, equal computed steps", "ahead (32.7 dB at 2.21x)", "ahead"),
)


def relations(rows) -> list:
    """The regime's relations beside the real model's published ones (lines of text): the plain sampler at half
    the steps, the published rule at 0.1, and EasyCache against the published rule at its computed steps (EasyCache's
    PSNR interpolated linearly in computed steps between its settings); "not measured" where rows are missing."""
    def row(method, setting):
        return next((r for r in rows if r["method"] == method and str(r["setting"]) == setting), None)

    steps = int(float(rows[0]["steps"]))
    half, rule = row("steps", str(steps // 2)), row("teacache", "0.1")
    easy = sorted(((float(r["computed"]), float(r["psnr"])) for r in rows if r["method"] == "easycache"))
    seen = [f"{float(half['psnr']):.2f} dB (worst prompt {_cell(half, 'psnr_worst')})" if half else "not measured",
            f"{float(rule['psnr']):.2f} dB (worst prompt {_cell(rule, 'psnr_worst')}) at {float(rule['computed']):.1f} "
            f"computed" if rule else "not measured", "not measured"]
    if rule and len(easy) >= 2 and easy[0][0] <= float(rule["computed"]) <= easy[-1][0]:
        at = float(np.interp(float(rule["computed"]), *zip(*easy)))
        seen[2] = (f"{'ahead' if at > float(rule['psnr']) else 'behind'}: {at:.2f} dB at "
                   f"{float(rule['computed']):.1f} computed")
    checks = [half and float(half["psnr"]) <= 22, rule and 21 <= float(rule["psnr"]) <= 27, seen[2].startswith("ahead")]
    lines = [f"relations ({steps} steps): this regime | real HunyuanVideo (published) | wanted"]
    for (what, real, wanted), here, ok in zip(REAL_RELATIONS, seen, checks):
        lines.append(f"  {what}: {here} | {real} | {wanted}: {'holds' if ok else 'does not hold'}")
    return lines


#: ``--budget``'s suffixes: the CSV column interpolated in, and how a budget reads
_BUDGET_AXES = {"x": ("speedup", "{:g}x measured"), "b": ("block_steps", "{:g} steps' worth of blocks run"),
                "": ("computed", "{:g} computed steps")}
_SUFFIX = {axis: suffix for suffix, (axis, _) in _BUDGET_AXES.items()}


def _budget(text: str) -> tuple:
    """``--budget``: ("computed", K) for a number, ("speedup", S) for ``Sx``, ("block_steps", B) for ``Bb``."""
    suffix = text[-1:] if text[-1:] in ("x", "b") else ""
    try:
        return _BUDGET_AXES[suffix][0], float(text[:len(text) - len(suffix)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected computed steps (22), a measured speedup (2.0x) or steps' worth "
                                         f"of blocks run (22b), got {text!r}")


def _budget_text(budget: tuple) -> str:
    return _BUDGET_AXES[_SUFFIX[budget[0]]][1].format(budget[1])


def at_budget(rows, method: str, budget: tuple):
    """``method`` at ``budget`` (``_budget``: computed steps, measured speedup or blocks run): a row whose per-prompt PSNRs
    are interpolated linearly in that quantity (its mean over the prompts, as the CSV holds it) between the
    method's two settings nearest around the budget (an exact setting if one has it); None where the rows do not
    reach the budget on both sides. Finite PSNRs only (a setting that skipped nothing on some prompt cannot be
    interpolated); a setting found in several CSVs counts once, as the last of them has it."""
    axis, budget = budget
    latest = {r["setting"]: r for r in rows if r["method"] == method}  # a setting in several CSVs: the last one's
    usable = sorted(((float(r[axis]), r) for r in latest.values() if r.get("psnr_prompts")
                     and all(math.isfinite(float(v)) for v in r["psnr_prompts"].split(";"))), key=lambda x: x[0])
    below = [(c, r) for c, r in usable if c <= budget]
    above = [(c, r) for c, r in usable if c >= budget]
    if not below or not above:
        return None
    (c0, r0), (c1, r1) = below[-1], above[0]
    w = 0.0 if c1 == c0 else (budget - c0) / (c1 - c0)
    p0, p1 = ([float(v) for v in r["psnr_prompts"].split(";")] for r in (r0, r1))
    setting = r0["setting"] if c1 == c0 else f"{r0['setting']}..{r1['setting']}"
    computed = (1 - w) * float(r0["computed"]) + w * float(r1["computed"])
    return dict(method=method, setting=setting + (f" at {budget:g}{_SUFFIX[axis]}" if _SUFFIX[axis] else ""),
                computed=computed, psnr_prompts=";".join(f"{(1 - w) * a + w * b:.3f}" for a, b in zip(p0, p1)))


def paired(a, b) -> str:
    """Two rows of the same prompts compared prompt by prompt: the mean PSNR difference (a - b) with its 95% interval,
    how many prompts a wins, and each row's computed steps and worst prompt."""
    pa, pb = ([float(v) for v in r["psnr_prompts"].split(";")] for r in (a, b))
    diff = [x - y for x, y in zip(pa, pb)]
    name = lambda r: f"{r['method']} {r['setting']} ({float(r['computed']):.1f} computed)"  # noqa: E731
    return (f"{name(a)} - {name(b)}: {np.mean(diff):+.2f} ± {_ci95(diff):.2f} dB over {len(diff)} prompts, "
            f"ahead on {sum(d > 0 for d in diff)}; worst prompt {min(pa):.2f} against {min(pb):.2f} dB")


def _cell(r, key, fmt="{:.2f}") -> str:
    """A row's optional column, formatted; "-" where the CSV lacks it or it is undefined."""
    value = r.get(key)
    return "-" if value in (None, "") or not math.isfinite(float(value)) else fmt.format(float(value))


def _have_block_steps(rows) -> bool:
    """Whether every row measured the blocks that ran (CSVs written before that column lack it)."""
    return all(r.get("block_steps") not in (None, "") for r in rows)


def _ideal(r, work: bool) -> float:
    """The ideal speedup: steps over the blocks that ran (in steps' worth) where measured, else over the computed
    steps (which leaves out a cache's always-computed first blocks)."""
    return float(r["steps"]) / float(r["block_steps"] if work else r["computed"])


def _fail(message: str) -> int:
    print(f"{Path(__file__).name}: error: {message}", file=sys.stderr)
    return 2


def _have_matplotlib() -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        return False
    return True


def _video(x: torch.Tensor) -> torch.Tensor:
    """(T, H, W, C) frames for SSIM: videos pass through, latents (B, C, T, H, W) become frames of channels."""
    if x.dim() == 5:
        return x[0].permute(1, 2, 3, 0)
    return x


def plot(rows, path, title):
    """PSNR, SSIM and, for the trained models, the judge's "same content" (rows) against the ideal speedup (steps /
    blocks run, or computed steps for CSVs without that column: deterministic) and the measured wall-clock speedup
    (columns), one curve per method (20 colours, then dashed), points in the order of its setting sweep; runs with
    more steps than the benchmark's (slowdowns) stay in the table only."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cycler import cycler

    plt.rcParams["axes.prop_cycle"] = cycler(linestyle=["-", "--"]) * cycler(color=plt.cm.tab20.colors)

    keys = [("psnr", "PSNR vs uncached (dB)"), ("ssim", "SSIM vs uncached")]
    if all(r.get("same_content") not in (None, "") for r in rows):
        keys.append(("same_content", "same content (judge)"))
    fig, axes = plt.subplots(len(keys), 2, figsize=(12, 4.25 * len(keys)), sharey="row")

    def curve(r):  # cache-dit's DBCache: one curve per Fn/Bn setting
        return f"{r['method']} {r['setting'].split(':')[0]}" if r["method"].startswith("cachedit-") else r["method"]

    work = _have_block_steps(rows)
    for name in dict.fromkeys(curve(r) for r in rows if r["method"] != "none"):
        mine = [r for r in rows if curve(r) == name and float(r["computed"]) <= float(r["steps"])]
        for (i, (key, _)), (j, speed) in itertools.product(enumerate(keys), enumerate(("ideal", "measured"))):
            x = [_ideal(r, work) if speed == "ideal" else float(r["speedup"]) for r in mine]
            axes[i][j].plot(x, [float(r[key]) for r in mine], marker="o", label=name)
    ideal = "ideal speedup (steps / " + ("blocks run, in steps)" if work else "computed steps)")
    for (i, (_, label)), (j, xlabel) in itertools.product(
            enumerate(keys), enumerate((ideal, "measured speedup (uncached wall time / wall time)"))):
        axes[i][j].set_xlabel(xlabel)
        axes[i][j].set_ylabel(label)
        axes[i][j].set_xscale("log")  # a cache that skips almost everything would squash the others' curves
        axes[i][j].xaxis.set_major_locator(matplotlib.ticker.FixedLocator([1, 1.5, 2, 3, 4, 6, 10, 20, 50]))
        axes[i][j].xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        axes[i][j].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes[i][j].grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
