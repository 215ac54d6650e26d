"""TinyHunyuanVideo: diffusers' HunyuanVideo transformer + a word-embedding text encoder + a flow-match sampler."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Union

import torch
from torch import nn

from . import data

ROOT = Path(__file__).resolve().parents[1]
#: The shipped weights; the JSON config with the same stem lies beside them.
DEFAULT_ASSETS = ROOT / "assets" / "tiny_hunyuan_video.safetensors"

#: diffusers ``HunyuanVideoTransformer3DModel`` arguments of the shipped model. Pixel space: a 2x2x2 (t, h, w)
#: patch makes an 8-frame 16x16 clip 4 x 8 x 8 = 256 tokens (HunyuanVideo: 4x temporal VAE, patch_size_t 1).
TRANSFORMER_CONFIG = dict(
    in_channels=3, out_channels=3, num_attention_heads=4, attention_head_dim=32, num_layers=2, num_single_layers=4,
    num_refiner_layers=1, mlp_ratio=4.0, patch_size=2, patch_size_t=2, qk_norm="rms_norm", guidance_embeds=True,
    text_embed_dim=64, pooled_projection_dim=64, rope_theta=256.0, rope_axes_dim=(8, 12, 12),
)

SIGMA_MIN = 0.05  # x0-prediction: the velocity's denominator is clamped here (training and sampling)
NULL_TOKEN = "<null>"  # the whole "empty prompt" (classifier-free-guidance dropout during training)


#: The samplers ``generate`` runs: one transformer call per step, or two (Heun's corrector; DPM2's midpoint).
SAMPLERS = ("euler", "heun", "dpm2")


def flow_sigmas(num_steps: int, shift: float) -> torch.Tensor:
    """HunyuanVideo's flow-matching schedule: ``num_steps + 1`` noise levels from 1 to 0, with
    ``sigma' = shift * s / (1 + (shift - 1) * s)`` (what ``FlowMatchEulerDiscreteScheduler(shift=...)`` uses)."""
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).float()


class TinyTextEncoder(nn.Module):
    """Per-token states (``encoder_hidden_states`` + mask) and a pooled vector (``pooled_projections``)
    from a learned embedding table over a fixed vocabulary; padding goes at the end, as diffusers'
    HunyuanVideo attention mask expects."""

    def __init__(self, vocab: Sequence[str], max_length: int = 10, dim: int = 64, pooled_dim: int = 64):
        super().__init__()
        self.vocab = list(vocab)
        if self.vocab[0] != "<pad>" or NULL_TOKEN not in self.vocab:
            raise ValueError("vocab must start with '<pad>' and contain '<null>'")
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = max_length
        self.token_embedding = nn.Embedding(len(self.vocab), dim)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, dim))
        self.norm = nn.LayerNorm(dim)
        self.pooled_proj = nn.Linear(dim, pooled_dim)
        nn.init.normal_(self.token_embedding.weight, std=1.0)
        nn.init.normal_(self.position_embedding, std=0.1)

    def tokenize(self, prompts: Sequence[str]):
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            words = prompt.lower().strip().rstrip(".").split() or [NULL_TOKEN]
            if len(words) > self.max_length:
                raise ValueError(f"prompt longer than {self.max_length} words: {prompt!r}")
            unknown = [w for w in words if w not in self.index or w == "<pad>"]
            if unknown:
                raise ValueError(f"words outside the vocabulary {unknown} in {prompt!r}; known: "
                                 f"{' '.join(w for w in self.vocab if not w.startswith('<'))}")
            ids[i, :len(words)] = torch.tensor([self.index[w] for w in words])
            mask[i, :len(words)] = True
        return ids, mask

    def forward(self, ids: torch.Tensor, mask: torch.Tensor):
        states = self.norm(self.token_embedding(ids) + self.position_embedding[: ids.shape[1]])
        m = mask.unsqueeze(-1).to(states.dtype)
        pooled = self.pooled_proj((states * m).sum(1) / m.sum(1).clamp_min(1))
        return states * m, pooled


