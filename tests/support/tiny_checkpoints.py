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

from . import hyvideo_cpu as H

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
def build_llm_tokenizer(corpus: List[str], vocab_size: int = 1024):
    """Byte-level BPE (Llama-3 style split) as a transformers fast tokenizer."""
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
        special_tokens=LLM_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
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


def _check_template_crop(tokenizer) -> None:
    from hyvideo.constants import PROMPT_TEMPLATE

    for name, entry in PROMPT_TEMPLATE.items():
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
