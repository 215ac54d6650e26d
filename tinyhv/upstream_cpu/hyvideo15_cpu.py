"""Run Tencent-Hunyuan/HunyuanVideo-1.5's transformer on CPU with tiny (or mid-size) random weights (the tests,
benchmarks/bench_upstream.py).

Needs ``HUNYUANVIDEO_ROOT`` at a HunyuanVideo-1.5 checkout (its ``hyvideo`` package is not HunyuanVideo's). Its
transformer has its own "torch" attention, so no attention stand-in is needed; its parallel state builds device
meshes on "cuda" even for one rank, which ``install_cpu_parallel_state`` sends to the CPU (gloo).
"""

import os

import torch

from . import free_port
from . import hyvideo_cpu as hc

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


#: tiny: hidden 64 = 4 heads x 16 (rope 4+6+6), 3 double blocks, no single blocks (as 1.5)
TINY = dict(hidden_size=64, heads_num=4, mm_double_blocks_depth=3, rope_dim_list=[4, 6, 6])


def build(case: str, seed: int = 0, dtype=torch.float32, device="cpu", **config):
    """Upstream's ``HunyuanVideo_1_5_DiffusionTransformer`` (``TINY`` unless ``config`` says otherwise), its own
    "torch" attention, random weights; ``case`` "meanflow" adds the ``timestep_r`` embedding."""
    from hyvideo.models.transformers.hunyuanvideo_1_5_transformer import HunyuanVideo_1_5_DiffusionTransformer

    torch.manual_seed(seed)
    model = HunyuanVideo_1_5_DiffusionTransformer(
        patch_size=[1, 2, 2], in_channels=CHANNELS, concat_condition=True, out_channels=CHANNELS,
        mm_single_blocks_depth=0, text_states_dim=HIDDEN_TEXT, text_states_dim_2=8, text_projection="single_refiner",
        attn_mode="torch", vision_projection="linear", vision_states_dim=VISION, use_meanflow=case == "meanflow",
        **{**TINY, **config})
    hc.randomize_weights_(model, seed)
    return model.to(device=device, dtype=dtype).eval()


def inputs(case: str, batch: int = 2, frames: int = 3, size: int = 8, text_len: int = 8, width: int = None):
    """The transformer's inputs as the pipeline builds them, for latents of ``frames`` x ``size`` x ``width``
    (default square): condition latents and mask (the first frame's latent for image-to-video, zeros otherwise),
    text states of a prompt and a shorter negative prompt (CFG batched), vision states (zeros for text-to-video)."""
    width = width or size
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(batch, text_len, dtype=torch.int64)
    mask[1, text_len - 3:] = 0  # the negative prompt is shorter
    image = torch.randn(1, CHANNELS, 1, size, width, generator=g)
    return dict(
        latents=torch.randn(1, CHANNELS, frames, size, width, generator=g),
        cond=torch.cat([image, torch.zeros(1, CHANNELS, frames - 1, size, width)], 2) if case == "i2v" else
        torch.zeros(1, CHANNELS, frames, size, width),
        mask=torch.cat([torch.ones(1, 1, 1, size, width), torch.zeros(1, 1, frames - 1, size, width)], 2)
        if case == "i2v" else torch.zeros(1, 1, frames, size, width),
        text_states=torch.randn(batch, text_len, HIDDEN_TEXT, generator=g), text_mask=mask,
        vision_states=torch.randn(batch, 4, VISION, generator=g) if case == "i2v" else torch.zeros(batch, 4, VISION),
        mask_type="i2v" if case == "i2v" else "t2v",
    )


def denoise(call, inp, steps, use_meanflow, outputs=None, after_step=None):
    """HunyuanVideo_1_5_Pipeline's loop: batched CFG (guidance 6), its scheduler (shift 7); ``after_step(i)`` is
    called after each step."""
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
        if after_step is not None:
            after_step(i)
    return latents
