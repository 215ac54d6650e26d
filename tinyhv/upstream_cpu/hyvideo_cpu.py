"""Helpers that let Tencent's upstream HunyuanVideo code run on a CPU (the tests, benchmarks/bench_upstream.py).

Nothing here is used by the product. Upstream is never copied: it is imported
at run time from the checkout named by the ``HUNYUANVIDEO_ROOT`` environment
variable (the directory that contains ``hyvideo/``).

Public API
----------
add_hunyuanvideo_to_path()      put HUNYUANVIDEO_ROOT on sys.path, return it
register_tiny_config(name, **o) add a tiny transformer entry to
                                ``hyvideo.modules.models.HUNYUAN_VIDEO_CONFIG``
install_cpu_standins()          replace the CUDA/flash-attn-only
                                ``get_cu_seqlens`` / ``attention`` everywhere
install_cuda_autocast_redirect() make ``torch.autocast("cuda")`` act on CPU
randomize_weights_(model, seed) deterministic, non-degenerate re-init
make_tiny_args(**overrides)     argparse.Namespace from upstream's own parser
make_tiny_transformer(...)      -> (model, args)
make_tiny_inputs(model, ...)    -> kwargs for ``model(**inputs)``
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

#: Name under which the tiny transformer config is registered by default.
TINY_MODEL_NAME = "HYVideo-T/2-tiny"

#: Hidden size of the tiny Llama text encoder == ``args.text_states_dim``.
TINY_TEXT_STATES_DIM = 48
#: Hidden size of the tiny CLIP text encoder == ``args.text_states_dim_2``.
TINY_TEXT_STATES_DIM_2 = 24
#: Latent channels of upstream's "884-16c-hy" VAE (the DiT's in/out channels).
LATENT_CHANNELS = 16

#: Tiny transformer config. head_dim = 64 / 4 = 16 = sum(rope_dim_list).
TINY_CONFIG: Dict[str, object] = {
    "mm_double_blocks_depth": 2,
    "mm_single_blocks_depth": 2,
    "rope_dim_list": [4, 6, 6],
    "hidden_size": 64,
    "heads_num": 4,
    "mlp_width_ratio": 4,
    "guidance_embed": True,
}

#: HunyuanVideo-I2V's model (``--model HYVideo-T/2``) has no ``guidance_embed`` in its config: its
#: ``from_pretrained`` adds it when ``--embedded-cfg-scale`` is given (and fails if the config has it too). With
#: that flag its parameters are those of the tiny config above.
TINY_I2V_MODEL_NAME = "HYVideo-T/2-tiny-i2v"
TINY_I2V_CONFIG_OVERRIDES = {"guidance_embed": None}

# Attribute names used to mark/keep state on upstream's attention module, so
# that installing twice (even through two import names of this file) is safe.
_ORIGINALS_ATTR = "_hyvideo_cpu_originals"
_STANDIN_MARK = "_hyvideo_cpu_standin"


# --------------------------------------------------------------------------
# Path / config registration
# --------------------------------------------------------------------------
def add_hunyuanvideo_to_path() -> Path:
    """Insert ``$HUNYUANVIDEO_ROOT`` at the front of ``sys.path`` and return it.

    Raises RuntimeError with a clear message if the variable is unset or does
    not point at a HunyuanVideo checkout (a directory containing ``hyvideo/``).
    """
    root = os.environ.get("HUNYUANVIDEO_ROOT", "").strip()
    if not root:
        raise RuntimeError(
            "HUNYUANVIDEO_ROOT is not set: point it at a checkout of "
            "Tencent/HunyuanVideo (the directory that contains hyvideo/)."
        )
    path = Path(root).expanduser().resolve()
    if not (path / "hyvideo").is_dir():
        raise RuntimeError(
            f"HUNYUANVIDEO_ROOT={root!r} does not contain a hyvideo/ package."
        )
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    _stub_training_only_imports()
    return path


def _stub_training_only_imports() -> None:
    """HunyuanVideo-I2V's ``hyvideo.utils.helpers`` imports ``deepspeed`` and ``torch.utils.tensorboard`` at the top
    for its training helpers, which inference never calls. Where they are not installed, that module is imported
    once with empty stand-ins in ``sys.modules``, which are removed again right after, so that diffusers' and
    transformers' checks of what is installed (imported first) never see them; using one raises."""
    import importlib.util
    import types

    if not (Path(sys.path[0]) / "hyvideo" / "utils" / "helpers.py").is_file() or "hyvideo.utils.helpers" in sys.modules:
        return
    missing = {}
    if importlib.util.find_spec("deepspeed") is None:
        missing["deepspeed"] = types.ModuleType("deepspeed")
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        board = types.ModuleType("torch.utils.tensorboard")

        def summary_writer(*_, **__):
            raise RuntimeError("torch.utils.tensorboard is a test stand-in here: training code is not supported")

        board.SummaryWriter = summary_writer
        missing["torch.utils.tensorboard"] = board
    if not missing:
        return
    import diffusers.models.modeling_utils  # noqa: F401  (their availability checks run now, without the stand-ins)
    import transformers.modeling_utils  # noqa: F401

    sys.modules.update(missing)
    try:
        importlib.import_module("hyvideo.utils.helpers")
    finally:
        for name in missing:
            sys.modules.pop(name, None)


