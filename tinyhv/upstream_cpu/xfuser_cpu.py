"""CPU stand-ins that let xfuser's sequence parallelism run on CPU (the tests' workers and runners).

Upstream HunyuanVideo's multi-GPU path (``hyvideo.inference.parallelize_transformer``
plus ``hyvideo.modules.attenion.parallel_attention``) relies on xfuser, yunchang and
flash-attn, all of which assume CUDA.  ``install_xfuser_cpu_standins()`` patches just
enough, *in memory and only in the calling process*, for that path to run under
``torchrun`` with the gloo backend on a CPU-only machine:

1. xfuser 0.7.0 imports triton (via its sparge attention) at import time; when triton
   is absent, a stub ``xfuser.core.sparge_attention.block_mask`` is registered.
2. ``import xfuser`` asks ``torch.version.cuda`` for an accelerator version and
   raises on CPU builds; the import is done with that attribute temporarily set.
3. xfuser decides at import time (``torch.cuda.is_available()``) whether yunchang is
   usable: its long-context attention module is then built on ``object`` and
   ``initialize_model_parallel`` skips yunchang's process groups.  The attention
   modules are re-imported with ``torch.cuda.is_available`` temporarily true, and
   ``HAS_LONG_CTX_ATTN`` is set, so the ulysses/ring groups are created.
4. xfuser's ring module imports ``update_npu_out`` from yunchang, which 0.6.4 lacks:
   a stub that raises is added.
5. Attention kernels: ``xFuserLongContextAttention()`` defaults to flash-attn
   (``AttnType.FA``) and yunchang's ``AttnType.TORCH_FLASH`` calls a CUDA-only aten op.
   Both are pointed at ``aten::_scaled_dot_product_flash_attention_for_cpu``, which
   returns the same ``(out, log-sum-exp)`` pair that ring attention needs to merge
   blocks (``TORCH_MATH`` returns a zero LSE and is only right for ring degree 1).
6. ``hyvideo.modules.attenion.parallel_attention`` calls flash-attn's
   ``_flash_attn_forward`` for the padded text tail and checks ``flash_attn.__version__``;
   CPU stand-ins are placed in that module's namespace (see
   ``install_hyvideo_parallel_attention_standin``).
7. Upstream's whole CLI under ``torchrun`` (``install_hyvideo_distributed_cpu_redirect``):
   ``HunyuanVideoSampler.from_pretrained`` calls ``dist.init_process_group("nccl")`` and
   xfuser's group set-up without a backend (xfuser then asks for an accelerator), and it and
   the pipeline place everything on ``torch.device(f"cuda:{rank}")``. The backend becomes
   gloo, and ``torch.device`` as those two modules see it maps ``cuda:N`` to the CPU
   (HunyuanVideo-I2V's ``from_pretrained`` also calls ``torch.cuda.set_device``: a no-op there).

Nothing here is used by the product or the benchmarks.  Upstream code is never
copied; it is imported and its module globals are patched.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from contextlib import contextmanager

import torch

__all__ = [
    "init_gloo_sequence_parallel",
    "install_hyvideo_distributed_cpu_redirect",
    "cpu_flash_attn_forward",
    "install_xfuser_cpu_standins",
    "install_hyvideo_parallel_attention_standin",
]



def cpu_flash_attn_forward(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_ignored):
    """flash-attn style forward on CPU.

    Inputs are ``[batch, seq, heads, head_dim]``.  Returns ``(out, lse)`` with
    ``out`` in the same layout and ``lse`` as ``[batch, heads, seq]`` float32, like
    flash-attn's ``_flash_attn_forward``.
    """
    if dropout_p:
        raise NotImplementedError("dropout is not supported by the CPU stand-in")
    b, s, h, d = q.shape
    if s == 0 or k.shape[1] == 0:  # e.g. no padded text tokens at all
        return q.new_zeros(b, s, h, v.shape[-1]), q.new_zeros(b, h, s, dtype=torch.float32)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        dropout_p=0.0, is_causal=causal, scale=softmax_scale,
    )
    return out.transpose(1, 2), lse.float()


cpu_flash_attn_forward._xfuser_cpu_standin = True  # marker: installed (also via another import name)


def _cpu_flash_attn_forward_v2(q, k, v, dropout_p, softmax_scale, causal, *args, **kwargs):
    """Stand-in for ``flash_attn.flash_attn_interface._flash_attn_forward`` (>= 2.7.0
    keyword signature): returns ``(out, softmax_lse, S_dmask, rng_state)``."""
    out, lse = cpu_flash_attn_forward(q, k, v, dropout_p, softmax_scale, causal)
    return out, lse, None, None


@contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def install_hyvideo_parallel_attention_standin(attenion_module=None):
    """Make upstream ``parallel_attention`` run on CPU.

    Patches the ``flash_attn`` / ``_flash_attn_forward`` globals of
    ``hyvideo.modules.attenion`` (the module that defines ``parallel_attention``;
    no other upstream module imports them by name).
    """
    if attenion_module is None:
        attenion_module = importlib.import_module("hyvideo.modules.attenion")
    if getattr(attenion_module, "_flash_attn_forward", None) is _cpu_flash_attn_forward_v2:
        return
    if attenion_module.flash_attn is not None and torch.cuda.is_available():
        return  # real flash-attn on a GPU machine: leave it alone
    attenion_module.flash_attn = types.SimpleNamespace(__version__="2.7.4", cpu_standin=True)
    attenion_module._flash_attn_forward = _cpu_flash_attn_forward_v2


def install_xfuser_cpu_standins(hyvideo: bool = True) -> None:
    """Install everything listed in the module docstring (idempotent).

    Call before anything imports xfuser or ``hyvideo.inference`` (which imports
    xfuser inside ``try``/``except`` and silently disables it on failure), i.e.
    before ``init_distributed_environment``. With ``hyvideo=True`` (default) the
    ``parallel_attention`` stand-in is also installed, which needs ``hyvideo``
    importable (HUNYUANVIDEO_ROOT on sys.path).
    """
    if torch.cuda.is_available():
        raise RuntimeError("install_xfuser_cpu_standins() is for CPU-only runs; on a GPU use the real kernels")
    import yunchang.kernels

    if not getattr(yunchang.kernels.flash_attn_forward, "_xfuser_cpu_standin", False):
        _install_xfuser()
    if hyvideo:
        install_hyvideo_parallel_attention_standin()


def _install_xfuser() -> None:
    # yunchang first, with the real torch.cuda answers (its globals probe packages).
    import yunchang  # noqa: F401
    import yunchang.kernels
    import yunchang.kernels.attention
    import yunchang.ring.utils

    # (4) symbol xfuser 0.7.0's NPU ring module imports; never called on CPU.
    if not hasattr(yunchang.ring.utils, "update_npu_out"):
        def update_npu_out(*args, **kwargs):
            raise NotImplementedError("NPU ring attention is not available (CPU test stand-in)")
        yunchang.ring.utils.update_npu_out = update_npu_out

    # (5) attention kernels: FA (xfuser's default) and TORCH_FLASH both -> CPU flash op.
    yunchang.kernels.flash_attn_forward = cpu_flash_attn_forward
    yunchang.kernels.attention._scaled_dot_product_flash_attention = (
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    )

    # (1) triton-only module imported by xfuser's attention backend registry.
    block_mask = "xfuser.core.sparge_attention.block_mask"
    if importlib.util.find_spec("triton") is None and block_mask not in sys.modules:
        stub = types.ModuleType(block_mask)

        def get_block_map_meansim(*args, **kwargs):
            raise NotImplementedError("sparge attention needs triton (CPU test stand-in)")

        stub.get_block_map_meansim = get_block_map_meansim
        sys.modules[block_mask] = stub

    # (2) import xfuser with an accelerator version to report.
    if "xfuser" not in sys.modules:
        with _patched(torch.version, "cuda", torch.version.cuda or "12.4"):
            import xfuser  # noqa: F401

    import xfuser.envs as envs
    import xfuser.core.distributed.parallel_state as parallel_state
    import xfuser.core.long_ctx_attention as lca
    import xfuser.core.long_ctx_attention.hybrid as lca_hybrid
    import xfuser.core.long_ctx_attention.hybrid.attn_layer as attn_layer

    # (3) yunchang process groups + real (yunchang-based) long-context attention.
    envs.PACKAGES_CHECKER.packages_info["has_long_ctx_attn"] = True
    parallel_state.HAS_LONG_CTX_ATTN = True
    with _patched(torch.cuda, "is_available", lambda: True):
        attn_layer = importlib.reload(attn_layer)
        for pkg in (lca, lca_hybrid):
            for name in ("xFuserLongContextAttention", "xFuserSanaLinearLongContextAttention", "AttnType"):
                setattr(pkg, name, getattr(attn_layer, name))
        # ring kernels (imported lazily by xFuserLongContextAttention.__init__)
        ring = "xfuser.core.long_ctx_attention.ring"
        if ring not in sys.modules:
            importlib.import_module(ring)
        else:
            for name in (ring + ".ring_flash_attn", ring + ".ring_npu_flash_attn", ring):
                importlib.reload(sys.modules[name])
    assert lca.xFuserLongContextAttention.__mro__[1].__name__ == "LongContextAttention"


class _CpuDeviceTorch(types.ModuleType):
    """``torch`` as one upstream module sees it, with ``torch.device("cuda:N")`` giving the CPU."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def device(spec, *args):
        return torch.device("cpu") if str(spec).startswith("cuda") else torch.device(spec, *args)

    @property
    def cuda(self):  # HunyuanVideo-I2V's from_pretrained calls torch.cuda.set_device(LOCAL_RANK)
        return _CpuCuda()


