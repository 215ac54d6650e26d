"""Checks on Tencent HunyuanVideo-I2V's own transformer, in a process of its own (its ``hyvideo`` package is not
the text-to-video one): ``HUNYUANVIDEO_ROOT=<I2V checkout> python tests/support/i2v_worker.py CONDITION OUT.json``.

``... i2v_worker.py model-base ROOT OUT.json`` writes the tiny model base of ``sample_image2video.py`` instead
(``tiny_checkpoints.make_tiny_i2v_model_base``), for the CLI tests.

For ``token_replace`` and ``latent_concat``, with tiny random weights on CPU and the denoising loop of I2V's
pipeline (the image latent replaces the first latent frame at every step, or comes in as channels with a mask):
- the indicator the cache takes equals the tensor the first double block feeds its attention (``img_attn_qkv``);
- threshold 0 is bit-identical to the unpatched transformer;
- decisions and outputs equal a re-implementation of the rule that computes the token-replace modulation itself.
"""

import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tinyhv.upstream_cpu import hyvideo_cpu as hc  # noqa: E402

hc.add_hunyuanvideo_to_path()
hc.install_cpu_standins()

import teacache_sample_video as tc  # noqa: E402
from hyvideo.diffusion.schedulers import FlowMatchDiscreteScheduler  # noqa: E402
from reference_rule import HYVIDEO_I2V, ReferenceTeaCache, hyvideo_i2v_modulated, record_first  # noqa: E402

STEPS = 20


def build(condition):
    model, _ = hc.make_tiny_transformer(seed=0, args_overrides=dict(i2v_condition_type=condition,
                                                                    gradient_checkpoint=False))
    return model


def denoise(call, inputs, image, condition, outputs=None):
    """I2V's pipeline loop (CFG batched in one call), with upstream's scheduler."""
    scheduler = FlowMatchDiscreteScheduler(shift=7.0, reverse=True, solver="euler")
    scheduler.set_timesteps(STEPS)
    kw = dict(inputs)
    x = kw.pop("x")[:, :hc.LATENT_CHANNELS]
    kw.pop("t")
    for t in scheduler.timesteps:
        model_in = hc.i2v_model_input(x, image, condition)
        if condition == "token_replace":
            x = model_in  # the pipeline keeps the image in the latents' first frame
        out = call(model_in, t.expand(x.shape[0]), **kw)["x"]
        if outputs is not None:
            outputs.append(out)
        if condition == "token_replace":
            x = torch.cat([x[:, :, :1], scheduler.step(out[:, :, 1:], t, x[:, :, 1:], return_dict=False)[0]], dim=2)
        else:
            x = scheduler.step(out, t, x, return_dict=False)[0]
    return x


