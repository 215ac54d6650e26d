"""Checks on Tencent-Hunyuan/HunyuanVideo-1.5's own transformer (``HunyuanVideo_1_5_DiffusionTransformer``), in a
process of its own (its ``hyvideo`` package is not HunyuanVideo's):
``HUNYUANVIDEO_ROOT=<1.5 checkout> python tests/support/v15_worker.py CASE OUT.json`` with CASE ``t2v``, ``i2v`` or
``meanflow`` (a step distilled model: ``timestep_r`` is the next step's timestep, 8 steps).

Tiny random weights on CPU (its own ``attn_mode="torch"`` attention; its parallel state built on a one-rank gloo
mesh instead of "cuda"), fed as its pipeline feeds it: ``[latents, condition latents, mask]`` in channels, CFG
batched in one call, vision states for image-to-video, its flow-matching scheduler. Records:
- the indicator against the tensor the first double block feeds its attention (``img_attn_q``);
- threshold 0 against the unpatched transformer (bit-identical);
- decisions and outputs against the reference rule, over thresholds.
"""

import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support import hyvideo_cpu as hc  # noqa: E402
from support.launch import free_port  # noqa: E402

hc.add_hunyuanvideo_to_path()

import teacache_sample_video as tc  # noqa: E402
from reference_rule import HYVIDEO15, ReferenceTeaCache  # noqa: E402

CHANNELS, HIDDEN_TEXT, VISION = 4, 16, 8


def install_cpu_parallel_state() -> None:
    """1.5 builds its parallel state's device meshes on "cuda" (even with one rank); build them on the CPU (gloo)."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    from hyvideo.commons import parallel_states

    original = parallel_states.ParallelDims.build_mesh
    parallel_states.ParallelDims.build_mesh = lambda self, device_type: original(self, "cpu")


def build(case: str, seed: int = 0):
    from hyvideo.models.transformers.hunyuanvideo_1_5_transformer import HunyuanVideo_1_5_DiffusionTransformer

    torch.manual_seed(seed)
    model = HunyuanVideo_1_5_DiffusionTransformer(
        patch_size=[1, 2, 2], in_channels=CHANNELS, concat_condition=True, out_channels=CHANNELS, hidden_size=64,
        heads_num=4, mm_double_blocks_depth=3, mm_single_blocks_depth=0, rope_dim_list=[4, 6, 6],
        text_states_dim=HIDDEN_TEXT, text_states_dim_2=8, text_projection="single_refiner", attn_mode="torch",
        vision_projection="linear", vision_states_dim=VISION, use_meanflow=case == "meanflow")
    hc.randomize_weights_(model, seed)
    return model.eval()


def inputs(case: str, batch: int = 2, frames: int = 3, size: int = 8, text_len: int = 8):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(batch, text_len, dtype=torch.int64)
    mask[1, text_len - 3:] = 0  # the negative prompt is shorter
    image = torch.randn(1, CHANNELS, 1, size, size, generator=g)
    return dict(
        latents=torch.randn(1, CHANNELS, frames, size, size, generator=g),
        cond=torch.cat([image, torch.zeros(1, CHANNELS, frames - 1, size, size)], 2) if case == "i2v" else
        torch.zeros(1, CHANNELS, frames, size, size),
        mask=torch.cat([torch.ones(1, 1, 1, size, size), torch.zeros(1, 1, frames - 1, size, size)], 2)
        if case == "i2v" else torch.zeros(1, 1, frames, size, size),
        text_states=torch.randn(batch, text_len, HIDDEN_TEXT, generator=g), text_mask=mask,
        vision_states=torch.randn(batch, 4, VISION, generator=g) if case == "i2v" else torch.zeros(batch, 4, VISION),
        mask_type="i2v" if case == "i2v" else "t2v",
    )


def denoise(call, inp, steps, use_meanflow, outputs=None):
    """HunyuanVideo_1_5_Pipeline's loop: batched CFG (guidance 6), its scheduler (shift 7)."""
    from hyvideo.schedulers.scheduling_flow_match_discrete import FlowMatchDiscreteScheduler

    scheduler = FlowMatchDiscreteScheduler(shift=7.0, reverse=True, solver="euler")
    scheduler.set_timesteps(steps)
    timesteps, latents = scheduler.timesteps, inp["latents"]
    for i, t in enumerate(timesteps):
        model_in = torch.cat([torch.cat([latents, inp["cond"], inp["mask"]], dim=1)] * 2)
        t_r = None
        if use_meanflow:
            t_r = (torch.tensor([0.0]) if i == len(timesteps) - 1 else timesteps[i + 1]).repeat(2)
        out = call(model_in, t.repeat(2), inp["text_states"], None, inp["text_mask"], timestep_r=t_r,
                   vision_states=inp["vision_states"], mask_type=inp["mask_type"], return_dict=False)[0]
        if outputs is not None:
            outputs.append(out)
        uncond, cond = out.chunk(2)
        latents = scheduler.step(uncond + 6.0 * (cond - uncond), t, latents, return_dict=False)[0]
    return latents


@torch.no_grad()
def main(case: str, out_path: str) -> None:
    install_cpu_parallel_state()
    steps, meanflow = (8, True) if case == "meanflow" else (20, False)
    inp = inputs(case)
    model = build(case)
    result = {"case": case, "steps": steps}

    adapter = tc._HunyuanVideoAdapter(model)
    result["adapter"] = {"num_blocks": len(adapter.blocks), "version": adapter.version,
                         "single_blocks": len(model.single_blocks)}
    block, seen = model.double_blocks[0], {}
    def first(key, value):  # a pre-hook's record of its first call (returns None: the call is unchanged)
        seen.setdefault(key, value)

    hooks = [block.register_forward_pre_hook(lambda m, a, kw: first("kwargs", kw), with_kwargs=True),
             block.img_attn_q.register_forward_pre_hook(lambda m, a: first("q_in", a[0]))]
    denoise(model, inp, 1, meanflow)
    for h in hooks:
        h.remove()
    result["indicator_vs_block_max_abs"] = float(
        (adapter.modulated_input(block, (), seen["kwargs"]) - seen["q_in"]).abs().max())

    cache = tc.enable_teacache(model, 0.0, num_steps=steps)
    zero = denoise(model, inp, steps, meanflow)
    cache.disable()
    result["threshold_zero_identical"] = bool(torch.equal(zero, denoise(build(case), inp, steps, meanflow)))

    result["runs"] = []
    for thresh in (0.1, 0.3, 0.6, 1.2, 2.5):
        cached = build(case)
        cache = tc.enable_teacache(cached, thresh, num_steps=steps)
        outs, ref_outs = [], []
        denoise(cached, inp, steps, meanflow, outs)
        ref = ReferenceTeaCache(build(case), steps, thresh, **HYVIDEO15)
        denoise(ref, inp, steps, meanflow, ref_outs)
        result["runs"].append({
            "thresh": thresh, "computed_steps": cache.stats()["computed_steps"],
            "reference_computed_steps": [i for i, c in enumerate(ref.decisions) if c],
            "max_abs_output_diff": max(float((a - b).abs().max()) for a, b in zip(outs, ref_outs)),
        })
    Path(out_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