def register_tiny_config(name: str = TINY_MODEL_NAME, **overrides) -> str:
    """Register a tiny transformer config in upstream's ``HUNYUAN_VIDEO_CONFIG``.

    ``overrides`` update :data:`TINY_CONFIG` (e.g. ``hidden_size=32``; None removes a
    key). Returns ``name``. Re-registering a name replaces its entry.

    Ordering: this only imports ``hyvideo.modules.models`` (not
    ``hyvideo.config``), so it may be called before ``hyvideo.config`` is
    imported. Upstream's ``--model`` choices are ``list(HUNYUAN_VIDEO_CONFIG)``
    evaluated when ``parse_args()`` builds its parser; the dict is mutated in
    place (``hyvideo.config`` holds the same object), so the entry must exist
    before ``parse_args()`` runs. Registering before ``hyvideo.config`` is
    imported is always safe.
    """
    add_hunyuanvideo_to_path()
    from hyvideo.modules.models import HUNYUAN_VIDEO_CONFIG

    cfg = dict(TINY_CONFIG)
    cfg.update(overrides)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    cfg["rope_dim_list"] = list(cfg["rope_dim_list"])
    head_dim = cfg["hidden_size"] // cfg["heads_num"]
    if cfg["hidden_size"] % cfg["heads_num"] or sum(cfg["rope_dim_list"]) != head_dim:
        raise ValueError(
            f"tiny config {cfg}: need hidden_size % heads_num == 0 and "
            f"sum(rope_dim_list) == head_dim ({head_dim})"
        )
    HUNYUAN_VIDEO_CONFIG[name] = cfg
    return name


# --------------------------------------------------------------------------
# CPU stand-ins for get_cu_seqlens and flash-varlen attention
# --------------------------------------------------------------------------
def _cpu_get_cu_seqlens(text_mask: torch.Tensor, img_len: int) -> torch.Tensor:
    """Same values as upstream ``get_cu_seqlens`` but on ``text_mask.device``.

    Per sample i (sequence = [img tokens | text tokens], length max_len):
    cu[2i+1] = i*max_len + img_len + valid_text_len_i, cu[2i+2] = (i+1)*max_len.
    So each sample has two segments: [img + valid text] and [padded text].
    """
    batch_size = text_mask.shape[0]
    text_len = text_mask.sum(dim=1).to(torch.int64)
    max_len = text_mask.shape[1] + img_len
    device = text_mask.device
    idx = torch.arange(batch_size, device=device, dtype=torch.int64)
    cu_seqlens = torch.zeros([2 * batch_size + 1], dtype=torch.int32, device=device)
    cu_seqlens[1::2] = (idx * max_len + text_len + img_len).to(torch.int32)
    cu_seqlens[2::2] = ((idx + 1) * max_len).to(torch.int32)
    return cu_seqlens


