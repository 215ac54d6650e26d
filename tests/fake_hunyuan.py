"""A tiny stand-in with the block layout of Tencent's ``HYVideoDiffusionTransformer``.

The blocks are simple token-wise functions with exact, known outputs, so a test
can see in the values whether a block ran (``0.5 * img + k``) or was skipped (the
input plus the cached residual). The transformer's ``forward`` loops over the
blocks the way upstream's does: double blocks on ``(img, txt, vec, ...)``, then
single blocks on the concatenated ``x`` with ``txt_len``, image tokens first.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

import teacache_sample_video as tc


class FakeDoubleBlock(nn.Module):
    def __init__(self, hidden: int, k: float):
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        self.img_norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.k = k
        self.calls = 0

    def forward(self, img, txt, vec, cu_seqlens_q=None, cu_seqlens_kv=None, max_seqlen_q=None,
                max_seqlen_kv=None, freqs_cis=None):
        self.calls += 1
        return 0.5 * img + self.k, txt + self.k


class FakeSingleBlock(nn.Module):
    def __init__(self, k: float):
        super().__init__()
        self.k = k
        self.calls = 0

    def forward(self, x, vec, txt_len, cu_seqlens_q=None, cu_seqlens_kv=None, max_seqlen_q=None,
                max_seqlen_kv=None, freqs_cis=None):
        self.calls += 1
        return 0.75 * x + self.k


class FakeHunyuanTransformer(nn.Module):
    def __init__(self, hidden: int = 16, n_double: int = 2, n_single: int = 2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.hidden = hidden
        self.time_in = nn.Linear(1, hidden)
        self.double_blocks = nn.ModuleList(FakeDoubleBlock(hidden, 0.1 * (i + 1)) for i in range(n_double))
        self.single_blocks = nn.ModuleList(FakeSingleBlock(0.05 * (i + 1)) for i in range(n_single))
        self.final = nn.Identity()

    def forward(self, x, t, text_states=None, return_dict=True):
        vec = self.time_in(t[:, None] / 1000.0)
        img, txt = x, text_states
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, None, None, None, None, None)
        x_cat = torch.cat((img, txt), 1)
        for block in self.single_blocks:
            x_cat = block(x_cat, vec, txt.shape[1], None, None, None, None, None)
        img = self.final(x_cat[:, : x.shape[1]])
        return {"x": img} if return_dict else img

    def block_calls(self) -> int:
        return sum(b.calls for b in list(self.double_blocks) + list(self.single_blocks))


# Served as Tencent's transformer is: its spec, for this class (the registry matches exact classes, not layouts).
TENCENT = next(s for s in tc.MODELS if "hyvideo.modules.models:HYVideoDiffusionTransformer" in s.classes)
tc.register_model(dataclasses.replace(TENCENT, name="test fake of Tencent HunyuanVideo",
                                      classes=(f"{__name__}:FakeHunyuanTransformer",)))


def make_inputs(batch=2, img_tokens=24, txt_tokens=5, hidden=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, img_tokens, hidden, generator=g), torch.randn(batch, txt_tokens, hidden, generator=g)


def timesteps(num_steps: int) -> torch.Tensor:
    return torch.linspace(1000.0, 0.0, num_steps + 1)[:-1]


def sample(transformer, x, txt, num_steps: int, step_outputs=None):
    """A flow-matching Euler loop; one transformer call per step (CFG batched, as upstream)."""
    ts = timesteps(num_steps)
    for i, t in enumerate(ts):
        out = transformer(x, t.expand(x.shape[0]), text_states=txt)["x"]
        if step_outputs is not None:
            step_outputs.append(out)
        dt = (ts[i + 1] if i + 1 < num_steps else torch.tensor(0.0)) - t
        x = x + (dt / 1000.0) * (out - x)
    return x
