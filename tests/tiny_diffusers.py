"""Tiny diffusers pipelines saved to disk, and the cache checked against the reference rule, for the tests.

The random-weight transformers, their inputs and the sampling loop are ``tinyhv.random_models`` (the benchmarks use
them too); the pipelines' tokenizers and text encoders are ``support.tiny_checkpoints``'.
"""

from __future__ import annotations

import torch

from tinyhv.random_models import (TINY_15_CONFIG, TINY_CONFIG, make_i2v_transformer, make_inputs, make_transformer,
                                  make_transformer_15, randomize_, sample)


def make_tiny_pipeline(root, kind: str = "t2v", condition_type: str = "token_replace"):
    """Save a tiny HunyuanVideo pipeline under ``root``: locally trained tokenizers, tiny Llama and CLIP text
    encoders, tiny VAE and transformer, all random. ``kind``: ``t2v`` (HunyuanVideoPipeline), ``i2v``
    (HunyuanVideoImageToVideoPipeline with ``condition_type``: a tiny LLaVA text encoder whose tokenizer fits the
    pipeline's hard-coded template offsets, and a CLIPImageProcessor), ``skyreels``
    (HunyuanSkyreelsImageToVideoPipeline: image latents concatenated in channels) or ``framepack``
    (HunyuanVideoFramepackPipeline: its own transformer class and a tiny SigLIP image encoder), ``v15`` /
    ``v15_i2v`` (HunyuanVideo15Pipeline / HunyuanVideo15ImageToVideoPipeline: ``_make_tiny_pipeline_15``). Loads
    with ``DiffusionPipeline.from_pretrained(path)``."""
    from pathlib import Path

    import diffusers
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler

    from support import tiny_checkpoints as T

    root = Path(root)
    if kind in ("v15", "v15_i2v"):
        return _make_tiny_pipeline_15(root, image=kind == "v15_i2v")
    corpus = T.EXTRA_SENTENCES + ["<|start_header_id|>system<|end_header_id|> Describe the video by detailing "
                                  "the following aspects: the main content and theme of the video."]
    extra = {}
    if kind == "i2v":
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE

        template = DEFAULT_PROMPT_TEMPLATE["template"]
        corpus += [template.format(sentence) for sentence in T.EXTRA_SENTENCES]
        tokenizer = T.build_llm_tokenizer(corpus, specials=T.LLM_SPECIAL_TOKENS + ["<image>"])
        crop = len(tokenizer(template.split("{}")[0])["input_ids"])
        if crop != DEFAULT_PROMPT_TEMPLATE["crop_start"]:
            raise AssertionError(f"tiny tokenizer: {crop} template tokens, the pipeline crops "
                                 f"{DEFAULT_PROMPT_TEMPLATE['crop_start']}")
        text_encoder = T.build_llava(tokenizer, seed=1)
        extra["image_processor"] = T.build_image_processor()
    else:
        tokenizer = T.build_llm_tokenizer(corpus, vocab_size=400)
        text_encoder = T.build_llm(len(tokenizer), seed=1)
    tokenizer_2 = T.build_clip_tokenizer(corpus, root / "_clip_tokenizer", num_merges=100)
    text_encoder_2 = T.build_clip(tokenizer_2, seed=2)
    torch.manual_seed(3)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
        temporal_compression_ratio=4, mid_block_add_attention=True).eval()
    dims = dict(text_embed_dim=text_encoder.config.get_text_config().hidden_size,
                pooled_projection_dim=text_encoder_2.config.hidden_size)
    if kind == "framepack":
        from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

        torch.manual_seed(5)
        image_encoder = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
            patch_size=16)).eval()
        torch.manual_seed(4)
        transformer = randomize_(diffusers.HunyuanVideoFramepackTransformer3DModel(
            **{**TINY_CONFIG, **dims}, has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True), 4).eval()
        extra = dict(image_encoder=image_encoder,
                     feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}))
        cls = diffusers.HunyuanVideoFramepackPipeline
    elif kind == "i2v":
        transformer = make_i2v_transformer(condition_type, seed=4, **dims)
        cls = diffusers.HunyuanVideoImageToVideoPipeline
    elif kind == "skyreels":
        transformer = make_transformer(seed=4, in_channels=2 * TINY_CONFIG["in_channels"], **dims)
        cls = diffusers.HunyuanSkyreelsImageToVideoPipeline
    else:
        transformer = make_transformer(seed=4, **dims)
        cls = diffusers.HunyuanVideoPipeline
    pipe = cls(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
               scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2,
               tokenizer_2=tokenizer_2, **extra)
    pipe.save_pretrained(root / "pipeline")
    return root / "pipeline"


