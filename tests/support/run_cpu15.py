"""Run a HunyuanVideo-1.5 script (upstream's ``generate.py`` or ours) on CPU with tiny weights.

Test-only. Usage::

    HUNYUANVIDEO_15_ROOT=/path/to/HunyuanVideo-1.5 \\
        python tests/support/run_cpu15.py SCRIPT [script args...]
    # e.g. SCRIPT = $HUNYUANVIDEO_15_ROOT/generate.py --model_path <tiny_v15_base.make_tiny_v15_model_base(root)> ...

Before SCRIPT runs as ``__main__`` (via runpy, ``sys.argv = [SCRIPT, *args]``, ``sys.path[0]`` = SCRIPT's
directory, as ``python SCRIPT`` would do) this:

1. puts ``$HUNYUANVIDEO_15_ROOT`` on ``sys.path``;
2. if ``import torchvision`` fails, installs a minimal ``torchvision`` stub: what the 1.5 pipeline's first-frame
   transform uses (``Resize((h, w), interpolation=InterpolationMode.LANCZOS)``, ``CenterCrop((h, w))``,
   ``ToTensor``, ``Normalize``; PIL, with torchvision's rules) and ``utils.make_grid``;
3. builds the parallel state's device meshes (``ParallelDims.build_mesh("cuda")``, run when ``generate.py`` is
   imported, even for one process) on the CPU, i.e. gloo (``hyvideo15_cpu.install_cpu_parallel_state``); under
   ``torchrun`` that is the sequence-parallel group ``initialize_parallel_state(sp=WORLD_SIZE)`` builds;
4. makes ``torch.cuda.set_device`` (called when ``generate.py`` is imported) a no-op while CUDA is unavailable;
5. sends the pipeline's CUDA device to the CPU: ``HunyuanVideo_1_5_Pipeline.create_pipeline(device=...,
   transformer_init_device=...)`` maps ``cuda`` to ``cpu`` (``generate.py --offloading false`` passes
   ``torch.device("cuda")``), and in the two pipeline modules ``torch.device("cuda")`` (``execution_device='cuda'``,
   group offloading's ``onload_device``) gives the CPU and ``torch.autocast(device_type="cuda", dtype=...)``
   autocasts on the CPU (the dtype as given, but see 7; disabling it, as torch does for "cuda" without CUDA, would
   leave e.g. the fp16 text states and the bf16 transformer mismatched). CPU autocast casts fewer ops than CUDA's:
   ``layer_norm`` gets CUDA's policy (fp32) under CPU autocast (``install_cuda_autocast_fp32_ops``), else a bf16
   model's LayerNorm fails on the pipeline's fp32 ByT5 zeros ("mixed dtype (CPU)");
6. reports a GPU of ``$HYVIDEO_CPU_GPU_MEMORY_GB`` GiB (default 80) from ``get_gpu_memory()``, which is 0 without
   CUDA. Upstream sizes the VAE tiles by it (256 px from 21 GiB, else 128) and, unless ``--group_offloading`` is
   given, turns group offloading on below 60 GiB, and then asserts that ``--offloading`` is on: with 0,
   ``--offloading false`` alone fails ("enable_group_offloading requires enable_offloading to be True");
7. runs the VAE in bf16 where upstream uses fp16 (``get_vae_inference_config()["dtype"]`` and the pipeline's
   fp16 autocasts, which are only around the VAE): this CPU has no fast fp16 convolution (``slow_conv3d``, 16x
   slower than bf16; the 720p SR decode alone would take half a minute). ``HYVIDEO_CPU_VAE_FP16=keep`` keeps fp16;
8. makes the SR stage's noise reproducible: ``add_noise_to_lq`` draws it with ``torch.randn_like`` from the global
   RNG, which torch 2.13 seeds at random in every process; it runs with the global RNG seeded with the SR call's
   ``seed`` (generate.py's ``--seed``; the RNG state is restored after), so that runs and ranks agree;
9. lets group offloading (``--group_offloading true``, or a memory under 60 GiB) run without CUDA streams:
   ``use_stream`` / ``record_stream`` are dropped from ``enable_group_offload`` while CUDA is unavailable (onload
   and offload are then both the CPU), and diffusers' lookup of ``torch.accelerator.current_accelerator()`` (None
   on a CPU) gives the CPU while the hooks are built.

Nothing is patched on disk; flash attention needs no stand-in (the tiny configs use ``attn_mode="torch"``, and
upstream falls back to it when ``flash_attn`` is missing).

Optional: ``HYVIDEO_CPU_SAVE_FRAMES=DIR`` saves the uint8 frames of every video written through
``imageio.mimwrite`` / ``imageio.mimsave`` (``generate.py``'s ``save_video`` and ours) as ``DIR/<video stem>.npy``,
exactly the array given to the encoder: comparable exactly, unlike the decoded mp4.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from tests.support import run_cpu, tiny_v15_base  # noqa: E402
from tinyhv.upstream_cpu import xfuser_cpu  # noqa: E402

_STANDIN_MARK = "_hyvideo15_cpu_standin"


# -- 2. torchvision stub -------------------------------------------------------------------------------------------
class _InterpolationMode:
    NEAREST, BILINEAR, BICUBIC, LANCZOS, BOX, HAMMING = "nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"


class _Resize:
    """torchvision's ``Resize`` for PIL images: an ``(h, w)`` size resizes to exactly that, an int size resizes the
    shorter edge (the longer one truncated, as torchvision does); PIL's filter for ``interpolation``."""

    def __init__(self, size, interpolation=_InterpolationMode.BILINEAR, **_ignored):
        self.size, self.interpolation = size, interpolation

    def __call__(self, image):
        from PIL import Image

        filters = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                   "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
        w, h = image.size
        if isinstance(self.size, int) or len(self.size) == 1:
            short = self.size if isinstance(self.size, int) else self.size[0]
            new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        else:
            new_h, new_w = self.size
        if (new_w, new_h) == (w, h):
            return image
        return image.resize((new_w, new_h), filters[str(getattr(self.interpolation, "value", self.interpolation))])


