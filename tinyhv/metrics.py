"""Video fidelity metrics: PSNR and SSIM (Gaussian window, Wang et al. 2004) over frames, in torch.

Videos are ``(T, H, W, C)`` (or ``(H, W, C)`` single frames) with values in ``[0, data_range]``.
SSIM follows the reference definition (and ``skimage.metrics.structural_similarity`` with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``): an 11x11 Gaussian window
(sigma 1.5, truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, the SSIM map over the window positions
that fit inside the frame, averaged over positions, channels and frames.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

Array = Union[torch.Tensor, np.ndarray]


def _as_video(x: Array) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().to(torch.float64).cpu()
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4:
        raise ValueError(f"expected (T, H, W, C) or (H, W, C), got shape {tuple(t.shape)}")
    return t


def mse(a: Array, b: Array) -> float:
    a, b = _as_video(a), _as_video(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a - b).pow(2).mean())


def psnr(a: Array, b: Array, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of the whole video (MSE over all frames): ``10 log10(range^2 / MSE)``;
    ``inf`` for identical videos."""
    m = mse(a, b)
    return math.inf if m == 0 else 10 * math.log10(data_range ** 2 / m)


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    """The normalised 1-D Gaussian taps (11 for sigma 1.5), as ``scipy.ndimage.gaussian_filter`` builds them."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim_map(a: Array, b: Array, data_range: float = 1.0, sigma: float = 1.5, k1: float = 0.01,
             k2: float = 0.03) -> torch.Tensor:
    """The SSIM map ``(T, C, H - 2r, W - 2r)`` (window positions inside the frame)."""
    a, b = _as_video(a), _as_video(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    w = gaussian_window(sigma)
    k = w.numel()
    if a.shape[1] < k or a.shape[2] < k:
        raise ValueError(f"frames must be at least {k}x{k} for the {k}x{k} SSIM window, got {tuple(a.shape[1:3])}")
    x = a.permute(0, 3, 1, 2)  # (T, C, H, W)
    y = b.permute(0, 3, 1, 2)
    t, c = x.shape[:2]

    def filt(z: torch.Tensor) -> torch.Tensor:  # separable valid Gaussian filtering per channel
        z = z.reshape(t * c, 1, *z.shape[2:])
        z = F.conv2d(z, w.view(1, 1, k, 1))
        z = F.conv2d(z, w.view(1, 1, 1, k))
        return z.reshape(t, c, *z.shape[2:])

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x ** 2
    var_y = filt(y * y) - mu_y ** 2
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


def ssim(a: Array, b: Array, data_range: float = 1.0, **kw) -> float:
    """Mean SSIM over frames (and channels); 1.0 for identical videos."""
    return float(ssim_map(a, b, data_range, **kw).mean())


def ssim_per_frame(a: Array, b: Array, data_range: float = 1.0, **kw) -> torch.Tensor:
    return ssim_map(a, b, data_range, **kw).mean(dim=(1, 2, 3))


__all__ = ["mse", "psnr", "ssim", "ssim_map", "ssim_per_frame", "gaussian_window"]
