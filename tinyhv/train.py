"""Rectified-flow training of the tiny HunyuanVideo models on procedural clips (CPU, 1.5-2 hours each).

``--model shapes`` (the default) trains the first model (HunyuanVideo's transformer on ``tinyhv.data``),
``--model scenes`` the second (HunyuanVideo 1.5's transformer on ``tinyhv.scenes``; its commands are in
``assets/tiny_hunyuan_video15_scenes.json`` and docs/tinyhv.md). The first shipped model (``assets/``) came from these
two commands (the second continues the first's state)::

    OMP_WAIT_POLICY=PASSIVE python -m tinyhv.train --steps 4000 --batch-size 16 --lr 1.5e-3 --prediction sample \
        --out runs/tinyhv --log-every 50 --ckpt-every 100
    OMP_WAIT_POLICY=PASSIVE python -m tinyhv.train --resume --steps 7000 --batch-size 16 --lr 1.5e-3 \
        --cooldown 0.45 --prediction sample --max-minutes 92 --out runs/tinyhv --log-every 50 --ckpt-every 100

(``OMP_WAIT_POLICY=PASSIVE`` keeps OpenMP threads from spinning: on a shared machine spinning made
steps up to 6x slower. It is now the default of ``python -m tinyhv.train``; a value of your own wins.)

Flow matching: ``x_t = (1 - t) x0 + t noise``; the loss is the MSE of the flow ``noise - x0`` (the
transformer, timestep ``1000 t``, outputs the flow or, with ``--prediction sample``, the clean clip from
which the flow is derived); ``t`` is logit-normal; the empty prompt replaces the caption 10% of the time
(classifier-free guidance). AdamW, warmup then constant LR with a linear cool-down over the last
``--cooldown`` of progress, EMA of the weights (the exported model). Every ``--ckpt-every`` steps the full
state goes to ``OUT/ckpt.pt`` (``--resume`` continues from it, bit-exactly up to thread timing; it refuses a
checkpoint of the other ``--model``; ``--init WEIGHTS`` instead starts a new run from an export, model and EMA,
with a fresh optimizer, keeping the export's training record) and the EMA weights are exported to
``OUT/tiny_hunyuan_video.safetensors``
(``OUT/tiny_hunyuan_video15_scenes.safetensors``, float16, for ``--model scenes``; + ``.json``), so an
interrupted run is never lost. Copy that pair to ``assets/`` to ship it.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # before torch loads; see tinyhv/evaluate.py
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import platform
import shlex
import time
from pathlib import Path

import torch
from loguru import logger

from . import data, scenes
from .model import TinyHunyuanVideo, TinyHunyuanVideo15

#: --model: (model class, data module with split() and sample_batch())
MODELS = {"shapes": (TinyHunyuanVideo, data), "scenes": (TinyHunyuanVideo15, scenes)}


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs (shared), torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=list(MODELS), default="shapes",
                   help="shapes: the first model (HunyuanVideo's transformer, tinyhv.data); scenes: the second "
                        "(HunyuanVideo 1.5's transformer, tinyhv.scenes)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path("runs/tinyhv"))
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--cooldown", type=float, default=0.2, help="fraction of steps of linear LR decay at the end")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--prompt-dropout", type=float, default=0.1, help="probability of training on the empty prompt")
    p.add_argument("--logit-mean", type=float, default=0.0)
    p.add_argument("--logit-std", type=float, default=1.0)
    p.add_argument("--jitter", default=parser_default_jitter(),
                   help="'ACROSS,ALONG': how far (px) the shape's path may sit off the frame centre, or 'full' "
                        "(anywhere the shape stays in frame)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-time budget: training progress is max(step/steps, time/budget), so on a slow "
                        "(shared) machine the LR cool-down still happens and the run ends within the budget")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    p.add_argument("--init", type=Path, default=None, metavar="WEIGHTS",
                   help="warm start: the model and its EMA from an exported .safetensors (+ .json; its config and "
                        "training record are kept, the optimizer starts fresh), e.g. to continue a run whose "
                        "ckpt.pt is lost")
    p.add_argument("--heads", type=int, default=None, help="override num_attention_heads")
    p.add_argument("--single-layers", type=int, default=None, help="override num_single_layers")
    p.add_argument("--patch-size-t", type=int, default=None, help="override patch_size_t")
    p.add_argument("--prediction", choices=["velocity", "sample"], default=None,
                   help="transformer output: the flow (as HunyuanVideo) or the clean clip x0 (JiT); the loss is "
                        "the flow MSE either way (default: velocity for a new run; what the run already predicts "
                        "with --resume or --init, which refuse another value)")
    return p.parse_args(argv)


MAX_GAP_S = 120.0  # see wall() in main


def parser_default_jitter() -> str:
    return ",".join(f"{j:g}" for j in data.JITTER)


def parse_jitter(text: str):
    if text == "full":
        return None
    across, along = (float(v) for v in text.split(","))
    return across, along


def _same_prediction(args, recorded: str, source: Path) -> str:
    """The prediction target of a run that continues ``source`` (a checkpoint or an export): the recorded one;
    an explicit ``--prediction`` that differs is refused."""
    if args.prediction not in (None, recorded):
        raise SystemExit(f"tinyhv.train: error: --prediction {args.prediction}: {source} predicts {recorded} "
                         f"(leave --prediction out to keep it)")
    return recorded


def lr_at(step: int, progress: float, args) -> float:
    """Linear warmup over ``--warmup`` steps, constant, then linear decay to 0 over the last ``--cooldown``
    of training progress (a fraction in [0, 1])."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return args.lr * min(1.0, (1.0 - progress) / args.cooldown)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, m in zip(ema.parameters(), model.parameters()):
        e.lerp_(m, 1 - decay)


