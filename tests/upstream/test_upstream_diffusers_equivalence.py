"""One rule, two implementations: the same random weights in Tencent's ``HYVideoDiffusionTransformer`` and in
diffusers' ``HunyuanVideoTransformer3DModel`` take the same TeaCache decisions and give the same outputs.

The state dict is converted here (upstream names -> diffusers names; fused qkv / linear1 split; the final
layer's shift/scale halves swapped), the way diffusers' conversion script for HunyuanVideo does it.
Needs ``HUNYUANVIDEO_ROOT`` (a Tencent/HunyuanVideo checkout outside this repository); skipped otherwise.
"""

import re

import pytest

from conftest import checkout_root

checkout_root("HUNYUANVIDEO_ROOT", "Tencent/HunyuanVideo")

import torch  # noqa: E402
from diffusers import HunyuanVideoTransformer3DModel  # noqa: E402

from tinyhv.random_models import sample  # noqa: E402
from tinyhv.upstream_cpu import hyvideo_cpu as hc  # noqa: E402

hc.add_hunyuanvideo_to_path()
hc.install_cpu_standins()

import teacache_sample_video as tc  # noqa: E402

STEPS = 12

# upstream name pattern -> diffusers name, applied in order (first match wins)
_RENAMES = [
    (r"^img_in\.", "x_embedder."),
    (r"^time_in\.mlp\.0\.", "time_text_embed.timestep_embedder.linear_1."),
    (r"^time_in\.mlp\.2\.", "time_text_embed.timestep_embedder.linear_2."),
    (r"^guidance_in\.mlp\.0\.", "time_text_embed.guidance_embedder.linear_1."),
    (r"^guidance_in\.mlp\.2\.", "time_text_embed.guidance_embedder.linear_2."),
    (r"^vector_in\.in_layer\.", "time_text_embed.text_embedder.linear_1."),
    (r"^vector_in\.out_layer\.", "time_text_embed.text_embedder.linear_2."),
    (r"^txt_in\.input_embedder\.", "context_embedder.proj_in."),
    (r"^txt_in\.t_embedder\.mlp\.0\.", "context_embedder.time_text_embed.timestep_embedder.linear_1."),
    (r"^txt_in\.t_embedder\.mlp\.2\.", "context_embedder.time_text_embed.timestep_embedder.linear_2."),
    (r"^txt_in\.c_embedder\.", "context_embedder.time_text_embed.text_embedder."),
    (r"^txt_in\.individual_token_refiner\.blocks\.(\d+)\.self_attn_proj\.",
     r"context_embedder.token_refiner.refiner_blocks.\1.attn.to_out.0."),
    (r"^txt_in\.individual_token_refiner\.blocks\.(\d+)\.mlp\.fc1\.",
     r"context_embedder.token_refiner.refiner_blocks.\1.ff.net.0.proj."),
    (r"^txt_in\.individual_token_refiner\.blocks\.(\d+)\.mlp\.fc2\.",
     r"context_embedder.token_refiner.refiner_blocks.\1.ff.net.2."),
    (r"^txt_in\.individual_token_refiner\.blocks\.(\d+)\.adaLN_modulation\.1\.",
     r"context_embedder.token_refiner.refiner_blocks.\1.norm_out.linear."),
    (r"^txt_in\.individual_token_refiner\.blocks\.(\d+)\.(norm[12])\.",
     r"context_embedder.token_refiner.refiner_blocks.\1.\2."),
    (r"^double_blocks\.(\d+)\.img_mod\.linear\.", r"transformer_blocks.\1.norm1.linear."),
    (r"^double_blocks\.(\d+)\.txt_mod\.linear\.", r"transformer_blocks.\1.norm1_context.linear."),
    (r"^double_blocks\.(\d+)\.img_attn_q_norm\.", r"transformer_blocks.\1.attn.norm_q."),
    (r"^double_blocks\.(\d+)\.img_attn_k_norm\.", r"transformer_blocks.\1.attn.norm_k."),
    (r"^double_blocks\.(\d+)\.txt_attn_q_norm\.", r"transformer_blocks.\1.attn.norm_added_q."),
    (r"^double_blocks\.(\d+)\.txt_attn_k_norm\.", r"transformer_blocks.\1.attn.norm_added_k."),
    (r"^double_blocks\.(\d+)\.img_attn_proj\.", r"transformer_blocks.\1.attn.to_out.0."),
    (r"^double_blocks\.(\d+)\.txt_attn_proj\.", r"transformer_blocks.\1.attn.to_add_out."),
    (r"^double_blocks\.(\d+)\.img_mlp\.fc1\.", r"transformer_blocks.\1.ff.net.0.proj."),
    (r"^double_blocks\.(\d+)\.img_mlp\.fc2\.", r"transformer_blocks.\1.ff.net.2."),
    (r"^double_blocks\.(\d+)\.txt_mlp\.fc1\.", r"transformer_blocks.\1.ff_context.net.0.proj."),
    (r"^double_blocks\.(\d+)\.txt_mlp\.fc2\.", r"transformer_blocks.\1.ff_context.net.2."),
    (r"^single_blocks\.(\d+)\.linear2\.", r"single_transformer_blocks.\1.proj_out."),
    (r"^single_blocks\.(\d+)\.q_norm\.", r"single_transformer_blocks.\1.attn.norm_q."),
    (r"^single_blocks\.(\d+)\.k_norm\.", r"single_transformer_blocks.\1.attn.norm_k."),
    (r"^single_blocks\.(\d+)\.modulation\.linear\.", r"single_transformer_blocks.\1.norm.linear."),
    (r"^final_layer\.linear\.", "proj_out."),
]
# fused projections: upstream pattern -> (diffusers prefix, names of the row chunks)
_SPLITS = [
    (r"^txt_in\.individual_token_refiner\.blocks\.(\d+)\.self_attn_qkv\.",
     r"context_embedder.token_refiner.refiner_blocks.\1.attn.", ("to_q", "to_k", "to_v")),
    (r"^double_blocks\.(\d+)\.img_attn_qkv\.", r"transformer_blocks.\1.attn.", ("to_q", "to_k", "to_v")),
    (r"^double_blocks\.(\d+)\.txt_attn_qkv\.", r"transformer_blocks.\1.attn.",
     ("add_q_proj", "add_k_proj", "add_v_proj")),
    (r"^single_blocks\.(\d+)\.linear1\.", r"single_transformer_blocks.\1.",
     ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
]


def upstream_to_diffusers(state: dict, hidden_size: int) -> dict:
    out = {}
    for key, value in state.items():
        param = key.rsplit(".", 1)[1]
        if key.startswith("final_layer.adaLN_modulation.1."):  # upstream (shift, scale), diffusers (scale, shift)
            shift, scale = value.chunk(2)
            out[f"norm_out.linear.{param}"] = torch.cat([scale, shift])
            continue
        for pattern, prefix, names in _SPLITS:
            if re.match(pattern, key):
                sizes = [hidden_size] * 3 + [value.shape[0] - 3 * hidden_size] * (len(names) == 4)
                base = re.sub(pattern + r".*$", prefix, key)
                for name, chunk in zip(names, value.split(sizes)):
                    out[f"{base}{name}.{param}"] = chunk
                break
        else:
            for pattern, repl in _RENAMES:
                if re.match(pattern, key):
                    out[re.sub(pattern, repl, key)] = value
                    break
            else:
                raise KeyError(f"no diffusers name for upstream parameter {key}")
    return out


def twin_models():
    """The same random weights in upstream's tiny transformer and in diffusers' model of the same shape."""
    upstream, _ = hc.make_tiny_transformer(seed=0)
    cfg = hc.TINY_CONFIG
    heads, hidden = cfg["heads_num"], cfg["hidden_size"]
    diffusers = HunyuanVideoTransformer3DModel(
        in_channels=hc.LATENT_CHANNELS, out_channels=hc.LATENT_CHANNELS, num_attention_heads=heads,
        attention_head_dim=hidden // heads, num_layers=cfg["mm_double_blocks_depth"],
        num_single_layers=cfg["mm_single_blocks_depth"], num_refiner_layers=2, mlp_ratio=cfg["mlp_width_ratio"],
        patch_size=upstream.patch_size[1], patch_size_t=upstream.patch_size[0], qk_norm="rms_norm",
        guidance_embeds=cfg["guidance_embed"], text_embed_dim=upstream.text_states_dim,
        pooled_projection_dim=upstream.text_states_dim_2, rope_theta=256.0, rope_axes_dim=tuple(cfg["rope_dim_list"]))
    diffusers.load_state_dict(upstream_to_diffusers(upstream.state_dict(), hidden), strict=True)
    return upstream, diffusers.eval()


def inputs(upstream):
    """Upstream keyword inputs (batched CFG: two rows, both with padded prompts) and diffusers' equivalents."""
    up = hc.make_tiny_inputs(upstream, batch=2, t=2, h=8, w=8, text_len=8, seed=0)
    diff = dict(encoder_hidden_states=up["text_states"], encoder_attention_mask=up["text_mask"].bool(),
                pooled_projections=up["text_states_2"], guidance=up["guidance"])
    return up, diff


def run_both(thresh, **options):
    upstream, diffusers = twin_models()
    up_in, diff_in = inputs(upstream)
    x0 = up_in["x"]
    up_kw = {k: v for k, v in up_in.items() if k not in ("x", "t")}
    caches = [tc.enable_teacache(m, thresh, num_steps=STEPS, **options) for m in (upstream, diffusers)]
    up_out, diff_out = [], []
    with torch.no_grad():
        # the same Euler loop for both; upstream's forward takes (x, t, ...) and returns {"x": ...}
        up_final = sample(lambda hidden_states, timestep, **_: (upstream(hidden_states, timestep, **up_kw)["x"],),
                          {"hidden_states": x0}, STEPS, outputs=up_out)
        diff_final = sample(diffusers, {"hidden_states": x0, **diff_in}, STEPS, outputs=diff_out)
    return caches, (up_out, up_final), (diff_out, diff_final)


def test_conversion_gives_the_same_transformer():
    upstream, diffusers = twin_models()
    up_in, diff_in = inputs(upstream)
    with torch.no_grad():
        a = upstream(up_in["x"], up_in["t"], **{k: v for k, v in up_in.items() if k not in ("x", "t")})["x"]
        b = diffusers(hidden_states=up_in["x"], timestep=up_in["t"], **diff_in, return_dict=False)[0]
    assert a.abs().mean() > 0.1  # a real output, not the zero of freshly initialised modulation layers
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("thresh,options", [(0.1, {}), (0.3, {}), (0.6, {}),
                                            (0.3, {"rule": "extrapolate", "max_consecutive_skips": 2}),
                                            (0.3, {"rule": "fitted"})])
def test_both_adapters_take_the_same_decisions(thresh, options):
    (up_cache, diff_cache), (up_out, up_final), (diff_out, diff_final) = run_both(thresh, **options)
    up, diff = up_cache.stats(), diff_cache.stats()
    assert up["skipped_steps"] == diff["skipped_steps"]
    assert up["computed_steps"] == diff["computed_steps"]
    if thresh >= 0.3:
        assert up["skipped_steps"], "the trajectory should exercise skipping"
    # the indicator each adapter measured (relative L1 change of the first double block's modulated input)
    assert up["rel_l1"][0] is None and diff["rel_l1"][0] is None
    assert diff["rel_l1"][1:] == pytest.approx(up["rel_l1"][1:], rel=1e-4)
    assert diff.get("gains") == pytest.approx(up.get("gains"), abs=1e-3)  # the fitted rule's gains
    for a, b in zip(up_out, diff_out):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(diff_final, up_final, rtol=1e-4, atol=1e-4)