def install_torchvision_stub() -> bool:
    """``run_cpu.py``'s ``torchvision`` stub with the 1.5 pipeline's ``Resize`` and ``InterpolationMode``, if the
    real one cannot be imported; True if the stub was installed."""
    return run_cpu.install_torchvision_stub(resize=_Resize, InterpolationMode=_InterpolationMode)


# -- 4. to 9. CUDA stand-ins -------------------------------------------------------------------------------------
def _cpu_if_cuda(device):
    import torch

    return torch.device("cpu") if device is not None and str(device).startswith("cuda") else device


def _vae_fp16_as_bf16() -> bool:
    """``HYVIDEO_CPU_VAE_FP16``: ``bf16`` (default) runs the pipeline's fp16 VAE work in bf16, ``keep`` keeps fp16."""
    mode = os.environ.get("HYVIDEO_CPU_VAE_FP16", "bf16").strip().lower()
    if mode not in ("bf16", "keep"):
        raise SystemExit(f"run_cpu15.py: HYVIDEO_CPU_VAE_FP16 must be bf16 or keep, not {mode!r}")
    return mode == "bf16"


class _CpuDeviceTorch(xfuser_cpu._CpuDeviceTorch):
    """``torch`` as one upstream module sees it: ``torch.device("cuda...")`` is the CPU and
    ``torch.autocast(device_type="cuda", ...)`` autocasts on the CPU (fp16 as bf16 unless
    ``HYVIDEO_CPU_VAE_FP16=keep``: the pipeline autocasts to fp16 only around the VAE)."""

    @staticmethod
    def autocast(device_type, *args, **kwargs):
        import torch

        if device_type != "cuda":
            return torch.autocast(device_type, *args, **kwargs)
        if kwargs.get("dtype") is torch.float16 and _vae_fp16_as_bf16():
            kwargs["dtype"] = torch.bfloat16
        return torch.autocast("cpu", *args, **kwargs)


_AUTOCAST_LIBRARY = None


def install_cuda_autocast_fp32_ops() -> bool:
    """Under CPU autocast, run ``layer_norm`` as CUDA autocast does: inputs, weight and bias cast to fp32 (CPU
    autocast leaves it alone, and a bf16 model's LayerNorm then fails on the pipeline's fp32 ByT5 zeros: "mixed
    dtype (CPU): expect parameter to have scalar type of Float"). Only active while CPU autocast is on (the
    ``AutocastCPU`` dispatch key). Idempotent; nothing while CUDA is available."""
    global _AUTOCAST_LIBRARY
    import torch

    if torch.cuda.is_available() or _AUTOCAST_LIBRARY is not None:
        return _AUTOCAST_LIBRARY is not None
    autocast_cpu = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def fp32(t):
        return t.float() if t is not None and t.is_floating_point() else t

    def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
        with torch._C._ExcludeDispatchKeyGuard(autocast_cpu):
            return torch.ops.aten.layer_norm(fp32(input), normalized_shape, fp32(weight), fp32(bias), eps,
                                             cudnn_enable)

    library = torch.library.Library("aten", "IMPL")
    library.impl("layer_norm", layer_norm, "AutocastCPU")
    _AUTOCAST_LIBRARY = library
    return True


