#!/usr/bin/env python3
"""TeaCache's ComfyUI node against ComfyUI's own EasyCache and LazyCache nodes, in a real ComfyUI (``--comfyui``:
a Comfy-Org/ComfyUI checkout), on the shipped tiny trained HunyuanVideo (``assets/tiny_hunyuan_video``).

The tiny model's diffusers weights are converted to ComfyUI's HunyuanVideo layout (fused qkv, ComfyUI's names),
loaded into ComfyUI's own ``HunyuanVideo`` class (built from the model's config: ComfyUI's checkpoint detection
assumes the real model's head width), and sampled with ``comfy.sample.sample`` as the shipped sampling does it
(50 euler steps, shift 3, embedded guidance 1, cfg 1). The model predicts the clean clip (x0), so its model
sampling is ComfyUI's flow schedule with an x0 output. Each cache is then swept over its threshold; for each
setting: the computed transformer calls (counted inside the first block), wall time, and PSNR/SSIM of the clip
against the uncached one of the same prompt and seed (mean and worst prompt).

    python benchmarks/bench_comfyui.py --comfyui /path/to/ComfyUI [--prompts 8] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "comfyui")]

# diffusers HunyuanVideoTransformer3DModel name -> ComfyUI HunyuanVideo name (first match wins)
_RENAMES = [
    (r"^x_embedder\.proj\.", "img_in.proj."),
    (r"^time_text_embed\.timestep_embedder\.linear_1\.", "time_in.in_layer."),
    (r"^time_text_embed\.timestep_embedder\.linear_2\.", "time_in.out_layer."),
    (r"^time_text_embed\.guidance_embedder\.linear_1\.", "guidance_in.in_layer."),
    (r"^time_text_embed\.guidance_embedder\.linear_2\.", "guidance_in.out_layer."),
    (r"^time_text_embed\.text_embedder\.linear_1\.", "vector_in.in_layer."),
    (r"^time_text_embed\.text_embedder\.linear_2\.", "vector_in.out_layer."),
    (r"^context_embedder\.proj_in\.", "txt_in.input_embedder."),
    (r"^context_embedder\.time_text_embed\.timestep_embedder\.linear_1\.", "txt_in.t_embedder.in_layer."),
    (r"^context_embedder\.time_text_embed\.timestep_embedder\.linear_2\.", "txt_in.t_embedder.out_layer."),
    (r"^context_embedder\.time_text_embed\.text_embedder\.linear_1\.", "txt_in.c_embedder.in_layer."),
    (r"^context_embedder\.time_text_embed\.text_embedder\.linear_2\.", "txt_in.c_embedder.out_layer."),
    (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.attn\.to_out\.0\.",
     r"txt_in.individual_token_refiner.blocks.\1.self_attn.proj."),
    (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.ff\.net\.0\.proj\.",
     r"txt_in.individual_token_refiner.blocks.\1.mlp.0."),
    (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.ff\.net\.2\.",
     r"txt_in.individual_token_refiner.blocks.\1.mlp.2."),
    (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.norm_out\.linear\.",
     r"txt_in.individual_token_refiner.blocks.\1.adaLN_modulation.1."),
    (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.(norm[12])\.",
     r"txt_in.individual_token_refiner.blocks.\1.\2."),
    (r"^transformer_blocks\.(\d+)\.norm1\.linear\.", r"double_blocks.\1.img_mod.lin."),
    (r"^transformer_blocks\.(\d+)\.norm1_context\.linear\.", r"double_blocks.\1.txt_mod.lin."),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_q\.weight", r"double_blocks.\1.img_attn.norm.query_norm.scale"),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_k\.weight", r"double_blocks.\1.img_attn.norm.key_norm.scale"),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_added_q\.weight", r"double_blocks.\1.txt_attn.norm.query_norm.scale"),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_added_k\.weight", r"double_blocks.\1.txt_attn.norm.key_norm.scale"),
    (r"^transformer_blocks\.(\d+)\.attn\.to_out\.0\.", r"double_blocks.\1.img_attn.proj."),
    (r"^transformer_blocks\.(\d+)\.attn\.to_add_out\.", r"double_blocks.\1.txt_attn.proj."),
    (r"^transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.", r"double_blocks.\1.img_mlp.0."),
    (r"^transformer_blocks\.(\d+)\.ff\.net\.2\.", r"double_blocks.\1.img_mlp.2."),
    (r"^transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj\.", r"double_blocks.\1.txt_mlp.0."),
    (r"^transformer_blocks\.(\d+)\.ff_context\.net\.2\.", r"double_blocks.\1.txt_mlp.2."),
    (r"^single_transformer_blocks\.(\d+)\.proj_out\.", r"single_blocks.\1.linear2."),
    (r"^single_transformer_blocks\.(\d+)\.attn\.norm_q\.weight", r"single_blocks.\1.norm.query_norm.scale"),
    (r"^single_transformer_blocks\.(\d+)\.attn\.norm_k\.weight", r"single_blocks.\1.norm.key_norm.scale"),
    (r"^single_transformer_blocks\.(\d+)\.norm\.linear\.", r"single_blocks.\1.modulation.lin."),
    (r"^proj_out\.", "final_layer.linear."),
]
# fused in ComfyUI: its name <- the diffusers names whose rows it stacks
_FUSED = [
    (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.attn\.to_([qkv])\.",
     r"txt_in.individual_token_refiner.blocks.\1.self_attn.qkv.", ("to_q", "to_k", "to_v")),
    (r"^transformer_blocks\.(\d+)\.attn\.to_([qkv])\.", r"double_blocks.\1.img_attn.qkv.", ("to_q", "to_k", "to_v")),
    (r"^transformer_blocks\.(\d+)\.attn\.add_([qkv])_proj\.", r"double_blocks.\1.txt_attn.qkv.",
     ("add_q_proj", "add_k_proj", "add_v_proj")),
    (r"^single_transformer_blocks\.(\d+)\.(attn\.to_[qkv]|proj_mlp)\.", r"single_blocks.\1.linear1.",
     ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
]


def diffusers_to_comfyui(state: dict) -> dict:
    """A diffusers HunyuanVideo transformer's state dict in ComfyUI's HunyuanVideo names."""
    out, fused = {}, {}
    for key, value in state.items():
        param = key.rsplit(".", 1)[1]
        if key.startswith("norm_out.linear."):  # diffusers (scale, shift), ComfyUI's LastLayer (shift, scale)
            scale, shift = value.chunk(2)
            out[f"final_layer.adaLN_modulation.1.{param}"] = torch.cat([shift, scale])
            continue
        for pattern, target, order in _FUSED:
            if re.match(pattern, key):
                part = next(o for o in order if f".{o}." in key)
                fused.setdefault(re.sub(pattern + r".*$", target, key) + param, {})[part] = (order, value)
                break
        else:
            for pattern, repl in _RENAMES:
                if re.match(pattern, key):
                    out[re.sub(pattern, repl, key)] = value
                    break
            else:
                raise KeyError(f"no ComfyUI name for diffusers parameter {key}")
    for name, parts in fused.items():
        order = next(iter(parts.values()))[0]
        out[name] = torch.cat([parts[o][1] for o in order])
    return out


# -- the tiny model in ComfyUI ---------------------------------------------------------------------------------
# ComfyUI's HunyuanVideo has a temporal patch of 1 (its final layer projects to patch_h * patch_w * channels); the
# tiny model patches 2 frames at once. The same computation in ComfyUI's layout: the clip's frame pairs folded into
# the channels, (B, C, T, H, W) -> (B, 2C, T/2, H, W) with channel 2c + dt = frame 2t + dt of channel c, the patch
# embedding's (2, 2, 2) kernel the matching (1, 2, 2) kernel over 2C channels; the final layer's features are
# already (c, dt, h, w)-ordered, as ComfyUI's reshape then reads them with 2C output channels.

def fold(x: torch.Tensor, pt: int = 2) -> torch.Tensor:
    b, ch, t, h, w = x.shape
    return x.reshape(b, ch, t // pt, pt, h, w).transpose(2, 3).reshape(b, ch * pt, t // pt, h, w)


def unfold(x: torch.Tensor, pt: int = 2) -> torch.Tensor:
    b, ch, t, h, w = x.shape
    return x.reshape(b, ch // pt, pt, t, h, w).transpose(2, 3).reshape(b, ch // pt, t * pt, h, w)


def comfyui_model(c, tiny, shift: float):
    """ComfyUI's HunyuanVideo with the tiny model's weights, in a ModelPatcher, its model sampling the flow schedule
    (``shift``) with an x0 output, its latent format neutral (the tiny model works in pixel space)."""
    import comfy.latent_formats
    import comfy.model_patcher
    import comfy.model_sampling
    import comfy.supported_models

    t = tiny.config["transformer"]
    pt = t["patch_size_t"]
    unet_config = dict(image_model="hunyuan_video", in_channels=t["in_channels"] * pt,
                       out_channels=t["out_channels"] * pt,
                       vec_in_dim=t["pooled_projection_dim"], context_in_dim=t["text_embed_dim"],
                       hidden_size=t["num_attention_heads"] * t["attention_head_dim"], mlp_ratio=t["mlp_ratio"],
                       num_heads=t["num_attention_heads"], depth=t["num_layers"],
                       depth_single_blocks=t["num_single_layers"], axes_dim=list(t["rope_axes_dim"]),
                       theta=int(t["rope_theta"]), patch_size=[1, t["patch_size"], t["patch_size"]],
                       qkv_bias=True, guidance_embed=t["guidance_embeds"], byt5=False, meanflow=False)
    if "vision_in_dim" in c.model.HunyuanVideoParams.__dataclass_fields__:
        unet_config.update(use_cond_type_embedding=False, vision_in_dim=None, meanflow_sum=False)
    config = comfy.supported_models.HunyuanVideo(unet_config)
    config.latent_format = comfy.latent_formats.LatentFormat()  # scale 1, no shift: pixels in [-1, 1]
    model = config.get_model({})
    state = diffusers_to_comfyui(tiny.transformer.state_dict())
    w = state["img_in.proj.weight"]  # (D, C, pt, ph, pw) -> (D, C * pt, 1, ph, pw), channel c * pt + dt
    state["img_in.proj.weight"] = w.reshape(w.shape[0], w.shape[1] * pt, 1, *w.shape[3:])
    own = model.diffusion_model.state_dict()
    for key in own.keys() - state.keys():  # ComfyUI has 2 token-refiner blocks, the tiny model 1: an identity
        if not key.startswith("txt_in.individual_token_refiner.blocks."):  # block (its gates' projection zero)
            continue
        state[key] = torch.ones_like(own[key]) if ".norm" in key and key.endswith("weight") else \
            torch.zeros_like(own[key])
    missing, unexpected = model.diffusion_model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"conversion: missing {missing}, unexpected {unexpected}")
    model.diffusion_model.float().eval()

    class FlowX0(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        def calculate_denoised(self, sigma, model_output, model_input):
            return model_output  # the tiny model predicts the clean clip

    sampling = FlowX0(config)
    sampling.set_parameters(shift=shift, multiplier=1000)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                               offload_device=torch.device("cpu"))
    patcher.add_object_patch("model_sampling", sampling)
    return patcher


def conditioning(tiny, prompt: str, guidance: float):
    """The tiny text encoder's output as a ComfyUI conditioning; padding dropped (ComfyUI's token refiner averages
    over all tokens given, diffusers' over the unmasked ones: without padding both agree)."""
    cond = tiny.encode(prompt)
    n = int(cond["encoder_attention_mask"].sum())
    return [[cond["encoder_hidden_states"][:, :n], {"pooled_output": cond["pooled_projections"],
                                                     "guidance": guidance}]]


