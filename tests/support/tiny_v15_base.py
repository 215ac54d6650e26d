"""Write a tiny, randomly initialised Tencent-Hunyuan/HunyuanVideo-1.5 model folder for CPU tests.

Test-only. Nothing is downloaded and nothing of upstream is copied: its classes are imported at build time from the
checkout named by ``HUNYUANVIDEO_15_ROOT`` (or ``HUNYUANVIDEO_ROOT``), and saved with their own ``save_*`` methods.
Weights are random with fixed seeds: two builds with the same ``seed`` write byte-identical files.

Layout written under ``root`` (what ``HunyuanVideo_1_5_Pipeline.create_pipeline(root, version, ...)`` reads, so that
upstream's ``generate.py --model_path root`` runs)::

    transformer/<version>/        config.json + sharded safetensors of a tiny HunyuanVideo_1_5_DiffusionTransformer
                                  (hidden 64, 2 heads, 2 double blocks, 0 single blocks, attn_mode "torch")
    transformer/720p_sr_distilled/  (sr=True) the SR stage's transformer: 98 input channels, ideal_resolution 720p
    upsampler/720p_sr_distilled/  (sr=True) a tiny SRTo720pUpsampler (32 -> 32 latent channels)
    vae/                          a tiny AutoencoderKLConv3D: 32 latent channels, /16 spatial, /4 temporal (fp16)
    scheduler/                    FlowMatchDiscreteScheduler config
    text_encoder/llm/             a tiny Qwen2.5-VL (text hidden 32, 3 layers; a 1-block vision tower) and a
                                  byte-level BPE tokenizer with a Qwen-style chat template
    text_encoder/byt5-small/      a tiny ByT5 (d_model 1472, as byt5-small: upstream hard-codes 1472) + tokenizer
    text_encoder/Glyph-SDXL-v2/   assets/color_idx.json, assets/multilingual_10-lang_idx.json, checkpoints/byt5_model.pt
    vision_encoder/siglip/        image_encoder/ (SigLIP, hidden 1152, 729 patch tokens, no encoder layers) and
                                  feature_extractor/ (SiglipImageProcessor, 27x27)

Sizes upstream fixes, and why the tiny models keep them:
- 32 latent channels: the SR pipeline allocates its latents with 32 channels, decoded by the shared VAE;
- vision states 1152 wide, 729 tokens: the pipeline's text-to-video zeros are ``(B, 729, 1152)`` (its defaults);
- ByT5 width 1472: the transformer's ``byt5_in`` takes 1472 inputs and the pipeline's glyph-free zeros are 1472
  wide. ``byt5_in`` (1472 -> 2048 -> 2048 -> hidden) and ``vision_in`` (1152 -> 1152 -> hidden) are the bulk of each
  transformer (8.7M parameters), so every version shares one copy: ``...-00002-of-00002.safetensors`` (bf16) is
  hard-linked between the version folders (copied where links are not possible); the rest of each transformer is
  in its own ``...-00001-of-00002.safetensors``, both named by ``diffusion_pytorch_model.safetensors.index.json``.

Configs follow upstream's released ones where the pipeline depends on them: ``in_channels`` 32 with
``concat_condition`` (the pipeline allocates ``in_channels`` latent channels; the patch embedding takes 2 x 32 + 1:
latents, condition latents, mask), for SR 98 input channels (plus the upsampled low-resolution latents and their
mask; assumed as ``in_channels`` 98 without ``concat_condition``), ``ideal_resolution`` /
``ideal_task`` from the version name, ``use_meanflow`` for ``*_step_distilled`` (its pipeline then passes
``timestep_r``), ``glyph_byT5_v2``, ``use_cond_type_embedding``, linear vision projection, token refiner. The SR
transformer has ``use_meanflow`` False and no ``ideal_task`` (assumed; its real config is not public here).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, Iterable, List

import torch

from tinyhv.upstream_cpu import hyvideo_cpu as H

from .tiny_checkpoints import _seeded  # seeds torch for one block, restoring the global state after

DEFAULT_VERSIONS = ("480p_t2v", "480p_i2v", "480p_i2v_step_distilled")

LATENT_CHANNELS = 32  # hard-coded by the SR pipeline's prepare_latents
TEXT_DIM = 32  # the tiny Qwen2.5-VL's hidden size == the transformer's text_states_dim
BYT5_DIM = 1472  # hard-coded: ByT5Mapper(in_dim=1472) and the pipeline's zeros for glyph-free prompts
VISION_DIM, VISION_TOKENS = 1152, 729  # the pipeline's defaults (vision_states_dim, vision_num_semantic_tokens)

#: the tiny transformer: head_dim 32 = sum(rope_dim_list); 2 heads keep the CPU attention cheap and split over 2 ranks
TRANSFORMER = dict(hidden_size=64, heads_num=2, mm_double_blocks_depth=2, mm_single_blocks_depth=0,
                   rope_dim_list=[8, 12, 12], mlp_width_ratio=4.0)
#: parameters shared by every version (one hard-linked shard)
SHARED_PREFIXES = ("byt5_in.", "vision_in.")
SHARD_OWN = "diffusion_pytorch_model-00001-of-00002.safetensors"
SHARD_SHARED = "diffusion_pytorch_model-00002-of-00002.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"

#: VAE: /16 spatial (4 spatial downsamples: 5 levels), /4 temporal, 32 latent channels. The fewest channels its
#: asserts allow: the last level must be a multiple of 2 x 32; a temporal down/upsample needs out <= 4 x in, and
#: multiples of 8; spatial ones multiples of 4. No encoder residual blocks (``layers_per_block`` 0; the decoder
#: has one per level): fp16 convolutions are slow on CPUs, and the decoder runs at 480p/720p.
VAE_BLOCK_OUT_CHANNELS = (2, 4, 4, 16, 64)
VAE_LAYERS_PER_BLOCK = 0
VAE_SCALING_FACTOR = 1.03682
SR_UPSAMPLER = dict(hidden_channels=8, num_blocks=1, global_residual=True)

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
#: Qwen2.5's chat template, reduced to string contents (the pipeline's templates: a system and a user message)
QWEN_CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
                      "+ '<|im_end|>' + '\n' }}{% endfor %}"
                      "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
#: Qwen2's pre-tokenizer split pattern
_QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
               r"\s+(?!\S)|\s+")
CORPUS = ["a photo of a cat", "a cat walks", "a cat walks on the grass", "A dog runs along a sunny beach at sunset.",
          "A red car drives through a quiet city street at night.", 'A neon sign that reads "HELLO" at night.',
          "An astronaut rides a horse on the moon, cinematic lighting.", " "]

GLYPH_COLORS = {"white": 0, "black": 1, "red": 2}
GLYPH_FONTS = {"en-Montserrat-Regular": 0, "zh-NotoSansSC-Regular": 1}


def add_hunyuanvideo15_to_path() -> Path:
    """Put ``$HUNYUANVIDEO_15_ROOT`` (else ``$HUNYUANVIDEO_ROOT``) first on ``sys.path``; return it. Without either,
    a 1.5 ``hyvideo`` already importable (e.g. put on ``sys.path`` by the caller) is used."""
    import importlib.util

    root = os.environ.get("HUNYUANVIDEO_15_ROOT", "").strip() or os.environ.get("HUNYUANVIDEO_ROOT", "").strip()
    if not root:
        spec = importlib.util.find_spec("hyvideo")
        if spec is not None and spec.submodule_search_locations:
            root = str(Path(list(spec.submodule_search_locations)[0]).parent)
    if not root:
        raise RuntimeError("HUNYUANVIDEO_15_ROOT is not set: point it at a Tencent-Hunyuan/HunyuanVideo-1.5 checkout")
    path = Path(root).expanduser().resolve()
    if not (path / "hyvideo" / "models" / "transformers" / "hunyuanvideo_1_5_transformer.py").is_file():
        raise RuntimeError(f"{path} is not a HunyuanVideo-1.5 checkout (no hyvideo/models/transformers/"
                           "hunyuanvideo_1_5_transformer.py)")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    return path


# -- text encoder (text_encoder/llm) ---------------------------------------------------------------------------------
def _render(messages: List[dict]) -> str:
    """What QWEN_CHAT_TEMPLATE renders (with the generation prompt), for the tokenizer's training corpus."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def build_qwen_tokenizer(vocab_size: int = 700):
    """Byte-level BPE with Qwen2's split pattern and special tokens (no BOS), trained on upstream's two prompt
    templates filled with a few prompts, so each template word is one token (the whole template fits in the 256
    tokens upstream's first pass tokenises to find ``crop_start``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hyvideo.models.text_encoders import PROMPT_TEMPLATE, TextEncoder

    corpus = []
    for entry in PROMPT_TEMPLATE.values():
        for text in CORPUS:
            rendered = _render(TextEncoder.apply_text_to_template(text, entry["template"]))
            for special in QWEN_SPECIALS:
                rendered = rendered.replace(special, "\n")
            corpus.append(rendered)
    corpus += CORPUS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=list(QWEN_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        model_max_length=32768, padding_side="right")
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def _check_crop_start(tokenizer) -> Dict[str, int]:
    """The user marker upstream's ``TextEncoder.calculate_crop_start`` looks for is found, within 256 tokens."""
    from hyvideo.models.text_encoders import PROMPT_TEMPLATE, TextEncoder

    marker = tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    crops = {}
    for name, entry in PROMPT_TEMPLATE.items():
        ids = tokenizer.apply_chat_template(TextEncoder.apply_text_to_template("a photo of a cat", entry["template"]),
                                            add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        found = [i + len(marker) for i in range(len(ids) - len(marker) + 1) if ids[i:i + len(marker)] == marker]
        if not found or found[0] + 8 > 256:
            raise AssertionError(f"tiny tokenizer: the user marker is not within 256 tokens of the {name!r} template")
        crops[name] = found[0]
    return crops


def build_qwen(tokenizer, seed: int):
    """Tiny ``Qwen2_5_VLModel`` (what ``AutoModel`` loads for Qwen2.5-VL; upstream keeps its ``language_model``):
    3 text layers (upstream takes ``hidden_states[-3]``), hidden ``TEXT_DIM``, mrope, a 1-block vision tower."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = dict(vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=2 * TEXT_DIM, num_hidden_layers=3,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096, rope_theta=1000000.0,
                rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, rms_norm_eps=1e-6,
                tie_word_embeddings=False,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=TEXT_DIM, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[0])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    with _seeded(seed):
        model = Qwen2_5_VLModel(config)
        # O(1) embeddings, so that the un-normalised hidden state upstream takes is O(1)
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=1.0)
    return model.eval()


# -- ByT5 and Glyph-SDXL-v2 (text_encoder/byt5-small, text_encoder/Glyph-SDXL-v2) -----------------------------------
def _t5(vocab_size: int, seed: int):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=vocab_size, d_model=BYT5_DIM, d_kv=8, d_ff=16, num_layers=1, num_decoder_layers=1,
                      num_heads=2, feed_forward_proj="gated-gelu", tie_word_embeddings=True, decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=1)
    with _seeded(seed):
        return T5ForConditionalGeneration(config).eval()


def write_byt5(text_encoder_dir: Path, seed: int) -> Dict[str, Path]:
    """``byt5-small`` (ByT5 tokenizer + a 1-layer T5 at byt5-small's width, fp16) and ``Glyph-SDXL-v2`` (tiny
    colour/font tables, whose tokens upstream adds to the tokenizer, and ``byt5_model.pt``: the resized encoder's
    state dict, under the ``state_dict`` / ``module.text_tower.encoder.`` keys upstream strips)."""
    from transformers import ByT5Tokenizer

    byt5_dir, glyph_dir = text_encoder_dir / "byt5-small", text_encoder_dir / "Glyph-SDXL-v2"
    (glyph_dir / "assets").mkdir(parents=True, exist_ok=True)
    (glyph_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    tokenizer = ByT5Tokenizer()
    tokenizer.save_pretrained(str(byt5_dir))
    _t5(len(tokenizer), seed).half().save_pretrained(str(byt5_dir), safe_serialization=True)
    (glyph_dir / "assets" / "color_idx.json").write_text(json.dumps(GLYPH_COLORS, indent=2))
    (glyph_dir / "assets" / "multilingual_10-lang_idx.json").write_text(json.dumps(GLYPH_FONTS, indent=2))
    vocab = len(tokenizer) + len(GLYPH_COLORS) + len(GLYPH_FONTS)  # add_special_token's colour and font tokens
    encoder = _t5(vocab, seed + 1).get_encoder()
    state = {f"module.text_tower.encoder.{k}": v.detach().half().contiguous() for k, v in encoder.state_dict().items()}
    torch.save({"state_dict": state}, glyph_dir / "checkpoints" / "byt5_model.pt")
    return {"byt5": byt5_dir, "glyph": glyph_dir}


# -- vision encoder (vision_encoder/siglip) ---------------------------------------------------------------------------
def write_siglip(siglip_dir: Path, seed: int) -> Path:
    """SigLIP as ``VisionEncoder`` loads it (FLUX.1-Redux's layout): ``image_encoder/`` (hidden 1152 = the
    transformer's vision width; 27x27 pixels in 1-pixel patches = upstream's 729 tokens; no encoder layers and no
    pooling head, as a 1152-wide layer alone would be 5M parameters) and ``feature_extractor/``."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    side = int(VISION_TOKENS ** 0.5)
    config = SiglipVisionConfig(hidden_size=VISION_DIM, intermediate_size=16, num_hidden_layers=0,
                                num_attention_heads=16, image_size=side, patch_size=1, vision_use_head=False)
    with _seeded(seed):
        model = SiglipVisionModel(config).eval()
        torch.nn.init.normal_(model.vision_model.embeddings.patch_embedding.weight, std=1.0)
    model.half().save_pretrained(str(siglip_dir / "image_encoder"), safe_serialization=True)
    SiglipImageProcessor(size={"height": side, "width": side}).save_pretrained(str(siglip_dir / "feature_extractor"))
    return siglip_dir


# -- transformers, VAE, upsampler, scheduler --------------------------------------------------------------------------
def transformer_config(version: str) -> dict:
    """The tiny transformer's config for one version (``*_sr_distilled``: the SR stage's)."""
    resolution = version.split("_")[0]
    sr = version.endswith("_sr_distilled")
    return dict(
        patch_size=[1, 1, 1], in_channels=3 * LATENT_CHANNELS + 2 if sr else LATENT_CHANNELS,
        concat_condition=not sr, out_channels=LATENT_CHANNELS, mlp_act_type="gelu_tanh", qkv_bias=True, qk_norm=True,
        qk_norm_type="rms", guidance_embed=False, use_meanflow=version.endswith("_step_distilled"),
        text_projection="single_refiner", use_attention_mask=True, text_states_dim=TEXT_DIM, text_pool_type=None,
        rope_theta=256, attn_mode="torch", glyph_byT5_v2=True, vision_projection="linear",
        vision_states_dim=VISION_DIM, is_reshape_temporal_channels=False, use_cond_type_embedding=True,
        ideal_resolution=resolution, ideal_task=None if sr else ("i2v" if "_i2v" in version else "t2v"),
        **TRANSFORMER)


def _shared_state(seed: int) -> Dict[str, torch.Tensor]:
    """The parameters every version shares (``SHARED_PREFIXES``), built and randomised once, stored as bf16."""
    from hyvideo.models.text_encoders.byT5 import ByT5Mapper
    from hyvideo.models.transformers.modules.embed_layers import VisionProjection

    hidden = TRANSFORMER["hidden_size"]
    with torch.device("meta"):
        shared = torch.nn.Module()
        shared.byt5_in = ByT5Mapper(in_dim=BYT5_DIM, out_dim=2048, hidden_dim=2048, out_dim1=hidden,
                                    use_residual=False)
        shared.vision_in = VisionProjection(input_dim=VISION_DIM, output_dim=hidden)
    H.randomize_weights_(shared.to_empty(device="cpu"), seed)
    return {k: v.detach().to(torch.bfloat16).contiguous() for k, v in shared.state_dict().items()}


def write_transformer(out_dir: Path, version: str, seed: int, shared: Dict[str, torch.Tensor],
                      shared_file: Path = None) -> Path:
    """One version's folder: ``config.json``, its own weights (fp32), the shared shard (hard link to
    ``shared_file`` when given, else written) and the index naming both."""
    from safetensors.torch import save_file

    from hyvideo.models.transformers.hunyuanvideo_1_5_transformer import HunyuanVideo_1_5_DiffusionTransformer

    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):  # no default init: every parameter is set below
        model = HunyuanVideo_1_5_DiffusionTransformer(**transformer_config(version))
    model.to_empty(device="cpu")
    own_names = [name for name, _ in model.named_children() if name + "." not in SHARED_PREFIXES]
    for k, name in enumerate(own_names):  # the module has no buffers; each child has its own seeded draw
        H.randomize_weights_(getattr(model, name), seed * 1000 + k)
    own = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith(SHARED_PREFIXES)}
    if set(model.state_dict()) != set(own) | set(shared):
        raise AssertionError("shared transformer parameters do not match the model's")
    model.save_config(str(out_dir))
    save_file(own, str(out_dir / SHARD_OWN), metadata={"format": "pt"})
    target = out_dir / SHARD_SHARED
    if target.exists():
        target.unlink()
    if shared_file is None:
        save_file(shared, str(target), metadata={"format": "pt"})
    else:
        try:
            os.link(shared_file, target)
        except OSError:
            shutil.copyfile(shared_file, target)
    total = sum(v.numel() * v.element_size() for v in list(own.values()) + list(shared.values()))
    weight_map = {**{k: SHARD_OWN for k in own}, **{k: SHARD_SHARED for k in shared}}
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return out_dir