@torch.no_grad()
def main(condition: str, out_path: str) -> None:
    model = build(condition)
    inputs = hc.make_tiny_inputs(model, batch=2, t=3, h=8, w=8, text_len=8, seed=0)
    image = torch.randn(1, hc.LATENT_CHANNELS, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    result = {"condition": condition, "image_condition": tc._HunyuanVideoAdapter(model).image_condition}

    # the CLI recognises the checkout and takes sample_image2video.py's flags with the cache's
    from hyvideo import config as hy_config

    args = tc.parse_args(["--model", hc.TINY_MODEL_NAME, "--i2v-mode",
                          "--i2v-image-path", "first.png", "--i2v-condition-type", condition, "--i2v-stability",
                          "--use-lora", "--lora-path", "lora.safetensors", "--lora-scale", "0.5",
                          "--ulysses-degree", "1", "--rel-l1-thresh", "0.1", "--teacache-rule", "fitted"])
    try:  # refused in one line before any loading where there is no given first frame
        tc.parse_args(["--model", hc.TINY_MODEL_NAME, "--i2v-mode", "--i2v-condition-type", "latent_concat",
                       "--teacache-first-frame", "exclude"])
    except SystemExit as exc:
        result["exclude_without_token_replace_exit"] = exc.code
    checkout = tc.recognise_checkout(hy_config)
    result["checkout"] = [checkout.repo, checkout.script]
    result["parsed"] = {k: getattr(args, k) for k in (*checkout.predict_args, "use_lora", "lora_path", "lora_scale",
                                                      "rel_l1_thresh", "teacache_rule")}

    # the indicator is what the first double block really computes
    block, seen = model.double_blocks[0], {}
    hooks = [block.register_forward_pre_hook(record_first(seen, "args")),
             block.img_attn_qkv.register_forward_pre_hook(record_first(seen, "qkv_in", 0))]
    x0 = inputs["x"][:, :hc.LATENT_CHANNELS]
    model_in = x0 if condition == "token_replace" else torch.cat([x0, torch.zeros_like(x0), x0[:, :1] * 0], 1)
    model(model_in, inputs["t"], **{k: v for k, v in inputs.items() if k not in ("x", "t")})
    for h in hooks:
        h.remove()
    modulated = tc._HunyuanVideoAdapter(model).modulated_input(block, seen["args"], {})
    result["indicator_vs_block_max_abs"] = float((modulated - seen["qkv_in"]).abs().max())
    plain = tc._modulate(block.img_norm1(seen["args"][0]), block.img_mod(seen["args"][2]))  # vec's alone
    result["plain_modulation_vs_block_rel"] = float((plain - seen["qkv_in"]).abs().mean() / seen["qkv_in"].abs().mean())

    # threshold 0: bit-identical
    cache = tc.enable_teacache(model, 0.0, num_steps=STEPS)
    zero = denoise(model, inputs, image, condition)
    cache.disable()
    result["threshold_zero_identical"] = bool(torch.equal(zero, denoise(build(condition), inputs, image, condition)))

    # decisions and outputs against the reference, over thresholds
    result["runs"] = []
    for thresh in (0.15, 0.3, 0.6, 1.0):
        cached_model = build(condition)
        cache = tc.enable_teacache(cached_model, thresh, num_steps=STEPS)
        outs, ref_outs = [], []
        denoise(cached_model, inputs, image, condition, outs)
        ref = ReferenceTeaCache(build(condition), STEPS, thresh, **HYVIDEO_I2V)
        denoise(ref, inputs, image, condition, ref_outs)
        result["runs"].append({
            "thresh": thresh, "computed_steps": cache.stats()["computed_steps"],
            "reference_computed_steps": [i for i, c in enumerate(ref.decisions) if c],
            "max_abs_output_diff": max(float((a - b).abs().max()) for a, b in zip(outs, ref_outs)),
        })
    if condition == "token_replace":  # the indicator without the first frame's tokens, as an option
        cached_model = build(condition)
        cache = tc.enable_teacache(cached_model, 0.3, num_steps=STEPS, first_frame="exclude")
        denoise(cached_model, inputs, image, condition)
        ref = ReferenceTeaCache(build(condition), STEPS, 0.3, **dict(
            HYVIDEO_I2V, modulated=lambda block, a, kw: hyvideo_i2v_modulated(block, a, kw)[:, a[10]:]))
        denoise(ref, inputs, image, condition)
        result["first_frame_excluded"] = {"computed_steps": cache.stats()["computed_steps"],
                                          "reference_computed_steps": [i for i, c in enumerate(ref.decisions) if c]}
    with tempfile.TemporaryDirectory() as tmp:  # --use-fp8: upstream's float8 block linears under the cache
        fp8 = lambda: hc.convert_to_fp8_(build(condition), Path(tmp) / "dit.pt")  # noqa: E731
        cached_model = fp8()
        cache = tc.enable_teacache(cached_model, 0.3, num_steps=STEPS)
        outs, ref_outs = [], []
        denoise(cached_model, inputs, image, condition, outs)
        ref = ReferenceTeaCache(fp8(), STEPS, 0.3, **HYVIDEO_I2V)
        denoise(ref, inputs, image, condition, ref_outs)
        result["fp8"] = {"weight_dtype": str(cached_model.double_blocks[0].img_attn_qkv.weight.dtype),
                         "computed_steps": cache.stats()["computed_steps"],
                         "reference_computed_steps": [i for i, c in enumerate(ref.decisions) if c],
                         "max_abs_output_diff": max(float((a - b).abs().max()) for a, b in zip(outs, ref_outs))}
    Path(out_path).write_text(json.dumps(result, indent=1))


def model_base(root: str, out_path: str) -> None:
    """The tiny model base of ``sample_image2video.py``, written under ``root``; its description to ``out_path``."""
    from support.tiny_checkpoints import make_tiny_i2v_model_base

    Path(out_path).write_text(json.dumps(make_tiny_i2v_model_base(Path(root)), indent=1))


if __name__ == "__main__":
    (model_base if sys.argv[1] == "model-base" else main)(*sys.argv[-2:])
