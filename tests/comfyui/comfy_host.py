"""Helpers for the tests against a real ComfyUI (``COMFYUI_ROOT``): importing ComfyUI's ``comfy`` package on this
CPU-only machine, tiny HunyuanVideo checkpoints in ComfyUI's weight layout, conditioning without text encoders.

Nothing of ComfyUI is copied here: the checkpoints' key names and shapes are read from ComfyUI's own model class
(built on the meta device), and the weights are random, written to a temporary folder as safetensors, then loaded
back through ``comfy.sd.load_diffusion_model`` (ComfyUI's own detection picks the model class)."""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
HIDDEN = 128  # ComfyUI's detection takes num_heads = hidden // 128 and axes_dim [16, 56, 56]: one head of 128
CONTEXT_DIM = 32  # the text encoder's width (4096 for llava-llama-3; 3584 for 1.5's Qwen2.5-VL)
POOLED_DIM = 768  # CLIP-L's pooled output (vector_in), fixed by ComfyUI's detection


def _torchvision_stub() -> None:
    """ComfyUI imports torchvision at module level in a few model files HunyuanVideo never uses; it cannot be
    imported under this project's pinned CPU torch, so a stub stands in where the import fails."""
    import transformers  # noqa: F401  (first: they look torchvision up, and must find none)
    try:
        import diffusers  # noqa: F401
    except ImportError:
        pass
    try:
        import torchvision  # noqa: F401
        return
    except Exception:
        pass
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]

    class _Missing:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("torchvision is a stub in these tests")

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    for name in ("Compose", "Normalize", "Resize", "ToTensor", "CenterCrop", "InterpolationMode"):
        setattr(transforms, name, _Missing)
    tv.transforms = transforms
    tv.__path__ = []
    sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms})


def import_comfy(root) -> types.SimpleNamespace:
    """Put the ComfyUI at ``root`` (a Comfy-Org/ComfyUI checkout, or hiddenswitch's packaged one) first on
    ``sys.path``, on the CPU, and import what the tests use."""
    root = str(Path(root).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _torchvision_stub()
    cli_args = importlib.import_module("comfy.cli_args")
    try:
        cli_args.args.cpu = True  # Comfy-Org's; hiddenswitch's falls back to the CPU by itself
    except Exception:
        pass
    mods = {name.split(".")[-1]: importlib.import_module(name) for name in (
        "comfy.model_management", "comfy.sd", "comfy.sample", "comfy.samplers", "comfy.patcher_extension",
        "comfy.ldm.hunyuan_video.model", "comfy.model_base", "comfy.utils")}
    mods["root"] = Path(root)
    mods["hiddenswitch"] = (Path(root) / "comfy" / "cmd").is_dir()
    return types.SimpleNamespace(**mods)


def model_params(kind: str, comfy) -> dict:
    """The tiny model's HunyuanVideoParams as ComfyUI's detection will read them back from the weights.
    ``kind``: ``t2v`` (also I2V v2, token replace), ``i2v`` (v1, concat: 33 input channels), ``v15`` (1.5)."""
    params = dict(in_channels=16, out_channels=16, vec_in_dim=POOLED_DIM, context_in_dim=CONTEXT_DIM,
                  hidden_size=HIDDEN, mlp_ratio=4.0, num_heads=1, depth=2, depth_single_blocks=2,
                  axes_dim=[16, 56, 56], theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True,
                  byt5=False, meanflow=False)
    fields = comfy.model.HunyuanVideoParams.__dataclass_fields__
    if "vision_in_dim" in fields:
        params.update(use_cond_type_embedding=False, vision_in_dim=None, meanflow_sum=False)
    if kind == "i2v":
        params["in_channels"] = 33
    elif kind == "v15":
        if "vision_in_dim" not in fields:
            raise ValueError("this ComfyUI has no HunyuanVideo 1.5")
        # 32 latent channels, + 32 image latent + 1 mask concatenated; no pooled CLIP vector, no single blocks
        params.update(in_channels=65, out_channels=32, vec_in_dim=None, patch_size=[1, 1, 1], depth_single_blocks=0,
                      guidance_embed=False, use_cond_type_embedding=True, vision_in_dim=1152, meanflow_sum=True)
    elif kind != "t2v":
        raise ValueError(kind)
    return params


def write_checkpoint(path, kind: str, comfy, seed: int = 0, depth: int = 2, depth_single: int = 2) -> Path:
    """Random weights for a tiny ComfyUI HunyuanVideo of ``kind``, in ComfyUI's key names, as safetensors."""
    from safetensors.torch import save_file

    ops = importlib.import_module("comfy.ops")

    params = model_params(kind, comfy)
    params["depth"] = depth
    if kind != "v15":
        params["depth_single_blocks"] = depth_single
    with torch.device("meta"):
        model = comfy.model.HunyuanVideo(operations=ops.disable_weight_init, **params)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, t in model.state_dict().items():
        if name.endswith(".scale") or (t.ndim == 1 and ("norm" in name or name.endswith("proj.0.weight")
                                                        or name.endswith("proj.4.weight"))):
            value = torch.ones(t.shape)  # RMSNorm scales, LayerNorm weights
        elif t.ndim == 1:
            value = torch.randn(t.shape, generator=g) * 0.02
        else:
            fan_in = max(1, t[0].numel())
            value = torch.randn(t.shape, generator=g) / fan_in ** 0.5
        sd[name] = value.contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def load(path, comfy):
    """``comfy.sd.load_diffusion_model``: ComfyUI's detection, its model class, a ModelPatcher."""
    return comfy.sd.load_diffusion_model(str(path))


def conditioning(comfy, kind: str = "t2v", seed: int = 0, tokens: int = 6, **extra):
    """Positive/negative conditioning as a text encoder node would give it (``[[cross_attn, {pooled_output...}]]``);
    ``extra`` (the image: ``concat_latent_image``, ``guiding_frame_index``) on the positive only."""
    g = torch.Generator().manual_seed(seed)

    def one(s, **more):
        meta = {"pooled_output": torch.randn(1, POOLED_DIM, generator=g) * s, **more}  # 1.5 has no vector_in
        return [[torch.randn(1, tokens, CONTEXT_DIM, generator=g) * s, meta]]
    return one(1.0, **extra), one(0.5)  # as HunyuanImageToVideo does: the image goes to the positive only
