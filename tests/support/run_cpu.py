"""Run a HunyuanVideo script (upstream's or ours) on CPU with tiny weights.

Test-only. Usage::

    HUNYUANVIDEO_ROOT=/path/to/HunyuanVideo MODEL_BASE=/path/to/tiny_base \\
        python tests/support/run_cpu.py SCRIPT [script args...]

Before SCRIPT runs as ``__main__`` (via runpy, ``sys.argv = [SCRIPT, *args]``,
``sys.path[0]`` = SCRIPT's directory, as ``python SCRIPT`` would do) this:

1. puts ``$HUNYUANVIDEO_ROOT`` on ``sys.path``;
2. registers the tiny transformer configs (``--model HYVideo-T/2-tiny``, and
   ``HYVideo-T/2-tiny-i2v`` for HunyuanVideo-I2V);
3. installs the CPU stand-ins for ``get_cu_seqlens`` and flash attention;
4. redirects ``torch.autocast(device_type="cuda")`` to the CPU (no-op for
   fp32 runs, where upstream disables autocast anyway);
5. if ``import torchvision`` fails, installs a minimal ``torchvision`` stub
   whose ``utils.make_grid`` is enough for upstream's ``save_videos_grid`` (and whose
   ``transforms`` cover HunyuanVideo-I2V's image preprocessing);
6. makes transformers' LLaVA expand a lone ``<image>`` token as the 4.39 that
   HunyuanVideo-I2V pins did (``hyvideo_cpu.install_llava_legacy_image_tokens``);
7. under ``torchrun`` (``WORLD_SIZE`` > 1), installs xfuser's CPU stand-ins and
   sends upstream's nccl / ``cuda:N`` set-up to gloo and the CPU
   (``tinyhv/upstream_cpu/xfuser_cpu.py``), so that ``--ulysses-degree`` / ``--ring-degree`` run.

Optional: ``HYVIDEO_CPU_SAVE_TENSORS=DIR`` also saves every tensor passed to
``hyvideo.utils.file_utils.save_videos_grid`` as ``DIR/<video name>.pt``
(exact values, unlike the lossy .mp4); ``HYVIDEO_CPU_SAVE_FRAMES=DIR`` saves the
uint8 frames of every video written through ``imageio.mimsave`` (upstream's and
ours) as ``DIR/<video name>.npy``.
"""

from __future__ import annotations

import importlib.machinery
import os
import runpy
import sys
import types
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def _make_grid(tensor, nrow=8, padding=2, normalize=False, value_range=None,
               scale_each=False, pad_value=0.0, **kwargs):
    """Minimal stand-in for torchvision.utils.make_grid (no normalisation).

    Lays a [B, C, H, W] batch out as a [C, rows*(H+p)+p, cols*(W+p)+p] grid,
    ``nrow`` images per row; a single image is returned unchanged (as [C, H, W]).
    1-channel inputs are repeated to 3 channels, like torchvision.
    """
    import torch

    if isinstance(tensor, (list, tuple)):
        tensor = torch.stack(list(tensor), dim=0)
    if normalize or scale_each or value_range is not None:
        raise NotImplementedError("torchvision stub: make_grid normalisation not supported")
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() == 3:
        if tensor.size(0) == 1:
            tensor = torch.cat((tensor, tensor, tensor), 0)
        tensor = tensor.unsqueeze(0)
    if tensor.dim() == 4 and tensor.size(1) == 1:
        tensor = torch.cat((tensor, tensor, tensor), 1)
    if tensor.size(0) == 1:
        return tensor.squeeze(0)
    nmaps, channels, height, width = tensor.shape
    cols = min(nrow, nmaps)
    rows = (nmaps + cols - 1) // cols
    cell_h, cell_w = height + padding, width + padding
    grid = tensor.new_full((channels, cell_h * rows + padding, cell_w * cols + padding), pad_value)
    for k in range(nmaps):
        y, x = divmod(k, cols)
        top, left = y * cell_h + padding, x * cell_w + padding
        grid[:, top:top + height, left:left + width].copy_(tensor[k])
    return grid


class _Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class _Resize:
    """PIL resize of the shorter edge to ``size`` (torchvision's rule for an int size), bilinear."""

    def __init__(self, size):
        if not isinstance(size, int):
            raise NotImplementedError("torchvision stub: Resize takes an int size only")
        self.size = size

    def __call__(self, image):
        from PIL import Image

        w, h = image.size
        short, long = min(w, h), max(w, h)
        new_short, new_long = self.size, int(self.size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        return image if (new_w, new_h) == (w, h) else image.resize((new_w, new_h), Image.BILINEAR)


class _CenterCrop:
    def __init__(self, size):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, image):
        (th, tw), (w, h) = self.size, image.size
        if th > h or tw > w:
            raise NotImplementedError("torchvision stub: CenterCrop larger than the image")
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
        return image.crop((left, top, left + tw, top + th))


def _to_tensor(image):
    import numpy as np
    import torch

    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)


class _Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, tensor):
        import torch

        mean = torch.as_tensor(self.mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype).view(-1, 1, 1)
        return (tensor - mean) / std