def write_vae(vae_dir: Path, seed: int) -> Path:
    """``AutoencoderKLConv3D`` with the real compression ratios (16 spatial, 4 temporal) and 32 latent channels,
    saved as fp16 (what the pipeline loads it as)."""
    from hyvideo.models.autoencoders.hunyuanvideo_15_vae import AutoencoderKLConv3D

    with _seeded(seed):
        vae = AutoencoderKLConv3D(in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
                                  block_out_channels=VAE_BLOCK_OUT_CHANNELS, layers_per_block=VAE_LAYERS_PER_BLOCK,
                                  ffactor_spatial=16, ffactor_temporal=4, sample_size=256, sample_tsize=64,
                                  scaling_factor=VAE_SCALING_FACTOR).eval()
    vae.half().save_pretrained(str(vae_dir), safe_serialization=True)
    return vae_dir


def write_upsampler(out_dir: Path, sr_version: str, seed: int) -> Path:
    from hyvideo.models.transformers.modules.upsample import SRTo720pUpsampler, SRTo1080pUpsampler

    with _seeded(seed):
        if "720p" in sr_version:
            model = SRTo720pUpsampler(in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, **SR_UPSAMPLER)
        else:
            model = SRTo1080pUpsampler(z_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                                       block_out_channels=(LATENT_CHANNELS,), num_res_blocks=0, is_residual=True)
    model.eval().save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def write_scheduler(out_dir: Path) -> Path:
    from hyvideo.schedulers.scheduling_flow_match_discrete import FlowMatchDiscreteScheduler

    FlowMatchDiscreteScheduler(shift=5.0, reverse=True, solver="euler").save_pretrained(str(out_dir))
    return out_dir