def install_cuda_set_device_noop() -> bool:
    """``torch.cuda.set_device`` does nothing while CUDA is unavailable (``generate.py`` calls it at import)."""
    import torch

    if torch.cuda.is_available() or getattr(torch.cuda.set_device, _STANDIN_MARK, False):
        return False

    def set_device(device):
        return None

    setattr(set_device, _STANDIN_MARK, True)
    torch.cuda.set_device = set_device
    return True


def install_pipeline_cpu_redirect() -> bool:
    """Items 5 to 9 of the module docstring (idempotent; nothing while CUDA is available)."""
    import torch

    if torch.cuda.is_available():
        return False
    import hyvideo.pipelines.hunyuan_video_pipeline as pipeline_module
    import hyvideo.pipelines.hunyuan_video_sr_pipeline as sr_module
    from hyvideo.models.transformers.hunyuanvideo_1_5_transformer import HunyuanVideo_1_5_DiffusionTransformer

    pipeline_cls = pipeline_module.HunyuanVideo_1_5_Pipeline
    if getattr(pipeline_cls.create_pipeline, _STANDIN_MARK, False):
        return True
    pipeline_module.torch = sr_module.torch = _CpuDeviceTorch()

    original_create = pipeline_cls.create_pipeline.__func__

    def create_pipeline(cls, *args, device=None, transformer_init_device=None, **kwargs):
        return original_create(cls, *args, device=_cpu_if_cuda(device) or torch.device("cpu"),
                               transformer_init_device=_cpu_if_cuda(transformer_init_device), **kwargs)

    setattr(create_pipeline, _STANDIN_MARK, True)
    pipeline_cls.create_pipeline = classmethod(create_pipeline)

    gib = float(os.environ.get("HYVIDEO_CPU_GPU_MEMORY_GB", "80"))

    def get_gpu_memory(device=None):
        return int(gib * 1024 ** 3)

    setattr(get_gpu_memory, _STANDIN_MARK, True)
    pipeline_module.get_gpu_memory = get_gpu_memory
    sys.modules["hyvideo.commons"].get_gpu_memory = get_gpu_memory

    original_vae_config = pipeline_cls.get_vae_inference_config

    def get_vae_inference_config(memory_limitation=None):
        config = dict(original_vae_config(memory_limitation))
        if config.get("dtype") is torch.float16 and _vae_fp16_as_bf16():
            config["dtype"] = torch.bfloat16
        return config

    pipeline_cls.get_vae_inference_config = staticmethod(get_vae_inference_config)

    sr_cls = sr_module.HunyuanVideo_1_5_SR_Pipeline
    original_sr_call, original_add_noise = sr_cls.__call__, sr_cls.add_noise_to_lq

    def sr_call(self, *args, **kwargs):
        self._cpu_standin_seed = kwargs.get("seed")
        return original_sr_call(self, *args, **kwargs)

    def add_noise_to_lq(self, lq_latents, *args, **kwargs):
        seed = getattr(self, "_cpu_standin_seed", None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if seed is None else int(seed))
            return original_add_noise(self, lq_latents, *args, **kwargs)

    sr_cls.__call__, sr_cls.add_noise_to_lq = sr_call, add_noise_to_lq

    original_group_offload = HunyuanVideo_1_5_DiffusionTransformer.enable_group_offload

    def enable_group_offload(self, onload_device, *args, use_stream=False, record_stream=False, **kwargs):
        # diffusers' ModuleGroup looks up torch.<current accelerator> (only used with streams): None on a CPU
        accelerator = torch.accelerator.current_accelerator
        torch.accelerator.current_accelerator = lambda *a, **k: accelerator(*a, **k) or torch.device("cpu")
        try:
            return original_group_offload(self, _cpu_if_cuda(onload_device), *args, **kwargs)
        finally:
            torch.accelerator.current_accelerator = accelerator

    HunyuanVideo_1_5_DiffusionTransformer.enable_group_offload = enable_group_offload
    return True


def prepare() -> None:
    """Everything the runner does before handing over to SCRIPT."""
    try:
        tiny_v15_base.add_hunyuanvideo15_to_path()
    except RuntimeError as e:
        raise SystemExit(f"run_cpu15.py: {e}") from None
    install_torchvision_stub()
    from tinyhv.upstream_cpu import hyvideo15_cpu

    hyvideo15_cpu.install_cpu_parallel_state()
    install_cuda_set_device_noop()
    install_pipeline_cpu_redirect()
    install_cuda_autocast_fp32_ops()
    if os.environ.get("HYVIDEO_CPU_SAVE_FRAMES"):
        run_cpu._install_frame_dump(os.environ["HYVIDEO_CPU_SAVE_FRAMES"])


def main(argv=None) -> None:
    run_cpu.run_script(sys.argv[1:] if argv is None else argv, prepare, __doc__)


if __name__ == "__main__":
    main()