setattr(_cpu_get_cu_seqlens, _STANDIN_MARK, True)


def segment_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """[batch, seqlen] int64 ids: token p of the flattened (batch*seqlen)
    sequence gets j such that cu_seqlens[j] <= p < cu_seqlens[j+1]."""
    cu = cu_seqlens.to(torch.int64)
    pos = torch.arange(batch * seqlen, device=cu.device, dtype=torch.int64)
    return torch.searchsorted(cu[1:].contiguous(), pos, right=True).view(batch, seqlen)


def varlen_block_mask(cu_seqlens_q, cu_seqlens_kv, batch: int, seqlen_q: int, seqlen_kv: int) -> torch.Tensor:
    """Boolean [batch, 1, seqlen_q, seqlen_kv] mask: True where query and key
    lie in the same cu_seqlens segment (what flash varlen attention computes)."""
    seg_q = segment_ids_from_cu_seqlens(cu_seqlens_q, batch, seqlen_q)
    seg_kv = segment_ids_from_cu_seqlens(cu_seqlens_kv, batch, seqlen_kv)
    return (seg_q[:, :, None] == seg_kv[:, None, :]).unsqueeze(1)


def _make_sdpa_attention(original_attention):
    def attention(
        q,
        k,
        v,
        mode="flash",
        drop_rate=0,
        attn_mask=None,
        causal=False,
        cu_seqlens_q=None,
        cu_seqlens_kv=None,
        max_seqlen_q=None,
        max_seqlen_kv=None,
        batch_size=1,
    ):
        """CPU stand-in for upstream ``attention``.

        mode="flash" (the default, used by the DiT blocks): SDPA with a
        block-diagonal boolean mask built from cu_seqlens, which reproduces
        flash_attn_varlen_func. Like upstream's flash branch it ignores
        ``drop_rate`` and ``attn_mask``. Other modes ("torch", "vanilla") are
        passed to upstream's own implementation unchanged.
        """
        if mode != "flash":
            return original_attention(
                q, k, v, mode=mode, drop_rate=drop_rate, attn_mask=attn_mask,
                causal=causal, cu_seqlens_q=cu_seqlens_q, cu_seqlens_kv=cu_seqlens_kv,
                max_seqlen_q=max_seqlen_q, max_seqlen_kv=max_seqlen_kv,
                batch_size=batch_size,
            )
        if cu_seqlens_q is None or cu_seqlens_kv is None:
            raise ValueError("flash-mode attention stand-in needs cu_seqlens_q/kv")
        if causal:
            raise NotImplementedError("causal flash-varlen attention is not emulated")
        b, sq = q.shape[0], q.shape[1]
        skv = k.shape[1]
        mask = varlen_block_mask(cu_seqlens_q, cu_seqlens_kv, b, sq, skv).to(q.device)
        x = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        )
        x = x.transpose(1, 2)  # [b, s, a, d]
        return x.reshape(b, sq, -1)

    setattr(attention, _STANDIN_MARK, True)
    attention.__wrapped_original__ = original_attention
    return attention


def _attenion_module():
    add_hunyuanvideo_to_path()
    import hyvideo.modules.attenion as attenion  # upstream's spelling

    return attenion


def original_functions() -> Dict[str, object]:
    """Upstream's own ``attention`` and ``get_cu_seqlens`` (even after install)."""
    attenion = _attenion_module()
    saved = getattr(attenion, _ORIGINALS_ATTR, None)
    if saved is not None:
        return dict(saved)
    return {"attention": attenion.attention, "get_cu_seqlens": attenion.get_cu_seqlens}


