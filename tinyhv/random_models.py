"""Tiny random-weight diffusers transformers and a flow-matching loop, for the tests and the benchmarks.

``HunyuanVideoTransformer3DModel`` (``make_transformer``; image-to-video: ``make_i2v_transformer``, fed as
HunyuanVideoImageToVideoPipeline feeds it by ``i2v_caller``) and HunyuanVideo 1.5's
``HunyuanVideo15Transformer3DModel`` (``make_transformer_15``, ``v15_caller``), their inputs (``make_inputs``,
``make_inputs_15``) and an Euler loop on HunyuanVideo's schedule (``sample``). Torch and diffusers only; runs on any
CPU in seconds. Tiny pipelines saved to disk, and the check against the reference rule, are the tests' own
(``tests/tiny_diffusers.py``).
"""

from __future__ import annotations

import math

import torch
from diffusers import HunyuanVideoTransformer3DModel

TINY_CONFIG = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
                   num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16,
                   pooled_projection_dim=8, rope_axes_dim=(2, 2, 4), guidance_embeds=True)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-initialise every parameter (diffusers zero-initialises modulation and output layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif name.endswith("weight"):  # norm scales
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model


def make_transformer(seed: int = 0, **overrides) -> HunyuanVideoTransformer3DModel:
    torch.manual_seed(seed)
    return randomize_(HunyuanVideoTransformer3DModel(**{**TINY_CONFIG, **overrides}), seed).eval()


def make_inputs(batch=1, frames=2, height=8, width=8, text_len=6, seed=0, pad=2):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    mask[:, text_len - pad:] = False  # padded prompt tokens
    return dict(
        hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, 16, generator=g),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(batch, 8, generator=g),
        guidance=torch.full((batch,), 6000.0),
    )


def sigmas(num_steps: int, shift: float = 7.0) -> torch.Tensor:
    """HunyuanVideo's flow-matching schedule with shift, from 1 to 0."""
    s = torch.linspace(1.0, 0.0, num_steps + 1)
    return shift * s / (1 + (shift - 1) * s)


def sample(call, inputs: dict, num_steps: int, negative: dict | None = None, true_cfg: float = 3.0, outputs=None):
    """Euler flow matching; with ``negative`` the transformer is called twice per step (true CFG)."""
    x = inputs["hidden_states"]
    sig = sigmas(num_steps)
    for i in range(num_steps):
        t = (sig[i] * 1000).expand(x.shape[0])
        pred = call(**{**inputs, "hidden_states": x, "timestep": t, "return_dict": False})[0]
        if negative is not None:
            neg = call(**{**negative, "hidden_states": x, "timestep": t, "return_dict": False})[0]
            pred = neg + true_cfg * (pred - neg)
        if outputs is not None:
            outputs.append(pred)
        x = x + (sig[i + 1] - sig[i]) * pred
    return x


def make_i2v_transformer(condition_type: str, seed: int = 0, **overrides) -> HunyuanVideoTransformer3DModel:
    """diffusers' image-to-video transformer: ``token_replace`` (first frame modulated apart) or ``latent_concat``
    (``[latents, image latents, mask]`` in channels, as HunyuanVideoImageToVideoPipeline feeds it)."""
    channels = TINY_CONFIG["in_channels"]
    extra = {"in_channels": 2 * channels + 1} if condition_type == "latent_concat" else {}
    return make_transformer(seed, image_condition_type=condition_type, **extra, **overrides)


def i2v_caller(call, condition_type: str, image_latents: torch.Tensor):
    """Wrap ``call`` as HunyuanVideoImageToVideoPipeline feeds the transformer: the image latent replaces the
    first latent frame (``token_replace``) or is concatenated in channels with a first-frame mask
    (``latent_concat``). The flow of the first frame is zeroed for ``token_replace``, which the pipeline
    never steps."""
    def wrapped(hidden_states, **kw):
        if condition_type == "token_replace":
            x = torch.cat([image_latents, hidden_states[:, :, 1:]], dim=2)
            out = call(hidden_states=x, **kw)[0]
            return (torch.cat([torch.zeros_like(out[:, :, :1]), out[:, :, 1:]], dim=2),)
        cond = torch.zeros_like(hidden_states)
        cond[:, :, :1] = image_latents
        mask = torch.zeros_like(hidden_states[:, :1])
        mask[:, :, :1] = 1
        return call(hidden_states=torch.cat([hidden_states, cond, mask], dim=1), **kw)
    return wrapped


# -- HunyuanVideo 1.5 (diffusers' HunyuanVideo15Transformer3DModel) --------------------------------------------------

TINY_15_CONFIG = dict(in_channels=2 * 4 + 1, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=3,
                      num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16,
                      text_embed_2_dim=8, image_embed_dim=8, rope_axes_dim=(2, 2, 4), target_size=64)


def make_transformer_15(seed: int = 0, **overrides):
    """Tiny ``HunyuanVideo15Transformer3DModel`` (input channels: latents, condition latents, mask)."""
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(seed)
    return randomize_(HunyuanVideo15Transformer3DModel(**{**TINY_15_CONFIG, **overrides}), seed).eval()


def make_inputs_15(batch=1, frames=2, height=8, width=8, text_len=6, seed=0, pad=2, image=False):
    """The transformer's inputs as HunyuanVideo15Pipeline builds them (``image``: the I2V pipeline's, with image
    embeddings; zeros mean text-to-video). ``hidden_states`` holds the latents only; ``v15_caller`` adds the
    condition channels."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    mask[:, text_len - pad:] = False
    mask_2 = torch.ones(batch, 3, dtype=torch.bool)
    mask_2[:, 2:] = False
    return dict(
        hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, 16, generator=g),
        encoder_attention_mask=mask,
        encoder_hidden_states_2=torch.randn(batch, 3, 8, generator=g),
        encoder_attention_mask_2=mask_2,
        image_embeds=torch.randn(batch, 4, 8, generator=g) if image else torch.zeros(batch, 4, 8),
    )


def v15_caller(call, image_latents: torch.Tensor | None = None, meanflow_steps: int | None = None):
    """Wrap ``call`` as HunyuanVideo 1.5's pipelines feed the transformer: ``[latents, condition latents, mask]`` in
    channels (the first frame's latent and a mask of 1 there for image-to-video, zeros for text-to-video). With
    ``meanflow_steps`` it also passes ``timestep_r``, the next step's timestep (0 after the last), as its step
    distilled (meanflow) models take."""
    sig = sigmas(meanflow_steps) * 1000 if meanflow_steps else None

    def wrapped(hidden_states, timestep, **kw):
        cond, mask = torch.zeros_like(hidden_states), torch.zeros_like(hidden_states[:, :1])
        if image_latents is not None:
            cond[:, :, :1], mask[:, :, :1] = image_latents, 1
        if sig is not None:
            i = int((sig[:-1] - timestep[0]).abs().argmin())
            kw["timestep_r"] = sig[i + 1].expand(hidden_states.shape[0])
        return call(hidden_states=torch.cat([hidden_states, cond, mask], dim=1), timestep=timestep, **kw)
    return wrapped