def install_torchvision_stub(resize=None, **more_transforms) -> bool:
    """Install a ``torchvision`` stub if the real one cannot be imported (``resize``: another ``Resize``;
    ``more_transforms``: more names in ``torchvision.transforms``).

    Returns True if the stub was installed. transformers/diffusers are imported
    first so their "is torchvision available" checks still see no torchvision.
    """
    try:
        import torchvision  # noqa: F401

        return False
    except Exception:  # ImportError, or RuntimeError from CUDA-only wheels
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    tv = types.ModuleType("torchvision")
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", loader=None, is_package=True)
    tv.__path__ = []
    tv.__version__ = "0.0.0+hyvideo-cpu-stub"
    utils = types.ModuleType("torchvision.utils")
    utils.__spec__ = importlib.machinery.ModuleSpec("torchvision.utils", loader=None)
    utils.make_grid = _make_grid
    tv.utils = utils
    transforms = types.ModuleType("torchvision.transforms")  # what HunyuanVideo-I2V's image preprocessing uses
    transforms.__spec__ = importlib.machinery.ModuleSpec("torchvision.transforms", loader=None)
    transforms.Compose, transforms.Resize, transforms.CenterCrop = _Compose, resize or _Resize, _CenterCrop
    transforms.ToTensor, transforms.Normalize = (lambda: _to_tensor), _Normalize
    vars(transforms).update(more_transforms)
    tv.transforms = transforms
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.utils"] = utils
    sys.modules["torchvision.transforms"] = transforms
    return True


def _install_tensor_dump(out_dir: str) -> None:
    import torch
    import hyvideo.utils.file_utils as fu

    original = fu.save_videos_grid

    def save_videos_grid(videos, path, *args, **kwargs):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        torch.save(videos.detach().cpu().clone(), Path(out_dir) / (Path(path).stem + ".pt"))
        return original(videos, path, *args, **kwargs)

    fu.save_videos_grid = save_videos_grid


def _install_frame_dump(out_dir: str) -> None:
    """Every video written through ``imageio.mimsave`` / ``imageio.mimwrite`` (upstream's ``save_videos_grid``,
    HunyuanVideo-1.5's ``save_video`` and our ``save_video``) also goes to ``out_dir/<video name>.npy`` as the uint8
    frames given to the encoder: comparable exactly, unlike the decoded mp4 (H.264 turns a one-level difference in
    noisy frames into tens of levels). Idempotent."""
    import imageio
    import numpy as np

    def dumping(original):
        def write(uri, ims, *args, **kwargs):
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            frames = np.stack([np.asarray(im) for im in ims])
            np.save(Path(out_dir) / (Path(str(uri)).stem + ".npy"), frames)
            return original(uri, frames, *args, **kwargs)

        write._frame_dump = True
        return write

    for name in ("mimsave", "mimwrite"):
        if not getattr(getattr(imageio, name), "_frame_dump", False):
            setattr(imageio, name, dumping(getattr(imageio, name)))


def prepare() -> None:
    """Everything the runner does before handing over to SCRIPT."""
    if str(_REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(_REPO_ROOT))
    from tinyhv.upstream_cpu import hyvideo_cpu

    hyvideo_cpu.add_hunyuanvideo_to_path()
    hyvideo_cpu.register_tiny_config()
    hyvideo_cpu.register_tiny_config(hyvideo_cpu.TINY_I2V_MODEL_NAME, **hyvideo_cpu.TINY_I2V_CONFIG_OVERRIDES)
    hyvideo_cpu.install_cpu_standins()
    hyvideo_cpu.install_cuda_autocast_redirect()
    install_torchvision_stub()
    hyvideo_cpu.install_llava_legacy_image_tokens()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from tinyhv.upstream_cpu import xfuser_cpu

        xfuser_cpu.install_xfuser_cpu_standins()
        xfuser_cpu.install_hyvideo_distributed_cpu_redirect()
    dump_dir = os.environ.get("HYVIDEO_CPU_SAVE_TENSORS")
    if dump_dir:
        _install_tensor_dump(dump_dir)
    if os.environ.get("HYVIDEO_CPU_SAVE_FRAMES"):
        _install_frame_dump(os.environ["HYVIDEO_CPU_SAVE_FRAMES"])


def run_script(argv, prepare_first, usage: str) -> None:
    """``python SCRIPT args`` after ``prepare_first()``: ``argv`` is ``[SCRIPT, *args]``; no argument or ``--help``
    prints ``usage``."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        raise SystemExit(0 if argv else 2)
    script = Path(argv[0]).resolve()
    if not script.is_file():
        raise SystemExit(f"{Path(sys.argv[0]).name}: no such script: {argv[0]}")
    prepare_first()
    # Emulate `python SCRIPT`: sys.path[0] is the script's directory (not ours).
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p != here]
    sys.path.insert(0, str(script.parent))
    sys.argv = [str(script), *argv[1:]]
    runpy.run_path(str(script), run_name="__main__")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Done (the script has written everything): under torchrun, exit without the interpreter's teardown of
        # gloo's threads, which on this CPU build aborts now and then ("terminate called without an active
        # exception"; see tests/engine/test_distributed_decisions.py)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(argv=None) -> None:
    run_script(sys.argv[1:] if argv is None else argv, prepare, __doc__)


if __name__ == "__main__":
    main()