def install_cpu_standins() -> List[str]:
    """Replace upstream's CUDA-only ``get_cu_seqlens`` and flash ``attention``.

    Idempotent. Every module in ``sys.modules`` whose namespace holds
    upstream's original function objects (``hyvideo.modules.attenion`` itself,
    ``hyvideo.modules.models``, ``hyvideo.modules.token_refiner``, and any
    other module that imported them by name, e.g. a TeaCache script) gets the
    stand-in. Modules imported later pick the stand-ins up from
    ``hyvideo.modules.attenion``. The token refiner's ``mode="torch"`` calls
    are forwarded to upstream's implementation unchanged.

    Returns the list of ``"module.name"`` bindings patched by this call.
    """
    attenion = _attenion_module()
    # Make sure the usual importers are loaded so they get patched now.
    import hyvideo.modules.models  # noqa: F401
    import hyvideo.modules.token_refiner  # noqa: F401

    saved = getattr(attenion, _ORIGINALS_ATTR, None)
    if saved is None:
        saved = {"attention": attenion.attention, "get_cu_seqlens": attenion.get_cu_seqlens}
        if getattr(saved["attention"], _STANDIN_MARK, False):  # pragma: no cover
            raise RuntimeError("hyvideo attention already replaced by an unknown stand-in")
        standins = {
            "attention": _make_sdpa_attention(saved["attention"]),
            "get_cu_seqlens": _cpu_get_cu_seqlens,
        }
        setattr(attenion, _ORIGINALS_ATTR, saved)
        attenion._hyvideo_cpu_standins = standins
    standins = attenion._hyvideo_cpu_standins

    replace = {id(saved[k]): standins[k] for k in saved}
    patched = []
    for mod_name, mod in list(sys.modules.items()):
        if mod is None:
            continue
        try:
            namespace = vars(mod)
        except TypeError:
            continue
        for attr, value in list(namespace.items()):
            new = replace.get(id(value))
            if new is not None and (value is saved["attention"] or value is saved["get_cu_seqlens"]):
                setattr(mod, attr, new)
                patched.append(f"{mod_name}.{attr}")
    return patched


def cpu_standins_installed() -> bool:
    attenion = _attenion_module()
    return getattr(attenion.attention, _STANDIN_MARK, False) and getattr(
        attenion.get_cu_seqlens, _STANDIN_MARK, False
    )


def install_cuda_autocast_redirect() -> bool:
    """When CUDA is unavailable, make ``torch.autocast(device_type="cuda", ...)``
    (hard-coded in upstream's pipeline) autocast on the CPU instead of warning
    and doing nothing. Only matters for fp16/bf16 runs: with fp32 precisions
    upstream passes ``enabled=False``. Idempotent; returns True if active."""
    if torch.cuda.is_available():
        return False
    current = torch.autocast
    if getattr(current, _STANDIN_MARK, False):
        return True

    class autocast(current):  # noqa: N801 - mirrors torch.autocast
        def __init__(self, device_type, *args, **kwargs):
            if device_type == "cuda":
                device_type = "cpu"
            super().__init__(device_type, *args, **kwargs)

    setattr(autocast, _STANDIN_MARK, True)
    torch.autocast = autocast
    return True


def install_llava_legacy_image_tokens() -> bool:
    """HunyuanVideo-I2V (which pins transformers 4.39) tokenises its template with ONE ``<image>`` token and lets
    LLaVA expand it into the image's features; its crop offsets (``image_emb_start/end``, ``crop_start - 1 +
    image_emb_len``) assume that expansion. Later transformers expect one token per feature and raise "Image
    features and image tokens do not match". This repeats a lone ``<image>`` token ``image_seq_length`` times (and
    its attention mask), which is the sequence 4.39's merge builds for right-padded input. Idempotent; returns True
    if it patched (False where transformers has no such check)."""
    from transformers.models.llava import modeling_llava

    LlavaForConditionalGeneration = modeling_llava.LlavaForConditionalGeneration
    original = LlavaForConditionalGeneration.forward
    if getattr(original, _STANDIN_MARK, False):
        return True
    if not hasattr(getattr(modeling_llava, "LlavaModel", None), "get_placeholder_mask"):
        return False

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, **kwargs):
        image_id, n = self.config.image_token_id, self.config.image_seq_length
        if pixel_values is not None and input_ids is not None and n > 1 and bool(
                ((input_ids == image_id).sum(dim=1) == 1).all()):
            at = (input_ids == image_id).int().argmax(dim=1).tolist()
            input_ids = torch.stack([torch.cat([ids[:k], ids.new_full((n,), image_id), ids[k + 1:]])
                                     for ids, k in zip(input_ids, at)])
            if attention_mask is not None:
                attention_mask = torch.stack([torch.cat([m[:k], m.new_ones(n), m[k + 1:]])
                                              for m, k in zip(attention_mask, at)])
        return original(self, input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                        **kwargs)

    setattr(forward, _STANDIN_MARK, True)
    LlavaForConditionalGeneration.forward = forward
    return True


