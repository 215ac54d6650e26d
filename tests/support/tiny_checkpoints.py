"""Write a tiny, randomly initialised HunyuanVideo "model base" for CPU tests.

Test-only. Everything is generated locally (no downloads): tokenizers are
trained here on a few sentences, weights are random with fixed seeds.

Layout written under ``root`` (what ``hyvideo/constants.py`` expects when the
environment variable ``MODEL_BASE=root`` is set *before* hyvideo is imported)::

    root/text_encoder/                     tiny LlamaModel + fast BPE tokenizer
    root/text_encoder_2/                   tiny CLIPTextModel + CLIPTokenizer files
    root/hunyuan-video-t2v-720p/vae/       config.json + pytorch_model.pt
    root/hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt
                                           {"module": state_dict} of the tiny DiT

The text encoders' hidden sizes equal ``TINY_TEXT_STATES_DIM`` /
``TINY_TEXT_STATES_DIM_2``, so upstream's CLI must be given
``--text-states-dim``/``--text-states-dim-2`` accordingly (see
``cli_args`` in the returned dict).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from tinyhv.upstream_cpu import hyvideo_cpu as H

LLM_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<pad>",
]

# Split pattern of the Llama-3 tokenizer family (public tokenizer.json); with
# every template word learnt as one token, upstream's hard-coded crop_start
# values (36 image / 95 video) match our tokenizer exactly.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

EXTRA_SENTENCES = [
    "a cat",
    "A cat walks on the grass, realistic style.",
    "A dog runs along a sunny beach at sunset.",
    "A red car drives through a quiet city street at night.",
    "An astronaut rides a horse on the moon, cinematic lighting.",
    "Two people dance in the rain under a blue umbrella.",
    "A close-up of a flower slowly blooming in the morning light.",
    "Aerial view, aerial view, overexposed, low quality, deformation, a poor composition, "
    "bad hands, bad teeth, bad eyes, bad limbs, distortion",
]

DIT_RELPATH = "hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt"
VAE_RELPATH = "hunyuan-video-t2v-720p/vae"


def _corpus() -> List[str]:
    H.add_hunyuanvideo_to_path()
    from hyvideo.constants import NEGATIVE_PROMPT, PROMPT_TEMPLATE

    texts = []
    for entry in PROMPT_TEMPLATE.values():
        for sentence in EXTRA_SENTENCES:
            texts.append(entry["template"].format(sentence))
    texts += EXTRA_SENTENCES + [NEGATIVE_PROMPT]
    return texts


# --------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------
def build_llm_tokenizer(corpus: List[str], vocab_size: int = 1024, specials: List[str] = LLM_SPECIAL_TOKENS,
                        fixed_ids: Dict[str, int] = None):
    """Byte-level BPE (Llama-3 style split) as a transformers fast tokenizer. ``fixed_ids`` moves learnt tokens to
    the ids upstream hard-codes (swapping with the token that had the id)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    if fixed_ids:
        tok = _move_token_ids(tok, fixed_ids)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token="<|end_of_text|>",
        pad_token="<pad>",
        model_max_length=4096,
        padding_side="right",
    )


def _move_token_ids(tok, fixed_ids: Dict[str, int]):
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    for token, new_id in fixed_ids.items():
        old_id = vocab[token]
        other = by_id[new_id]
        if any(a["id"] in (old_id, new_id) for a in spec["added_tokens"]):
            raise ValueError(f"cannot move {token!r} to id {new_id}: a special token is involved")
        vocab[token], vocab[other] = new_id, old_id
        by_id[new_id], by_id[old_id] = token, other
    return Tokenizer.from_str(json.dumps(spec))


def _learn_bpe_merges(words: Counter, num_merges: int) -> List[Tuple[str, str]]:
    """Plain BPE merge learning on {tuple(symbols): count}; deterministic."""
    merges: List[Tuple[str, str]] = []
    words = dict(words)
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for word, freq in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        new_words = {}
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + freq
        words = new_words
    return merges