def check_conversion(c, tiny, patcher) -> float:
    """Largest difference between the diffusers transformer and ComfyUI's on the same input (clean-clip outputs)."""
    g = torch.Generator().manual_seed(0)
    t, h, w = tiny.video_shape
    x = torch.randn(1, 3, t, h, w, generator=g)
    prompt = "a big red circle moves left on a dark background"
    cond = tiny.encode(prompt)
    n = int(cond["encoder_attention_mask"].sum())
    cond = {k: v[:, :n] if k != "pooled_projections" else v for k, v in cond.items()}
    worst = 0.0
    for sigma in (0.9, 0.5, 0.1):
        ts = torch.tensor([sigma * 1000.0])
        with torch.no_grad():
            ref = tiny.transformer(**tiny.transformer_inputs(x, ts, cond, 1.0), return_dict=False)[0]
            out = unfold(patcher.model.diffusion_model(fold(x), ts, context=cond["encoder_hidden_states"],
                                                       y=cond["pooled_projections"], guidance=torch.tensor([1.0]),
                                                       transformer_options={}))
        worst = max(worst, float((ref - out).abs().max()))
    return worst


# -- the comparison ------------------------------------------------------------------------------------------------

def prompts(n: int) -> list:
    """``n`` prompts of the tiny model's grammar, spread over its colours, shapes, directions, sizes, backgrounds."""
    from tinyhv import data

    out, i = [], 0
    while len(out) < n:
        out.append(f"a {list(data.SIZES)[i % 2]} {list(data.COLOURS)[i % 4]} {list(data.SHAPES)[(i // 2) % 3]} moves "
                   f"{list(data.DIRECTIONS)[(i // 3) % 4]} on a {list(data.BACKGROUNDS)[(i // 5) % 2]} background")
        i += 1
    return out


