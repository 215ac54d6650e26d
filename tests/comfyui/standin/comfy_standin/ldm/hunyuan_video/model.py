"""A tiny model with the class path and calling convention of ComfyUI's HunyuanVideo (tests only)."""
import math
from dataclasses import dataclass

import torch
from torch import nn

from comfy import patcher_extension
from comfy.ldm.flux.layers import DoubleStreamBlock, SingleStreamBlock


@dataclass
class HunyuanVideoParams:
    in_channels: int = 4
    out_channels: int = 4
    hidden_size: int = 32
    context_in_dim: int = 8
    depth: int = 2
    depth_single_blocks: int = 2
    vision_in_dim: int = None  # HunyuanVideo-1.5 (folded into this class by ComfyUI)
    use_cond_type_embedding: bool = False


def _embed(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class HunyuanVideo(nn.Module):
    def __init__(self, txt_first=False, inplace_img=False, seed=0, **params):
        super().__init__()
        self.params = p = HunyuanVideoParams(**params)
        self.txt_first = txt_first  # newer ComfyUI: cat(txt, img) and transformer_options["img_slice"]
        torch.manual_seed(seed)
        d = p.hidden_size
        self.img_in = nn.Linear(p.in_channels, d)
        self.txt_in = nn.Linear(p.context_in_dim, d)
        self.time_in = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(d, inplace_img) for _ in range(p.depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(d) for _ in range(p.depth_single_blocks))
        self.final = nn.Linear(d, p.out_channels)

    def forward(self, x, timestep, context, y=None, guidance=None, guiding_frame_index=None, control=None,
                transformer_options={}, **kwargs):
        return patcher_extension.WrapperExecutor.new_class_executor(
            self._forward, self,
            patcher_extension.get_all_wrappers(patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options),
        ).execute(x, timestep, context, y, guidance, guiding_frame_index, control, transformer_options, **kwargs)

    def _forward(self, x, timestep, context, y, guidance, guiding_frame_index, control, transformer_options,
                 **kwargs):
        b, c, t, h, w = x.shape
        img = self.img_in(x.flatten(2).transpose(1, 2))  # (B, T*H*W, D): one token per latent pixel
        txt = self.txt_in(context)
        vec = self.time_in(_embed(timestep, self.params.hidden_size))
        dims_img = dims_txt = None
        if guiding_frame_index is not None:  # I2V v2: the first frame's tokens modulated by the image's vec
            first = self.time_in(_embed(guiding_frame_index.flatten()[:1].expand(b), self.params.hidden_size))
            vec = torch.stack([first, vec], dim=1)
            frame_tokens = h * w
            dims_img, dims_txt = [(0, frame_tokens, 0), (frame_tokens, None, 1)], [(0, None, 1)]
        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, pe=None, attn_mask=None, modulation_dims_img=dims_img,
                             modulation_dims_txt=dims_txt, transformer_options=transformer_options)
        n = img.shape[1]
        if self.txt_first:
            x_joint = torch.cat((txt, img), 1)
            transformer_options["img_slice"] = [txt.shape[1], txt.shape[1] + n]
            dims = None if dims_img is None else [(txt.shape[1], txt.shape[1] + dims_img[0][1], 0),
                                              (txt.shape[1] + dims_img[0][1], None, 1), (0, txt.shape[1], 1)]
        else:
            x_joint = torch.cat((img, txt), 1)
            dims = None if dims_img is None else [(0, dims_img[0][1], 0), (dims_img[0][1], None, 1)]
        for block in self.single_blocks:
            x_joint = block(x_joint, vec=vec, pe=None, attn_mask=None, modulation_dims=dims,
                            transformer_options=transformer_options)
        img = x_joint[:, txt.shape[1]:txt.shape[1] + n] if self.txt_first else x_joint[:, :n]
        out = self.final(img)
        return out.transpose(1, 2).reshape(b, -1, t, h, w)