def build_clip_tokenizer(corpus: List[str], out_dir: Path, num_merges: int = 300):
    """CLIP-format vocab.json/merges.txt (byte symbols, "</w>" word ends),
    loaded with upstream's ``CLIPTokenizer``. Specials come last in the vocab
    (as in CLIP), so the end-of-text id is the largest id."""
    import regex
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    byte_encoder = bytes_to_unicode()
    pat = regex.compile(r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
    words: Counter = Counter()
    for text in corpus:
        for w in pat.findall(text.lower()):
            symbols = [byte_encoder[b] for b in w.encode("utf-8")]
            symbols[-1] = symbols[-1] + "</w>"
            words[tuple(symbols)] += 1
    merges = _learn_bpe_merges(words, num_merges)
    base = list(byte_encoder.values())
    vocab_list = base + [s + "</w>" for s in base]
    seen = set(vocab_list)
    for a, b in merges:
        if a + b not in seen:
            vocab_list.append(a + b)
            seen.add(a + b)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {s: i for i, s in enumerate(vocab_list)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    tokenizer = CLIPTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------
@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's CPU RNG for one block, restoring the global state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_llm(vocab_size: int, seed: int):
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=H.TINY_TEXT_STATES_DIM,
        intermediate_size=2 * H.TINY_TEXT_STATES_DIM,
        num_hidden_layers=3,  # upstream takes hidden_states[-(2 + 1)] (skip layer 2)
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=H.TINY_TEXT_STATES_DIM // 4,
        max_position_embeddings=1024,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    with _seeded(seed):
        model = LlamaModel(config)
        # O(1) embeddings so the (un-normalised) intermediate hidden state is O(1).
        torch.nn.init.normal_(model.embed_tokens.weight, std=1.0)
    return model.eval()


def build_clip(tokenizer, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=H.TINY_TEXT_STATES_DIM_2,
        intermediate_size=2 * H.TINY_TEXT_STATES_DIM_2,
        projection_dim=H.TINY_TEXT_STATES_DIM_2,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # != 2: pooled at first end-of-text
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    with _seeded(seed):
        model = CLIPTextModel(config)
    return model.eval()


def build_vae(seed: int):
    """Tiny ``AutoencoderKLCausal3D`` with upstream's 884-16c geometry
    (4 blocks -> spatial /8, temporal /4, 16 latent channels)."""
    H.add_hunyuanvideo_to_path()
    from hyvideo.vae.autoencoder_kl_causal_3d import AutoencoderKLCausal3D

    with _seeded(seed):
        vae = AutoencoderKLCausal3D(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlockCausal3D",) * 4,
            up_block_types=("UpDecoderBlockCausal3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            act_fn="silu",
            latent_channels=H.LATENT_CHANNELS,
            norm_num_groups=4,
            sample_size=256,
            sample_tsize=64,
            scaling_factor=0.476986,
            time_compression_ratio=4,
            spatial_compression_ratio=8,
            mid_block_add_attention=True,
        )
    return vae.eval()


def _check_template_crop(tokenizer, names=None) -> None:
    from hyvideo.constants import PROMPT_TEMPLATE

    for name, entry in PROMPT_TEMPLATE.items():
        if names is not None and name not in names:
            continue
        prefix = entry["template"].split("{}")[0]
        n = len(tokenizer(prefix)["input_ids"])
        if n != entry["crop_start"]:
            raise AssertionError(
                f"tiny tokenizer gives {n} tokens for the {name!r} template prefix, "
                f"upstream crops {entry['crop_start']}"
            )


def make_tiny_model_base(root: Path, seed: int = 0, dit_seed: int = 0) -> Dict[str, object]:
    """Write the tiny model base under ``root`` (created if needed).

    Returns a dict with paths (``model_base``, ``text_encoder``,
    ``text_encoder_2``, ``vae``, ``dit_weight``), ``model`` (registered tiny
    config name), ``env`` (``{"MODEL_BASE": ...}`` -- must be in the
    environment before hyvideo is imported) and ``cli_args``: the flags
    upstream's ``sample_video.py`` needs for these files (model, weights,
    text dims and fp32 precisions).
    """
    root = Path(root).resolve()
    H.add_hunyuanvideo_to_path()
    model_name = H.register_tiny_config()
    corpus = _corpus()

    te_dir = root / "text_encoder"
    te2_dir = root / "text_encoder_2"
    vae_dir = root / VAE_RELPATH
    dit_path = root / DIT_RELPATH
    for d in (te_dir, te2_dir, vae_dir, dit_path.parent):
        d.mkdir(parents=True, exist_ok=True)

    # text_encoder (llm): tokenizer + LlamaModel, loaded by AutoTokenizer/AutoModel.
    llm_tok = build_llm_tokenizer(corpus)
    _check_template_crop(llm_tok)
    llm_tok.save_pretrained(str(te_dir))
    build_llm(len(llm_tok), seed).save_pretrained(str(te_dir), safe_serialization=True)

    # text_encoder_2 (clipL): CLIPTokenizer files + CLIPTextModel.
    clip_tok = build_clip_tokenizer(corpus, te2_dir)
    build_clip(clip_tok, seed + 1).save_pretrained(str(te2_dir), safe_serialization=True)

    # VAE: config.json + pytorch_model.pt (plain state dict), as load_vae expects.
    vae = build_vae(seed + 2)
    vae.save_config(str(vae_dir))
    torch.save(vae.state_dict(), vae_dir / "pytorch_model.pt")

    # DiT: {"module": state_dict}, loaded with --load-key module (default).
    dit, _ = H.make_tiny_transformer(seed=dit_seed)
    torch.save({"module": dit.state_dict()}, dit_path)

    cli_args = [
        "--model", model_name,
        "--model-base", str(root),
        "--dit-weight", str(dit_path),
        "--text-states-dim", str(H.TINY_TEXT_STATES_DIM),
        "--text-states-dim-2", str(H.TINY_TEXT_STATES_DIM_2),
        "--precision", "fp32",
        "--vae-precision", "fp32",
        "--text-encoder-precision", "fp32",
        "--text-encoder-precision-2", "fp32",
    ]
    return {
        "model_base": root,
        "text_encoder": te_dir,
        "text_encoder_2": te2_dir,
        "vae": vae_dir,
        "dit_weight": dit_path,
        "model": model_name,
        "env": {"MODEL_BASE": str(root)},
        "cli_args": cli_args,
    }


def use_model_base(root: Path) -> None:
    """Point an already-imported ``hyvideo.constants`` at ``root``.

    ``MODEL_BASE`` is read when ``hyvideo.constants`` is first imported; this
    sets the environment variable and rewrites the path dicts in place
    (VAE_PATH, TEXT_ENCODER_PATH, TOKENIZER_PATH -- shared by every module that
    imported them by name) for in-process tests.
    """
    root = str(Path(root).resolve())
    os.environ["MODEL_BASE"] = root
    H.add_hunyuanvideo_to_path()
    import hyvideo.constants as C

    C.MODEL_BASE = root
    C.VAE_PATH.update({k: f"{root}/{VAE_RELPATH}" for k in C.VAE_PATH})
    C.TEXT_ENCODER_PATH.update({"clipL": f"{root}/text_encoder_2", "llm": f"{root}/text_encoder"})
    C.TOKENIZER_PATH.update({"clipL": f"{root}/text_encoder_2", "llm": f"{root}/text_encoder"})


# --------------------------------------------------------------------------
# HunyuanVideo-I2V (run with HUNYUANVIDEO_ROOT at a Tencent/HunyuanVideo-I2V checkout)
# --------------------------------------------------------------------------
I2V_DIT_RELPATH = {
    "token_replace": "hunyuan-video-i2v-720p/transformers/mp_rank_00_model_states.pt",
    "latent_concat": "hunyuan-video-i2v-720p/transformers/mp_rank_00_model_states_latent_concat.pt",
}
I2V_VAE_RELPATH = "hunyuan-video-i2v-720p/vae"
I2V_LORA_RELPATH = "hunyuan-video-i2v-720p/lora/tiny_lora.safetensors"
I2V_LORA_PREFIX = "Hunyuan_video_I2V_lora"  # what upstream's load_lora_for_pipeline strips
#: LLaVA's image: 336 px in 14 px patches, 576 features after the CLS token is dropped, as upstream's template expects
LLAVA_IMAGE_SIZE, LLAVA_PATCH = 336, 14


def build_llava(tokenizer, seed: int):
    """Tiny ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama), as upstream's ``llm-i2v`` loads it."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=H.TINY_TEXT_STATES_DIM, intermediate_size=2 * H.TINY_TEXT_STATES_DIM,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=H.TINY_TEXT_STATES_DIM // 4,
        max_position_embeddings=2048, rope_theta=500000.0, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=2,
                              num_attention_heads=2, image_size=LLAVA_IMAGE_SIZE, patch_size=LLAVA_PATCH)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         image_seq_length=(LLAVA_IMAGE_SIZE // LLAVA_PATCH) ** 2,
                         vision_feature_select_strategy="default", vision_feature_layer=-2,
                         projector_hidden_act="gelu", tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id)
    with _seeded(seed):
        model = LlavaForConditionalGeneration(config)
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=1.0)
    return model.eval()


def build_image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": LLAVA_IMAGE_SIZE},
                              crop_size={"height": LLAVA_IMAGE_SIZE, "width": LLAVA_IMAGE_SIZE})


def build_i2v_transformer(condition: str, seed: int):
    dit, _ = H.make_tiny_transformer(seed=seed, args_overrides=dict(i2v_condition_type=condition))
    return dit


def build_lora(dit, seed: int, rank: int = 2, scale: float = 0.05) -> Dict[str, torch.Tensor]:
    """Kohya-style LoRA for the image and text attention projections of every double block, with upstream's
    key names (``<prefix>_double_blocks_0_img_attn_qkv.lora_down.weight``)."""
    weights = {}
    with _seeded(seed):
        for i, block in enumerate(dit.double_blocks):
            for name in ("img_attn_qkv", "txt_attn_qkv", "img_attn_proj"):
                out_f, in_f = getattr(block, name).weight.shape
                key = f"{I2V_LORA_PREFIX}_double_blocks_{i}_{name}"
                weights[f"{key}.lora_down.weight"] = torch.randn(rank, in_f) * scale
                weights[f"{key}.lora_up.weight"] = torch.randn(out_f, rank) * scale
    return weights


def make_tiny_i2v_model_base(root: Path, seed: int = 0, dit_seed: int = 0) -> Dict[str, object]:
    """The model base of Tencent/HunyuanVideo-I2V's ``sample_image2video.py`` under ``root``: ``text_encoder_i2v``
    (tiny LLaVA, its tokenizer with ``\\n\\n`` at upstream's ``double_return_token_id`` 271, and a
    ``CLIPImageProcessor``), ``text_encoder_2`` (CLIP), the I2V VAE, one DiT per condition type and a LoRA.

    Returns paths, ``env`` and ``cli_args`` (the flags every run needs, with ``--embedded-cfg-scale 6.0`` as in
    upstream's README, which the DiT files are built for; add ``--i2v-dit-weight``
    ``info["dit_weight"][condition]`` and ``--i2v-condition-type``). The transformers that upstream pins (4.39)
    expand LLaVA's one ``<image>`` token itself; for later versions the runner installs
    ``hyvideo_cpu.install_llava_legacy_image_tokens``."""
    from safetensors.torch import save_file

    root = Path(root).resolve()
    H.add_hunyuanvideo_to_path()
    model_name = H.register_tiny_config(H.TINY_I2V_MODEL_NAME, **H.TINY_I2V_CONFIG_OVERRIDES)
    from hyvideo.constants import NEGATIVE_PROMPT_I2V, PROMPT_TEMPLATE

    te_dir, te2_dir, vae_dir = root / "text_encoder_i2v", root / "text_encoder_2", root / I2V_VAE_RELPATH
    for d in (te_dir, te2_dir, vae_dir):
        d.mkdir(parents=True, exist_ok=True)
    corpus = _corpus() + [NEGATIVE_PROMPT_I2V]
    double_return = PROMPT_TEMPLATE["dit-llm-encode-video-i2v"]["double_return_token_id"]
    llm_tok = build_llm_tokenizer(corpus, specials=LLM_SPECIAL_TOKENS + ["<image>"],
                                  fixed_ids={"\u010a\u010a": double_return})  # byte-level "\n\n"
    _check_template_crop(llm_tok, names=("dit-llm-encode-video-i2v",))
    if llm_tok("\n\n")["input_ids"][1:] != [double_return]:
        raise AssertionError("tiny tokenizer: '\\n\\n' is not upstream's double_return_token_id")
    llm_tok.save_pretrained(str(te_dir))
    build_image_processor().save_pretrained(str(te_dir))
    build_llava(llm_tok, seed).save_pretrained(str(te_dir), safe_serialization=True)

    clip_tok = build_clip_tokenizer(corpus, te2_dir)
    build_clip(clip_tok, seed + 1).save_pretrained(str(te2_dir), safe_serialization=True)

    vae = build_vae(seed + 2)
    vae.save_config(str(vae_dir))
    torch.save(vae.state_dict(), vae_dir / "pytorch_model.pt")

    dit_paths = {}
    for condition, rel in I2V_DIT_RELPATH.items():
        dit = build_i2v_transformer(condition, dit_seed)
        dit_paths[condition] = root / rel
        dit_paths[condition].parent.mkdir(parents=True, exist_ok=True)
        torch.save({"module": dit.state_dict()}, dit_paths[condition])
    lora = root / I2V_LORA_RELPATH
    lora.parent.mkdir(parents=True, exist_ok=True)
    save_file(build_lora(dit, seed + 3), str(lora))

    cli_args = [
        "--model", model_name, "--model-base", str(root), "--i2v-mode", "--embedded-cfg-scale", "6.0",
        "--text-states-dim", str(H.TINY_TEXT_STATES_DIM), "--text-states-dim-2", str(H.TINY_TEXT_STATES_DIM_2),
        "--precision", "fp32", "--vae-precision", "fp32",
        "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32",
    ]
    return {"model_base": str(root), "dit_weight": {k: str(v) for k, v in dit_paths.items()}, "lora": str(lora),
            "model": model_name, "env": {"MODEL_BASE": str(root)}, "cli_args": cli_args}