class CallCounter:
    """Counts the transformer calls whose blocks ran (a hook inside the first block: a skipped call never
    reaches it, whichever cache skipped it)."""

    def __init__(self, patcher):
        self.count = 0
        self.handle = patcher.model.diffusion_model.double_blocks[0].img_attn.qkv.register_forward_hook(self.hook)

    def hook(self, *_):
        self.count += 1


def sample_clip(c, patcher, tiny, prompt, seed, steps, guidance):
    t, h, w = tiny.video_shape
    noise = fold(torch.randn(1, 3, t, h, w, generator=torch.Generator().manual_seed(seed)))
    cond = conditioning(tiny, prompt, guidance)
    start = time.perf_counter()
    with torch.no_grad():
        out = c.sample.sample(patcher, noise, steps, 1.0, "euler", "simple", cond, cond, torch.zeros_like(noise),
                              seed=seed, disable_pbar=True)
    from tinyhv import data

    return data.from_model_layout(((unfold(out) + 1) / 2).clamp(0, 1))[0], time.perf_counter() - start


def methods(c, pack, base, calibrated: str):
    """(method, setting, patched model) for every setting of the sweep."""
    from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode

    node = pack.NODE_CLASS_MAPPINGS["TeaCacheHunyuanVideo"]()
    for thresh in (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45):
        yield "TeaCache (published coefficients)", f"rel_l1_thresh={thresh}", node.patch(base, thresh)[0]
    for speedup in (1.5, 2.0, 2.5, 3.0, 4.0):
        yield "TeaCache (calibrated)", f"target_speedup={speedup}", \
            node.patch(base, 0.15, target_speedup=speedup, profile=calibrated)[0]
    for speedup in (2.0, 3.0, 4.0):
        yield "TeaCache (calibrated, fitted rule)", f"target_speedup={speedup}", \
            node.patch(base, 0.15, target_speedup=speedup, profile=calibrated, rule="fitted")[0]
    for name, cls in (("EasyCache (ComfyUI)", EasyCacheNode), ("LazyCache (ComfyUI)", LazyCacheNode)):
        for thresh in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5):
            yield name, f"reuse_threshold={thresh}", cls.execute(base, thresh, 0.15, 0.95, False).result[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", help="a Comfy-Org/ComfyUI checkout (required unless --replot)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--calibration-prompts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (the fastest counts)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "comfyui"))
    parser.add_argument("--replot", action="store_true", help="only redo the table and plot from --out's runs.json")
    args = parser.parse_args(argv)
    if args.replot:
        rows = json.loads((Path(args.out) / "runs.json").read_text())["rows"]
        table = summarize(rows)
        (Path(args.out) / "summary.md").write_text(table)
        print(table)
        plot(rows, Path(args.out) / "comfyui_caches.png")
        return 0
    if not args.comfyui:
        parser.error("--comfyui is required")

    import comfy_host
    from standin_host import load_custom_node
    from tinyhv import metrics
    from tinyhv.model import TinyHunyuanVideo

    c = comfy_host.import_comfy(args.comfyui)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import folder_paths
    except ImportError:
        from comfy.cmd import folder_paths
    folder_paths.add_model_folder_path("teacache_profiles", str(out / "profiles"))
    folder_paths.set_output_directory(tempfile.mkdtemp(prefix="comfy_output_"))  # the per-run reports: not kept
    pack = load_custom_node(REPO / "comfyui", "custom_nodes_teacache_bench")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    tiny = TinyHunyuanVideo.from_pretrained()
    s = tiny.config["sampling"]
    base = comfyui_model(c, tiny, s["shift"])
    diff = check_conversion(c, tiny, base)
    print(f"conversion: largest difference to the diffusers transformer {diff:.2e}", flush=True)
    counter = CallCounter(base)
    eval_prompts = prompts(args.prompts)
    calib_prompts = prompts(args.prompts + args.calibration_prompts)[args.prompts:]

    # calibration: uncached runs of other prompts, through the calibration node
    profile = "tiny_hunyuan_video_comfyui.json"
    (out / "profiles" / profile).unlink(missing_ok=True)
    calibrate = pack.NODE_CLASS_MAPPINGS["TeaCacheCalibrateHunyuanVideo"]().patch(base, profile)[0]
    for i, prompt in enumerate(calib_prompts):
        sample_clip(c, calibrate, tiny, prompt, 1000 + i, args.steps, s["guidance"])

    sample_clip(c, base, tiny, eval_prompts[0], 0, args.steps, s["guidance"])  # warm-up
    reference, rows = {}, []
    for i, prompt in enumerate(eval_prompts):
        counter.count = 0
        clip, seconds = sample_clip(c, base, tiny, prompt, i, args.steps, s["guidance"])
        reference[prompt] = clip
        rows.append(dict(method="uncached", setting="", prompt=prompt, computed=counter.count, calls=counter.count,
                         seconds=seconds, psnr=float("inf"), ssim=1.0))
    calls = rows[0]["calls"]

    def wall(patched) -> float:
        """Wall time of one clip: the fastest of ``--repeats`` runs of the first prompt (the CPU may be shared)."""
        return min(sample_clip(c, patched, tiny, eval_prompts[0], 0, args.steps, s["guidance"])[1]
                   for _ in range(args.repeats))

    uncached_s = wall(base)
    for method, setting, patched in methods(c, pack, base, profile):
        timing = wall(patched)
        for i, prompt in enumerate(eval_prompts):
            counter.count = 0
            clip, seconds = sample_clip(c, patched, tiny, prompt, i, args.steps, s["guidance"])
            rows.append(dict(method=method, setting=setting, prompt=prompt, computed=counter.count, calls=calls,
                             seconds=seconds, wall_s=timing, psnr=metrics.psnr(clip, reference[prompt]),
                             ssim=metrics.ssim(clip, reference[prompt])))
        last = rows[-len(eval_prompts):]
        print(f"{method:36s} {setting:22s} computed {sum(r['computed'] for r in last) / len(last):5.1f}/{calls} "
              f"PSNR {min(r['psnr'] for r in last):6.2f} worst", flush=True)
    uncached_s = min(uncached_s, wall(base))  # before and after the sweep
    for r in rows:
        if r["method"] == "uncached":
            r["wall_s"] = uncached_s
    (out / "runs.json").write_text(json.dumps({"conversion_max_abs_diff": diff, "steps": args.steps,
                                               "prompts": eval_prompts, "calibration_prompts": calib_prompts,
                                               "rows": rows}, indent=1))
    table = summarize(rows)
    (out / "summary.md").write_text(table)
    print(table)
    plot(rows, out / "comfyui_caches.png")
    return 0