class _CpuCuda(types.ModuleType):
    """``torch.cuda`` with ``set_device`` a no-op (the CPU stays the device)."""

    def __init__(self):
        super().__init__("torch.cuda")

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def set_device(device):
        return None


def install_hyvideo_distributed_cpu_redirect() -> None:
    """Item 7 of the module docstring (idempotent). Call after ``install_xfuser_cpu_standins``, in a process that
    ``torchrun`` started, before ``HunyuanVideoSampler.from_pretrained`` runs."""
    import functools

    import torch.distributed as dist
    import hyvideo.diffusion.pipelines.pipeline_hunyuan_video as pipeline
    import hyvideo.inference as inference

    if inference.xfuser is None:
        raise RuntimeError("hyvideo.inference was imported before install_xfuser_cpu_standins()")
    if getattr(dist.init_process_group, "_cpu_standin", False):
        return
    original = dist.init_process_group

    def init_process_group(backend=None, *args, **kwargs):
        return original("gloo" if backend in (None, "nccl") else backend, *args, **kwargs)

    init_process_group._cpu_standin = True
    dist.init_process_group = init_process_group
    for name in ("init_distributed_environment", "initialize_model_parallel"):
        setattr(inference, name, functools.partial(getattr(inference, name), backend="gloo"))
    inference.torch = pipeline.torch = _CpuDeviceTorch()


def init_gloo_sequence_parallel(ulysses_degree: int, ring_degree: int) -> tuple:
    """In a ``torchrun`` worker: gloo, then xfuser's sequence-parallel groups (what ``from_pretrained`` does with
    nccl). Returns ``(rank, world_size)``; exits if the world is not ``ulysses_degree * ring_degree``."""
    import torch.distributed as dist
    from xfuser.core.distributed import init_distributed_environment, initialize_model_parallel

    dist.init_process_group("gloo")
    world = dist.get_world_size()
    if world != ulysses_degree * ring_degree:
        sys.exit(f"world size {world} != ulysses {ulysses_degree} x ring {ring_degree}")
    init_distributed_environment(rank=dist.get_rank(), world_size=world, backend="gloo")
    initialize_model_parallel(sequence_parallel_degree=world, ring_degree=ring_degree, ulysses_degree=ulysses_degree,
                              backend="gloo")
    return dist.get_rank(), world