def _cpu_fp8_linear_forward(layer, original_dtype, input):
    """Upstream's ``fp8_linear_forward`` calls ``.sum()`` on the float8 weight, which CPU torch lacks; the
    arithmetic (dequantised weight times its scale, then the linear) is the same."""
    weight = layer.weight.to(original_dtype) * layer.fp8_scale.to(original_dtype)
    return F.linear(input, weight, layer.bias)


@torch.no_grad()
def convert_to_fp8_(model: torch.nn.Module, weight_path) -> torch.nn.Module:
    """What ``--use-fp8`` does to the DiT, on CPU: write the per-layer scale map upstream reads
    (``<weight>_map.pt``: max |w| / 448 for every block linear), run upstream's ``convert_fp8_linear``, and store
    the block linears' weights as float8_e4m3fn divided by their scale. Installs the CPU forward above."""
    from hyvideo.modules import fp8_optimization

    fp8_optimization.fp8_linear_forward = _cpu_fp8_linear_forward
    scales = {name: layer.weight.abs().max() / 448.0 for name, layer in model.named_modules()
              if isinstance(layer, torch.nn.Linear) and ("double_blocks" in name or "single_blocks" in name)}
    weight_path = str(weight_path)
    torch.save(scales, weight_path.replace(".pt", "_map.pt"))
    fp8_optimization.convert_fp8_linear(model, weight_path, original_dtype=next(model.parameters()).dtype)
    for name, layer in model.named_modules():
        if name in scales:
            layer.weight.copy_((layer.weight.float() / scales[name]).to(torch.float8_e4m3fn))
    return model


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------
@torch.no_grad()
def randomize_weights_(model: torch.nn.Module, seed: int, std: float = 0.02, gain: float = 1.0):
    """Re-initialise ALL parameters of ``model`` deterministically, in place.

    Upstream zero-initialises the modulation and final layers, so a freshly
    built transformer outputs exactly zero. Here:

    * matrices / conv kernels (ndim >= 2): N(0, gain^2 / fan_in), fan_in =
      prod(shape[1:]) -- variance preserving, so activations stay O(1);
    * 1-D weights of normalisation layers (class name contains "Norm"):
      1 + N(0, std^2);
    * every other 1-D / 0-D parameter (biases): N(0, std^2).

    Values are drawn on a CPU generator seeded with ``seed`` in
    ``named_parameters()`` order, so the result is independent of global RNG
    state, device and dtype. Returns ``model``.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    norm_params = set()
    for module in model.modules():
        if "Norm" in type(module).__name__:
            for p in module.parameters(recurse=False):
                if p.ndim == 1:
                    norm_params.add(id(p))
    for _, p in model.named_parameters():
        if p.ndim >= 2:
            fan_in = math.prod(p.shape[1:])
            value = torch.randn(p.shape, generator=gen, dtype=torch.float32) * (gain / math.sqrt(fan_in))
        elif id(p) in norm_params:
            value = 1.0 + torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
        else:
            value = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
        p.copy_(value.to(device=p.device, dtype=p.dtype))
    return model


# --------------------------------------------------------------------------
# Args / model / inputs
# --------------------------------------------------------------------------
def make_tiny_args(model: str = TINY_MODEL_NAME, argv: Optional[List[str]] = None, **overrides) -> argparse.Namespace:
    """Namespace as upstream ``parse_args()`` would produce for the tiny model.

    Builds upstream's parser from its own ``add_*_args`` helpers and parses an
    explicit list (``sys.argv`` is not read), then runs upstream's
    ``sanity_check_args``. Defaults: fp32 precisions everywhere,
    ``text_states_dim=TINY_TEXT_STATES_DIM``,
    ``text_states_dim_2=TINY_TEXT_STATES_DIM_2``. ``argv`` adds CLI flags;
    ``overrides`` set attributes afterwards (python names, e.g.
    ``text_len=32``). ``model`` must already be registered (the default tiny
    name is registered automatically).
    """
    add_hunyuanvideo_to_path()
    if model == TINY_MODEL_NAME:
        from hyvideo.modules.models import HUNYUAN_VIDEO_CONFIG

        if model not in HUNYUAN_VIDEO_CONFIG:
            register_tiny_config(model)
    from hyvideo import config as hy_config

    parser = argparse.ArgumentParser(description="HunyuanVideo inference script (tiny, tests)")
    groups = ["add_network_args", "add_extra_models_args", "add_denoise_schedule_args",
              *(g for g in ("add_i2v_args", "add_lora_args") if hasattr(hy_config, g)),  # HunyuanVideo-I2V
              "add_inference_args", "add_parallel_args"]
    for group in groups:
        parser = getattr(hy_config, group)(parser)
    base = [
        "--model", model,
        "--precision", "fp32",
        "--vae-precision", "fp32",
        "--text-encoder-precision", "fp32",
        "--text-encoder-precision-2", "fp32",
        "--text-states-dim", str(TINY_TEXT_STATES_DIM),
        "--text-states-dim-2", str(TINY_TEXT_STATES_DIM_2),
    ]
    args = parser.parse_args(base + list(argv or []))
    args = hy_config.sanity_check_args(args)
    for key, value in overrides.items():
        if not hasattr(args, key):
            raise AttributeError(f"upstream args have no attribute {key!r}")
        setattr(args, key, value)
    return args


def _config_name(overrides: Dict[str, object]) -> str:
    if not overrides:
        return TINY_MODEL_NAME
    parts = ",".join(f"{k}={overrides[k]}" for k in sorted(overrides))
    return f"{TINY_MODEL_NAME}[{parts}]".replace(" ", "")


def make_tiny_transformer(
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device="cpu",
    args_overrides: Optional[Dict[str, object]] = None,
    **config_overrides,
) -> Tuple[torch.nn.Module, argparse.Namespace]:
    """Build upstream's ``HYVideoDiffusionTransformer`` for the tiny config via
    ``hyvideo.modules.load_model`` and randomise its weights with ``seed``.

    ``config_overrides`` (e.g. ``mm_single_blocks_depth=0``) register a
    separate config entry named after them, leaving the default intact.
    ``args_overrides`` are passed to :func:`make_tiny_args`.
    Returns ``(model.eval(), args)``.
    """
    name = register_tiny_config(_config_name(config_overrides), **config_overrides)
    args = make_tiny_args(model=name, **(args_overrides or {}))
    from hyvideo.modules import load_model

    in_channels = LATENT_CHANNELS
    if getattr(args, "i2v_condition_type", None) == "latent_concat":  # I2V: [latents, image latents, mask]
        in_channels = 2 * LATENT_CHANNELS + 1
    model = load_model(
        args,
        in_channels=in_channels,
        out_channels=LATENT_CHANNELS,
        factor_kwargs={"device": device, "dtype": dtype},
    )
    randomize_weights_(model, seed)
    model.eval()
    return model, args


def i2v_model_input(x: torch.Tensor, image: torch.Tensor, condition: Optional[str]) -> torch.Tensor:
    """What HunyuanVideo-I2V's pipeline feeds its transformer for latents ``x`` and a first-frame image latent
    ``image`` (batch 1): the image replaces the first latent frame (``token_replace``), or comes in as channels with
    a first-frame mask (``latent_concat``); ``x`` itself otherwise."""
    image = image.expand(x.shape[0], -1, -1, -1, -1)
    if condition == "token_replace":
        return torch.cat([image, x[:, :, 1:]], dim=2)
    if condition == "latent_concat":
        concat, mask = torch.zeros_like(x), torch.zeros_like(x[:, :1])
        concat[:, :, :1], mask[:, :, :1] = image, 1
        return torch.cat([x, concat, mask], dim=1)
    return x


def rotary_freqs(model, latent_t: int, latent_h: int, latent_w: int, rope_theta: float = 256):
    """(freqs_cos, freqs_sin) for a latent of size (t, h, w), computed the way
    ``HunyuanVideoSampler.get_rotary_pos_embed`` does (sizes divided by the
    patch size, upstream ``get_nd_rotary_pos_embed``, use_real=True)."""
    from hyvideo.modules.posemb_layers import get_nd_rotary_pos_embed

    patch = model.patch_size
    if isinstance(patch, int):
        patch = [patch] * 3
    sizes = [latent_t, latent_h, latent_w]
    if any(s % p for s, p in zip(sizes, patch)):
        raise ValueError(f"latent size {sizes} not divisible by patch size {patch}")
    rope_sizes = [s // p for s, p in zip(sizes, patch)]
    head_dim = model.hidden_size // model.heads_num
    rope_dim_list = model.rope_dim_list or [head_dim // 3] * 3
    assert sum(rope_dim_list) == head_dim
    return get_nd_rotary_pos_embed(
        rope_dim_list, rope_sizes, theta=rope_theta, use_real=True, theta_rescale_factor=1
    )


def make_tiny_inputs(
    model,
    batch: int = 2,
    t: int = 1,
    h: int = 8,
    w: int = 8,
    text_len: int = 8,
    seed: int = 0,
    timestep: float = 900.0,
    embedded_guidance_scale: float = 6.0,
    valid_text_lens: Optional[List[int]] = None,
    rope_theta: float = 256,
) -> Dict[str, object]:
    """Keyword arguments for ``model(**inputs)`` (upstream forward signature).

    ``t, h, w`` are the LATENT frames/height/width (h, w multiples of the
    patch size 2). Text is padded on the right; by default sample i keeps
    ``text_len - 1 - 2*i`` tokens (at least 1), so every sample has padding
    and the masks matter. ``text_mask`` is int64 like the tokenizer's.
    ``guidance`` is ``embedded_guidance_scale * 1000`` as in the pipeline
    (None if the config has no guidance embedding).
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)

    if valid_text_lens is None:
        valid_text_lens = [max(1, text_len - 1 - 2 * i) for i in range(batch)]
    if len(valid_text_lens) != batch or not all(1 <= n <= text_len for n in valid_text_lens):
        raise ValueError(f"bad valid_text_lens {valid_text_lens} for batch={batch}, text_len={text_len}")
    text_mask = torch.zeros(batch, text_len, dtype=torch.int64)
    for i, n in enumerate(valid_text_lens):
        text_mask[i, :n] = 1

    x = randn(batch, model.in_channels, t, h, w)
    text_states = randn(batch, text_len, model.text_states_dim)
    text_states_2 = randn(batch, model.text_states_dim_2)
    freqs_cos, freqs_sin = rotary_freqs(model, t, h, w, rope_theta=rope_theta)
    guidance = None
    if model.guidance_embed:
        guidance = (torch.full((batch,), float(embedded_guidance_scale), dtype=torch.float32) * 1000.0).to(
            device=device, dtype=dtype
        )
    return {
        "x": x,
        "t": torch.full((batch,), float(timestep), dtype=torch.float32, device=device),
        "text_states": text_states,
        "text_mask": text_mask.to(device),
        "text_states_2": text_states_2,
        "freqs_cos": freqs_cos.to(device),
        "freqs_sin": freqs_sin.to(device),
        "guidance": guidance,
        "return_dict": True,
    }