def _groups(rows):
    groups = {}
    for r in rows:
        groups.setdefault((r["method"], r["setting"]), []).append(r)
    return groups


def summarize(rows) -> str:
    """One line per setting: computed calls, speedups (calls and wall time), PSNR/SSIM mean and worst prompt."""
    base_time = next(r["wall_s"] for r in rows if r["method"] == "uncached")
    lines = ["| method | setting | computed calls | speedup (calls) | speedup (wall) | PSNR mean | PSNR worst | "
             "SSIM mean | SSIM worst |", "|---|---|---|---|---|---|---|---|---|"]
    for (method, setting), group in _groups(rows).items():
        if method == "uncached":
            continue
        n = len(group)
        computed = sum(r["computed"] for r in group) / n
        seconds = group[0]["wall_s"]
        lines.append(f"| {method} | {setting} | {computed:.1f}/{group[0]['calls']} | "
                     f"{group[0]['calls'] / computed:.2f}x | {base_time / seconds:.2f}x | "
                     f"{sum(r['psnr'] for r in group) / n:.2f} | {min(r['psnr'] for r in group):.2f} | "
                     f"{sum(r['ssim'] for r in group) / n:.4f} | {min(r['ssim'] for r in group):.4f} |")
    return "\n".join(lines) + "\n"


def plot(rows, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    base_time = next(r["wall_s"] for r in rows if r["method"] == "uncached")
    curves = {}
    for (method, _), group in _groups(rows).items():
        if method == "uncached" or any(r["psnr"] == float("inf") for r in group):
            continue
        n = len(group)
        speed = group[0]["calls"] / (sum(r["computed"] for r in group) / n)
        curves.setdefault(method, []).append((speed, base_time / group[0]["wall_s"],
                                              sum(r["psnr"] for r in group) / n, min(r["psnr"] for r in group)))
    for method, points in curves.items():
        for row, x in enumerate((0, 1)):
            pts = sorted(points, key=lambda p: p[x])
            for col, y in enumerate((2, 3)):
                axes[row][col].plot([p[x] for p in pts], [p[y] for p in pts], "o-", label=method)
    for row, xlabel in enumerate(("speedup in transformer calls (uncached / computed)",
                                  "speedup in wall time (this CPU, tiny model)")):
        for col, what in enumerate(("mean", "worst prompt")):
            ax = axes[row][col]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"PSNR vs uncached, {what} (dB)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Tiny trained HunyuanVideo sampled in ComfyUI (50 euler steps): TeaCache vs ComfyUI's caches")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