def against_the_reference(thresh, steps, make, negative=None, wrap=lambda call: call, options=None, reference=None,
                          inputs=None):
    """Run the cache (with ``enable_teacache`` ``options``) and the reference (``tests/reference_rule.py``, one
    instance per guidance branch; ``reference`` replaces its ``DIFFUSERS`` layout) on the same ``inputs`` (default
    ``make_inputs()``); asserts the same outputs and returns both runs' per-branch computed steps."""
    inputs = inputs or make_inputs()
    import teacache_sample_video as tc
    from reference_rule import DIFFUSERS, ReferenceTeaCache

    model = make()
    cache = tc.enable_teacache(model, thresh, num_steps=steps, **(options or {}))
    outs, ref_outs = [], []
    with torch.no_grad():
        final = sample(wrap(model), inputs, steps, negative=negative, outputs=outs)
    refs = [ReferenceTeaCache(make(), steps, thresh, **(reference or DIFFUSERS)) for _ in range(2)]

    def route(**kw):  # diffusers' true CFG: the negative prompt's call is the second branch
        ref = refs[negative is not None and kw["encoder_hidden_states"] is negative["encoder_hidden_states"]]
        return ref(**kw)

    with torch.no_grad():
        ref_final = sample(wrap(route), inputs, steps, negative=negative, outputs=ref_outs)
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, ref_final, rtol=1e-5, atol=1e-5)
    s = cache.stats()
    ours = [b["computed_steps"] for b in s.get("branches", [s])]
    theirs = [[i for i, c in enumerate(r.decisions) if c] for r in refs[:len(ours)]]
    return ours, theirs


# -- HunyuanVideo 1.5 pipelines ----------------------------------------------------------------------------------------

#: a Qwen-style chat template for the tiny tokenizer (1.5's pipelines call ``apply_chat_template``)
_CHAT_TEMPLATE = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                  "{{ m['content'] if m['content'] is string else m['content'][0]['text'] }}<|eot_id|>{% endfor %}"
                  "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def _make_tiny_pipeline_15(root, image: bool):
    """A tiny HunyuanVideo 1.5 pipeline folder: Qwen2.5-VL text model, ByT5 (T5 encoder, byte tokenizer), 1.5's
    VAE (4 latent channels, spatial /16, temporal /4), ``make_transformer_15``, a CFG guider (scale 6), and for
    image-to-video a SigLIP image encoder whose width is the transformer's image embedding size."""
    import diffusers
    from diffusers import AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    from support import tiny_checkpoints as T

    tokenizer = T.build_llm_tokenizer(T.EXTRA_SENTENCES + ["You are a helpful assistant. Describe the video by "
                                                           "detailing the following aspects"], vocab_size=400)
    tokenizer.chat_template = _CHAT_TEMPLATE
    torch.manual_seed(1)
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_15_CONFIG["text_embed_dim"], intermediate_size=32,
        num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
        rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})).eval()
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=384, d_model=TINY_15_CONFIG["text_embed_2_dim"], d_kv=4,
                                             d_ff=16, num_layers=1, num_heads=2)).eval()
    vae = AutoencoderKLHunyuanVideo15(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,) * 5,
                                      layers_per_block=1, spatial_compression_ratio=16,
                                      temporal_compression_ratio=4).eval()
    parts = dict(text_encoder=text_encoder, tokenizer=tokenizer, transformer=make_transformer_15(seed=4), vae=vae,
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2,
                 tokenizer_2=ByT5Tokenizer(), guider=ClassifierFreeGuidance(guidance_scale=6.0))
    cls = diffusers.HunyuanVideo15Pipeline
    if image:
        from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

        torch.manual_seed(5)
        parts.update(image_encoder=SiglipVisionModel(SiglipVisionConfig(
            hidden_size=TINY_15_CONFIG["image_embed_dim"], intermediate_size=16, num_hidden_layers=1,
            num_attention_heads=2, image_size=32, patch_size=16)).eval(),
            feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}))
        cls = diffusers.HunyuanVideo15ImageToVideoPipeline
    cls(**parts).save_pretrained(root / "pipeline")
    return root / "pipeline"