class TinyHunyuanVideo(nn.Module):
    """The transformer, the text encoder and the sampler of the tiny model."""

    def __init__(self, config: Optional[dict] = None):
        super().__init__()
        config = json.loads(json.dumps(config or self.default_config()))  # deep copy, JSON-clean
        self.config = config
        self.transformer = self.transformer_class()(**config["transformer"])
        te = config["text_encoder"]
        self.text_encoder = TinyTextEncoder(config["vocab"], te["max_length"], te["dim"], te["pooled_dim"])

    @staticmethod
    def transformer_class():
        from diffusers import HunyuanVideoTransformer3DModel

        return HunyuanVideoTransformer3DModel

    @staticmethod
    def default_config() -> dict:
        return {
            "transformer": dict(TRANSFORMER_CONFIG),
            "text_encoder": {"max_length": 10, "dim": TRANSFORMER_CONFIG["text_embed_dim"],
                             "pooled_dim": TRANSFORMER_CONFIG["pooled_projection_dim"]},
            "vocab": ["<pad>", NULL_TOKEN, *[w for w in data.VOCAB if w != "<pad>"]],
            "video": {"frames": data.FRAMES, "height": data.HEIGHT, "width": data.WIDTH, "channels": 3,
                      "value_range": [-1, 1], "space": "pixel"},
            "prediction": "velocity",
            "sampling": {"num_steps": 50, "shift": 3.0, "guidance": 1.0, "cfg_scale": 1.0},
            "data": {"shapes": list(data.SHAPES), "colours": data.COLOURS, "directions": list(data.DIRECTIONS),
                     "sizes": data.SIZES, "backgrounds": data.BACKGROUNDS, "travel_px": data.TRAVEL,
                     "path_jitter_px": {"across": data.JITTER[0], "along": data.JITTER[1]},
                     "grammar": "a {size} {colour} {shape} moves {direction} on a {background} background",
                     "held_out_triples": [list(t) for t in data.HELD_OUT_TRIPLES]},
        }

    # -- persistence -------------------------------------------------------- #
    #: the shipped weights of this class
    assets = DEFAULT_ASSETS
    #: the dtype of exported weights (training keeps float32)
    export_dtype = torch.float32

    @classmethod
    def from_pretrained(cls, path: Union[str, Path, None] = None) -> "TinyHunyuanVideo":
        """The model at ``path`` (safetensors; default: the shipped one), in float32 whatever the file's dtype."""
        from safetensors.torch import load_file

        path = Path(path or cls.assets)
        config = json.loads(path.with_suffix(".json").read_text())
        model = cls(config)
        model.load_state_dict(load_file(str(path)))
        return model.eval().requires_grad_(False)

    def save_pretrained(self, path: Union[str, Path, None] = None, extra: Optional[dict] = None) -> Path:
        """Weights to ``path`` (safetensors, in ``export_dtype``), config (+ ``extra``, e.g. training facts) to
        ``path.json``."""
        from safetensors.torch import save_file

        path = Path(path or self.assets)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(self.export_dtype).contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt"})
        tmp.chmod(0o644)  # safetensors creates it private; the shipped weights are world-readable
        tmp.replace(path)
        config = {**self.config, **(extra or {})}
        path.with_suffix(".json").write_text(json.dumps(config, indent=2) + "\n")
        return path

    # -- conditioning ------------------------------------------------------- #
    @property
    def video_shape(self):
        v = self.config["video"]
        return v["frames"], v["height"], v["width"]

    def encode(self, prompts: Union[str, Sequence[str]]) -> Dict[str, torch.Tensor]:
        """The transformer's text inputs for ``prompts``: ``encoder_hidden_states``, ``encoder_attention_mask``,
        ``pooled_projections``."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids, mask = self.text_encoder.tokenize(prompts)
        device = next(self.parameters()).device
        states, pooled = self.text_encoder(ids.to(device), mask.to(device))
        return {"encoder_hidden_states": states, "encoder_attention_mask": mask.to(device),
                "pooled_projections": pooled}

    @property
    def prediction(self) -> str:
        """What the transformer outputs: ``"velocity"`` (``noise - x0``, as HunyuanVideo) or ``"sample"`` (``x0``;
        the velocity is then ``(x_t - x0) / max(sigma, SIGMA_MIN)``, as in JiT, Li & He 2025)."""
        return self.config.get("prediction", "velocity")

    def velocity(self, x: torch.Tensor, sigma: Union[float, torch.Tensor], cond: Dict[str, torch.Tensor],
                 guidance: float) -> torch.Tensor:
        """One transformer call: the flow ``noise - x0`` at noise level ``sigma`` (timestep = 1000 sigma, guidance
        embedding input = 1000 guidance, as diffusers' HunyuanVideo pipeline scales both)."""
        b = x.shape[0]
        sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(b)
        out = self.transformer(**self.transformer_inputs(x, sig * 1000, cond, guidance), return_dict=False)[0]
        if self.prediction == "sample":
            return (x - out) / sig.clamp_min(SIGMA_MIN).view(-1, 1, 1, 1, 1)
        return out

    def transformer_inputs(self, x: torch.Tensor, timestep: torch.Tensor, cond: Dict[str, torch.Tensor],
                           guidance: float) -> Dict[str, torch.Tensor]:
        """The transformer's keyword arguments for one call."""
        return dict(hidden_states=x, timestep=timestep, encoder_hidden_states=cond["encoder_hidden_states"],
                    encoder_attention_mask=cond["encoder_attention_mask"],
                    pooled_projections=cond["pooled_projections"],
                    guidance=torch.full((x.shape[0],), guidance * 1000.0, dtype=x.dtype, device=x.device))

    # -- sampling ----------------------------------------------------------- #
    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """``(B, 3, T, H, W)`` standard normal noise, one generator per seed (batching never changes a sample)."""
        t, h, w = self.video_shape
        return torch.stack([torch.randn(3, t, h, w, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

    @torch.no_grad()
    def generate(self, prompt: Union[str, Sequence[str]], seed: int = 0, num_steps: Optional[int] = None,
                 guidance: Optional[float] = None, shift: Optional[float] = None, cache=None,
                 cfg_scale: Optional[float] = None, return_latents: bool = False,
                 sampler: str = "euler", wrappers: Optional[Dict[str, Callable]] = None) -> torch.Tensor:
        """Sample a clip: ``(T, H, W, 3)`` float in [0, 1] (``(B, T, H, W, 3)`` for a list of prompts; prompt i
        uses seed ``seed + i``). Euler flow matching on HunyuanVideo's shifted schedule, one transformer call
        per step. ``cache``: the handle of ``enable_teacache(self.transformer, ...)``; it is
        ``reset(num_steps)`` here. ``cfg_scale`` (default: the config's ``sampling.cfg_scale``) > 1:
        classifier-free guidance against the empty prompt (the model saw it in 10% of training), batched
        into the same single call per step as upstream HunyuanVideo batches it (twice the rows; one
        TeaCache decision for both, as upstream). ``guidance`` feeds the guidance embedding.
        ``return_latents``: the raw ``(B, 3, T, H, W)`` output. ``sampler``: one of ``SAMPLERS``: ``"euler"`` (one
        call per step), ``"heun"`` (a corrector call at the next noise level, as ComfyUI's and diffusers' Heun) or
        ``"dpm2"`` (a second call at the log-midpoint noise level, as ComfyUI's ``dpm_2``); both take a plain Euler
        last step. The cache is told the schedule (``reset(num_steps, timesteps=...)``), so it places every call
        in its step. ``wrappers``: what a sampler-level cache wraps, as ComfyUI's model wrappers do: ``"model"``
        around every transformer call (``wrap(call, x, sigma, chunks)``: ``x`` batched as ``chunks`` names its
        parts, ``["cond", "uncond"]`` with CFG; returns the batched velocity, ComfyUI's ``DIFFUSION_MODEL``), and
        ``"guided"`` around the guided prediction (``wrap(call, x, sigma)``, returns the guided velocity, ComfyUI's
        ``PREDICT_NOISE``)."""
        s = self.config["sampling"]
        num_steps = s["num_steps"] if num_steps is None else int(num_steps)
        guidance = s["guidance"] if guidance is None else float(guidance)
        shift = s["shift"] if shift is None else float(shift)
        cfg_scale = s.get("cfg_scale", 1.0) if cfg_scale is None else float(cfg_scale)
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        use_cfg = cfg_scale != 1.0
        cond = self.encode(prompts + [""] * len(prompts) if use_cfg else prompts)
        device = cond["pooled_projections"].device
        x = self.initial_noise([seed + i for i in range(len(prompts))]).to(device)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        sigmas = flow_sigmas(num_steps, shift).tolist()
        if cache is not None:
            cache.reset(num_steps, timesteps=[1000.0 * s for s in sigmas])

        wrappers = wrappers or {}
        chunks = ["cond", "uncond"] if use_cfg else ["cond"]

        def model(x, sigma):
            return self.velocity(x, sigma, cond, guidance)

        if "model" in wrappers:
            model = functools.partial(wrappers["model"], model, chunks=chunks)

        def guided(x, sigma):
            if not use_cfg:
                return model(x, sigma)
            v_cond, v_uncond = model(torch.cat([x, x]), sigma).chunk(2)
            return v_uncond + cfg_scale * (v_cond - v_uncond)

        flow = functools.partial(wrappers["guided"], guided) if "guided" in wrappers else guided

        for i in range(num_steps):
            now, then = sigmas[i], sigmas[i + 1]
            v = flow(x, now)
            if sampler == "euler" or then == 0:
                x = x + (then - now) * v
            elif sampler == "heun":
                x = x + (then - now) * (v + flow(x + (then - now) * v, then)) / 2
            else:  # dpm2: the slope at the log-midpoint noise level
                mid = math.exp((math.log(now) + math.log(then)) / 2)
                x = x + (then - now) * flow(x + (mid - now) * v, mid)
        if return_latents:
            return x
        video = data.from_model_layout(((x + 1) / 2).clamp(0, 1))
        return video[0] if single else video


#: The second shipped model: HunyuanVideo 1.5's transformer trained on ``tinyhv.scenes``.
SCENES_ASSETS = ROOT / "assets" / "tiny_hunyuan_video15_scenes.safetensors"

#: diffusers ``HunyuanVideo15Transformer3DModel`` arguments of the second model: dual-stream blocks only, as 1.5.
#: Pixel space: a 2x4x4 (t, h, w) patch makes an 8-frame 32x32 clip 4 x 8 x 8 = 256 tokens. Input channels as 1.5
#: stacks them: the noisy clip (3), the conditioning frames (3: zeros for text-to-video) and their mask (1).
TRANSFORMER_15_CONFIG = dict(
    in_channels=7, out_channels=3, num_attention_heads=4, attention_head_dim=32, num_layers=6, num_refiner_layers=1,
    mlp_ratio=4.0, patch_size=4, patch_size_t=2, qk_norm="rms_norm", text_embed_dim=64, text_embed_2_dim=8,
    image_embed_dim=16, rope_theta=256.0, rope_axes_dim=(8, 12, 12), target_size=32, task_type="t2v",
)


class TinyHunyuanVideo15(TinyHunyuanVideo):
    """HunyuanVideo 1.5's transformer (``HunyuanVideo15Transformer3DModel``), the same word-embedding text encoder
    and sampler, on ``tinyhv.scenes`` (two crossing objects, a textured panning background, 8 frames of 32x32).

    Conditioning as HunyuanVideo15Pipeline gives it for text-to-video: the prompt's token states
    (``encoder_hidden_states``, 1.5's Qwen2.5-VL stream), an empty glyph stream (``encoder_hidden_states_2``, ByT5 in
    1.5: one masked-out token) and all-zero image embeddings (SigLIP in 1.5: zeros mean text-to-video), the clip
    concatenated with zero conditioning frames and a zero mask along the channels. No guidance embedding (1.5 has
    none). Weights ship in float16 (13 MB: the glyph projection's fixed 2048-wide layers are most of them)."""

    assets = SCENES_ASSETS
    export_dtype = torch.float16

    @staticmethod
    def transformer_class():
        from diffusers import HunyuanVideo15Transformer3DModel

        return HunyuanVideo15Transformer3DModel

    @staticmethod
    def default_config() -> dict:
        from . import scenes

        tc = TRANSFORMER_15_CONFIG
        return {
            "transformer": dict(tc),
            "text_encoder": {"max_length": 12, "dim": tc["text_embed_dim"], "pooled_dim": tc["text_embed_dim"]},
            "vocab": ["<pad>", NULL_TOKEN, *[w for w in scenes.VOCAB if w != "<pad>"]],
            "video": {"frames": scenes.FRAMES, "height": scenes.HEIGHT, "width": scenes.WIDTH, "channels": 3,
                      "value_range": [-1, 1], "space": "pixel"},
            "prediction": "sample",
            "sampling": {"num_steps": 50, "shift": 3.0, "guidance": 1.0, "cfg_scale": 3.0},
            "data": {"module": "tinyhv.scenes", "shapes": list(data.SHAPES), "colours": data.COLOURS,
                     "axes": scenes.AXES, "speeds_px": scenes.SPEEDS, "cameras": scenes.CAMERAS,
                     "pan_px": scenes.PAN_PX, "object_px": scenes.OBJECT_PX, "texture": scenes.TEXTURE,
                     "grammar": "a {colour1} {shape1} and a {colour2} {shape2} cross {axis} {speed} camera {camera}",
                     "held_out_pairs": [list(t) for t in scenes.HELD_OUT_PAIRS]},
        }

    def transformer_inputs(self, x, timestep, cond, guidance):
        b = x.shape[0]
        tc = self.config["transformer"]
        zeros = x.new_zeros(b, tc["in_channels"] - x.shape[1], *x.shape[2:])  # conditioning frames + mask
        return dict(hidden_states=torch.cat([x, zeros], dim=1), timestep=timestep,
                    encoder_hidden_states=cond["encoder_hidden_states"],
                    encoder_attention_mask=cond["encoder_attention_mask"],
                    encoder_hidden_states_2=x.new_zeros(b, 1, tc["text_embed_2_dim"]),
                    encoder_attention_mask_2=torch.zeros(b, 1, dtype=torch.bool, device=x.device),
                    image_embeds=x.new_zeros(b, 1, tc["image_embed_dim"]))
