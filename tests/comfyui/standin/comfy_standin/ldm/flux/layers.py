"""Flux-style blocks with ComfyUI's interfaces (tests only; small, written for the tests)."""
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ModulationOut:
    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor


class Modulation(nn.Module):
    def __init__(self, dim, double):
        super().__init__()
        self.count = 6 if double else 3
        self.lin = nn.Linear(dim, self.count * dim)

    def forward(self, vec):
        vec = vec[:, None, :] if vec.ndim == 2 else vec
        out = self.lin(nn.functional.silu(vec)).chunk(self.count, dim=-1)
        return ModulationOut(*out[:3]), (ModulationOut(*out[3:]) if self.count == 6 else None)


def apply_mod(tensor, mult, add=None, modulation_dims=None):
    """``tensor * mult + add``; with ``modulation_dims`` [(start, end, i)], token range start:end takes the
    modulation's entry i (in place, as ComfyUI's does)."""
    if modulation_dims is None:
        return tensor * mult if add is None else torch.addcmul(add, tensor, mult)
    for start, end, i in modulation_dims:
        tensor[:, start:end] *= mult[:, i]
        if add is not None:
            tensor[:, start:end] += add[:, i]
    return tensor


def _attention(q, k, v, mask=None):
    return nn.functional.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], attn_mask=mask)[:, 0]


class DoubleStreamBlock(nn.Module):
    def __init__(self, dim, inplace_img=False):
        super().__init__()
        self.inplace_img = inplace_img
        self.img_mod, self.txt_mod = Modulation(dim, True), Modulation(dim, True)
        self.img_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.txt_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.img_qkv, self.txt_qkv = nn.Linear(dim, 3 * dim), nn.Linear(dim, 3 * dim)
        self.img_proj, self.txt_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, img, txt, vec, pe=None, attn_mask=None, modulation_dims_img=None, modulation_dims_txt=None,
                transformer_options={}):
        img_mod, _ = self.img_mod(vec)
        txt_mod, _ = self.txt_mod(vec)
        img_in = apply_mod(self.img_norm1(img), 1 + img_mod.scale, img_mod.shift, modulation_dims_img)
        txt_in = apply_mod(self.txt_norm1(txt), 1 + txt_mod.scale, txt_mod.shift, modulation_dims_txt)
        q, k, v = torch.cat((self.img_qkv(img_in), self.txt_qkv(txt_in)), 1).chunk(3, dim=-1)
        attn = _attention(q, k, v, attn_mask)
        n = img.shape[1]
        img_add = apply_mod(self.img_proj(attn[:, :n]), img_mod.gate, None, modulation_dims_img)
        if self.inplace_img:  # newer ComfyUI: img += ...
            img += img_add
        else:
            img = img + img_add
        txt += apply_mod(self.txt_proj(attn[:, n:]), txt_mod.gate, None, modulation_dims_txt)
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.modulation = Modulation(dim, False)
        self.pre_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, vec, pe=None, attn_mask=None, modulation_dims=None, transformer_options={}):
        mod, _ = self.modulation(vec)
        q, k, v = self.qkv(apply_mod(self.pre_norm(x), 1 + mod.scale, mod.shift, modulation_dims)).chunk(3, dim=-1)
        x += apply_mod(self.proj(_attention(q, k, v, attn_mask)), mod.gate, None, modulation_dims)  # in place
        return x
