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

Under ``torchrun --nproc_per_node=2 ... v15_worker.py sp OUT.json`` instead: 1.5's own sequence parallelism
(``initialize_parallel_state(sp=2)``, image tokens split over the ranks, its all-to-all attention) on gloo, with the
statistics reduced over its ``sp_group`` (``process_group="auto"``) and, to show the reduction matters, each
rank's own indicator traced uncached. Rank 0 writes each rank's decisions, indicators and final latents.
"""

import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tinyhv.upstream_cpu import hyvideo_cpu as hc  # noqa: E402

hc.add_hunyuanvideo_to_path()

from tinyhv.upstream_cpu.hyvideo15_cpu import build, denoise, inputs, install_cpu_parallel_state  # noqa: E402

import teacache_sample_video as tc  # noqa: E402
from reference_rule import HYVIDEO15, ReferenceTeaCache  # noqa: E402

@torch.no_grad()
def main(case: str, out_path: str) -> None:
    install_cpu_parallel_state()
    steps, meanflow = (8, True) if case == "meanflow" else (20, False)
    inp = inputs(case)
    model = build(case)
    result = {"case": case, "steps": steps}

    adapter = tc._HunyuanVideoAdapter(model)
    result["adapter"] = {"num_blocks": len(adapter.blocks), "version": tc.find_model(model).version,
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
        final = denoise(cached, inp, steps, meanflow, outs)
        ref = ReferenceTeaCache(build(case), steps, thresh, **HYVIDEO15)
        denoise(ref, inp, steps, meanflow, ref_outs)
        if thresh == SP_THRESH:
            result["final_latents"] = final.flatten().tolist()
        result["runs"].append({
            "thresh": thresh, "computed_steps": cache.stats()["computed_steps"],
            "reference_computed_steps": [i for i, c in enumerate(ref.decisions) if c],
            "max_abs_output_diff": max(float((a - b).abs().max()) for a, b in zip(outs, ref_outs)),
        })
    Path(out_path).write_text(json.dumps(result, indent=1))


SP_THRESH = 0.3


@torch.no_grad()
def main_sp(out_path: str) -> None:
    import torch.distributed as dist

    install_cpu_parallel_state()
    from hyvideo.commons.parallel_states import initialize_parallel_state

    dims = initialize_parallel_state(sp=int(os.environ["WORLD_SIZE"]))
    inp, result = inputs("t2v"), {"world_size": dims.world_size, "sp": dims.sp}
    # unreduced, ranks would decide apart and then block in the attention's collectives: trace it uncached instead
    for name, thresh, group in (("reduced", SP_THRESH, "auto"), ("unreduced", 0.0, None)):
        model = build("t2v")
        cache = tc.enable_teacache(model, thresh, num_steps=20, process_group=group, trace=not thresh)
        final = denoise(model, inp, 20, False)
        mine = {"computed_steps": cache.stats()["computed_steps"], "rel_l1": cache.stats()["rel_l1"],
                "sequence_parallel_reduced": cache.report()["sequence_parallel_reduced"],
                "final_latents": final.flatten().tolist()}
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
        result[name] = ranks
    if dist.get_rank() == 0:
        Path(out_path).write_text(json.dumps(result))
    dist.barrier()


if __name__ == "__main__":
    main_sp(sys.argv[2]) if sys.argv[1] == "sp" else main(*sys.argv[1:3])