def make_tiny_v15_model_base(root: Path, versions: Iterable[str] = DEFAULT_VERSIONS, sr: bool = True,
                             seed: int = 0) -> Dict[str, object]:
    """Write the tiny HunyuanVideo-1.5 model folder under ``root`` (created if needed; see the module docstring).

    ``versions``: transformer versions (keys of upstream's ``PIPELINE_CONFIGS``, e.g. ``480p_t2v``); with ``sr``
    also the SR transformer and upsampler each of them maps to (``720p_sr_distilled`` for 480p). Returns a dict:
    ``model_path`` (``root``, for ``generate.py --model_path``), ``versions``, ``sr_versions``, ``transformer``
    (version -> folder), ``upsampler`` (SR version -> folder), ``vae``, ``scheduler``, ``text_encoder``, ``byt5``,
    ``glyph``, ``vision_encoder``, ``crop_start`` (per prompt template, as upstream will compute it), ``seed`` and
    ``cli_args`` (``--model_path root --offloading false --group_offloading false``: no offloading on CPU).
    """
    add_hunyuanvideo15_to_path()
    from hyvideo.commons import PIPELINE_CONFIGS, TRANSFORMER_VERSION_TO_SR_VERSION

    root = Path(root).resolve()
    versions = list(dict.fromkeys(versions))
    unknown = [v for v in versions if v not in PIPELINE_CONFIGS]
    if unknown:
        raise ValueError(f"unknown transformer versions {unknown}; upstream has {sorted(PIPELINE_CONFIGS)}")
    sr_versions = list(dict.fromkeys(TRANSFORMER_VERSION_TO_SR_VERSION[v] for v in versions)) if sr else []
    root.mkdir(parents=True, exist_ok=True)

    shared = _shared_state(seed + 100)
    transformers, shared_file = {}, None
    for i, version in enumerate(versions + sr_versions):
        transformers[version] = write_transformer(root / "transformer" / version, version, seed + 10 + i, shared,
                                                  shared_file)
        shared_file = shared_file or transformers[version] / SHARD_SHARED
    upsamplers = {v: write_upsampler(root / "upsampler" / v, v, seed + 30) for v in sr_versions}
    vae = write_vae(root / "vae", seed + 1)
    scheduler = write_scheduler(root / "scheduler")

    llm_dir = root / "text_encoder" / "llm"
    tokenizer = build_qwen_tokenizer()
    crop_start = _check_crop_start(tokenizer)
    tokenizer.save_pretrained(str(llm_dir))
    build_qwen(tokenizer, seed + 2).save_pretrained(str(llm_dir), safe_serialization=True)
    byt5 = write_byt5(root / "text_encoder", seed + 3)
    siglip = write_siglip(root / "vision_encoder" / "siglip", seed + 5)

    return {
        "model_path": root,
        "versions": versions,
        "sr_versions": sr_versions,
        "transformer": transformers,
        "upsampler": upsamplers,
        "vae": vae,
        "scheduler": scheduler,
        "text_encoder": llm_dir,
        "byt5": byt5["byt5"],
        "glyph": byt5["glyph"],
        "vision_encoder": siglip,
        "crop_start": crop_start,
        "seed": seed,
        "cli_args": ["--model_path", str(root), "--offloading", "false", "--group_offloading", "false"],
    }


if __name__ == "__main__":  # python -m tests.support.tiny_v15_base DIR
    info = make_tiny_v15_model_base(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny_v15_base"))
    print(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in info.items()
                      if k not in ("transformer", "upsampler")}, indent=2))