def flow_loss(model: TinyHunyuanVideo, x0: torch.Tensor, prompts, t: torch.Tensor, noise: torch.Tensor,
              guidance: float) -> torch.Tensor:
    tt = t.view(-1, 1, 1, 1, 1)
    xt = (1 - tt) * x0 + tt * noise
    pred = model.velocity(xt, t, model.encode(prompts), guidance)
    return (pred - (noise - x0)).pow(2).mean()


@torch.no_grad()
def validation(model, batch, guidance) -> float:
    """Flow loss of a fixed batch at fixed noise levels (held-out combinations): a generalisation probe."""
    x0, prompts, noise = batch
    losses = [flow_loss(model, x0, prompts, torch.full((x0.shape[0],), t), noise, guidance).item()
              for t in (0.2, 0.4, 0.6, 0.8)]
    return sum(losses) / len(losses)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    logger.add(str(out / "train.log"), level="INFO")
    env = "".join(f"{k}={os.environ[k]} " for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS") if k in os.environ)
    cli = sys.argv[1:] if argv is None else argv
    command = env + "python -m tinyhv.train " + " ".join(shlex.quote(a) for a in cli)

    torch.manual_seed(args.seed)
    model_class, dataset = MODELS[args.model]
    if args.model == "scenes" and (args.single_layers is not None or args.jitter != parser_default_jitter()):
        raise SystemExit("tinyhv.train: error: --single-layers and --jitter are the shapes model's "
                         "(HunyuanVideo 1.5 has no single-stream blocks; scene positions are always anywhere)")
    config = model_class.default_config()
    if args.heads:
        config["transformer"]["num_attention_heads"] = args.heads
    config["prediction"] = args.prediction or "velocity"
    if args.patch_size_t is not None:
        config["transformer"]["patch_size_t"] = args.patch_size_t
    if args.single_layers is not None:
        config["transformer"]["num_single_layers"] = args.single_layers
    init_record, warm = None, None
    if args.init is not None:
        if args.resume or args.heads or args.patch_size_t is not None or args.single_layers is not None:
            raise SystemExit("tinyhv.train: error: --init takes the model (and its config) from WEIGHTS: it goes "
                             "with neither --resume nor --heads/--patch-size-t/--single-layers")
        if not args.init.is_file() or not args.init.with_suffix(".json").is_file():
            raise SystemExit(f"tinyhv.train: error: --init {args.init}: needs the .safetensors and its .json")
        warm = model_class.from_pretrained(args.init)
        config = {**config, "transformer": warm.config["transformer"],
                  "prediction": _same_prediction(args, warm.config.get("prediction", "velocity"), args.init)}
        init_record = {"weights": str(args.init), "training": warm.config.get("training")}
    model = model_class(config).train()
    if warm is not None:
        model.load_state_dict(warm.state_dict())
        del warm
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    decay_params = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
    other_params = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay_params, "weight_decay": args.weight_decay},
                             {"params": other_params, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.99))
    train_combos, held_combos = dataset.split()
    jitter = parse_jitter(args.jitter)
    guidance = config["sampling"]["guidance"]
    g_data = torch.Generator().manual_seed(args.seed + 1)
    g_noise = torch.Generator().manual_seed(args.seed + 2)
    g_val = torch.Generator().manual_seed(12345)
    val_x, val_prompts = dataset.sample_batch(held_combos, 32, g_val)
    val_batch = (data.to_model_layout(val_x), val_prompts, torch.randn(32, 3, *val_x.shape[1:4], generator=g_val))

    step, wall_before, paused_before, history, commands = 0, 0.0, 0.0, [], []
    ckpt_path = out / "ckpt.pt"
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        trained = state.get("args", {}).get("model", "shapes")
        if trained != args.model:
            raise SystemExit(f"tinyhv.train: error: {ckpt_path} is a --model {trained} run, not --model {args.model}")
        # the target is not in the state dict: a run resumed with another one would silently train for it
        recorded = state.get("prediction") or state["args"].get("prediction", "velocity")  # older: args only
        config["prediction"] = _same_prediction(args, recorded, ckpt_path)
        model.config["prediction"] = ema.config["prediction"] = config["prediction"]
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        g_data.set_state(state["g_data"])
        g_noise.set_state(state["g_noise"])
        step, wall_before, history = state["step"], state["wall_s"], state["history"]
        commands = state.get("commands", [])
        paused_before = state.get("paused_s", 0.0)
        init_record = state.get("init")
        logger.info(f"resumed from {ckpt_path} at step {step}")

    n_params = sum(p.numel() for p in model.parameters())
    logger.info(f"{model_class.__name__}: {n_params / 1e6:.2f}M parameters; {len(train_combos)} training combinations, "
                f"{len(held_combos)} held out; {machine()}")
    commands.append({"command": command, "from_step": step})
    logger.info(f"command: {command}")
    clock = {"counted": wall_before, "last": time.perf_counter(), "paused": paused_before}

    def wall() -> float:
        """Training wall time: real time, except that a gap of more than MAX_GAP_S between two looks at the
        clock (the process was suspended, e.g. SIGSTOP on a shared machine) counts as MAX_GAP_S."""
        now = time.perf_counter()
        gap = now - clock["last"]
        clock["counted"] += min(gap, MAX_GAP_S)
        clock["paused"] += max(0.0, gap - MAX_GAP_S)
        clock["last"] = now
        return clock["counted"]

    def save(final: bool = False) -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "g_data": g_data.get_state(), "g_noise": g_noise.get_state(), "step": step, "wall_s": wall(),
                    "paused_s": clock["paused"], "history": history, "prediction": config["prediction"],
                    "commands": commands, "init": init_record,
                    "args": {k: str(v) for k, v in vars(args).items()}}, tmp)
        tmp.replace(ckpt_path)
        training = {"training": {
            "command": commands[0]["command"], "commands": commands, "steps_done": step,
            "steps_planned": args.steps, "batch_size": args.batch_size, "seed": args.seed, "finished": final,
            "time_budget_min": args.max_minutes, "wall_clock_s": round(wall(), 1),
            "suspended_s_not_counted": round(clock["paused"], 1), "machine": machine(),
            "objective": (
                "rectified flow: x_t = (1-t) x0 + t noise, loss = MSE of the flow noise - x0, t ~ logit-normal("
                f"{args.logit_mean}, {args.logit_std}), prompt dropout {args.prompt_dropout}; the transformer "
                f"predicts {config.get('prediction', 'velocity')}"),
            "optimizer": f"AdamW lr {args.lr} (warmup {args.warmup} steps, linear cool-down to 0 over the last "
                         f"{args.cooldown:.0%} of progress = max(step/steps, time/budget)), betas (0.9, 0.99), "
                         f"weight decay {args.weight_decay}, grad-norm clip 1.0",
            "data_jitter_px": args.jitter, "ema": args.ema, "parameters": n_params,
            "final_train_loss": history[-1]["loss"] if history else None,
            # the last validation (every --ckpt-every steps, and at the planned last step)
            **next(({"final_heldout_val_loss": h["val"], "final_heldout_val_loss_at_step": h["step"]}
                    for h in reversed(history) if "val" in h), {"final_heldout_val_loss": None}),
            **({"init": init_record} if init_record is not None else {}),
        }}
        ema.save_pretrained(out / model_class.assets.name, extra=training)

    def progress() -> float:
        p = step / args.steps
        if args.max_minutes is not None:
            p = max(p, wall() / (args.max_minutes * 60))
        return p

    running, n_running, t_log = 0.0, 0, time.perf_counter()
    while step < args.steps:
        prog = progress()
        if prog >= 1.0:
            logger.warning(f"time budget of {args.max_minutes} min used up at step {step}")
            break
        lr = lr_at(step, prog, args)
        for group in opt.param_groups:
            group["lr"] = lr
        x, prompts = dataset.sample_batch(train_combos, args.batch_size, g_data, jitter=jitter)
        drop = torch.rand(args.batch_size, generator=g_data) < args.prompt_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        x0 = data.to_model_layout(x)
        noise = torch.randn(x0.shape, generator=g_noise)
        t = torch.sigmoid(args.logit_mean + args.logit_std * torch.randn(args.batch_size, generator=g_noise))
        loss = flow_loss(model, x0, prompts, t, noise, guidance)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        # a warm start's EMA is already an average: it keeps the full decay from the first step
        ema_update(ema, model, args.ema if init_record is not None else min(args.ema, (1 + step) / (10 + step)))
        running += loss.item()
        n_running += 1
        if step % args.log_every == 0 or step == args.steps:
            now = time.perf_counter()
            rec = {"step": step, "loss": running / n_running, "lr": lr, "progress": round(prog, 4),
                   "wall_s": round(wall(), 1)}
            if step % args.ckpt_every == 0 or step == args.steps:
                rec["val"] = validation(ema, val_batch, guidance)
            history.append(rec)
            per_step = (now - t_log) / n_running
            logger.info(f"step {step}/{args.steps} loss {rec['loss']:.4f} lr {rec['lr']:.2e} "
                        f"{per_step:.2f} s/step, {wall() / 60:.1f} min"
                        + (f", held-out val (EMA) {rec['val']:.4f}" if "val" in rec else ""))
            running, n_running, t_log = 0.0, 0, now
        if step % args.ckpt_every == 0:
            save()
    save(final=True)
    logger.info(f"done: {step} steps in {wall() / 60:.1f} min; EMA weights in {out / model_class.assets.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
