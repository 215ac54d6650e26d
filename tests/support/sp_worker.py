"""Run upstream HunyuanVideo's sequence-parallel transformer on CPU (test worker).

Two ranks, gloo, upstream's own ``hyvideo.inference.parallelize_transformer``::

    torchrun --nproc_per_node=2 tests/support/sp_worker.py --ulysses-degree 2 --ring-degree 1 --out DIR
    torchrun --nproc_per_node=2 tests/support/sp_worker.py --ulysses-degree 1 --ring-degree 2 --out DIR

and the same computation in one process, without xfuser (the reference)::

    python tests/support/sp_worker.py --single --out DIR

``HUNYUANVIDEO_ROOT`` must point at a Tencent/HunyuanVideo checkout.

Each run builds the tiny upstream transformer with the same random weights on every
rank and runs a short Euler flow-matching loop with batched classifier-free guidance
(batch 2, like upstream's pipeline) on fixed latents and text inputs. Passes, in
order, all with the same model:

* ``off``: plain sampling;
* ``teacache`` (``--teacache THRESH``): ``enable_teacache(pipe.transformer, THRESH,
  num_steps=N)`` after ``parallelize_transformer``, as the real CLI does;
* ``call`` (with ``--teacache``): ``skip="call"`` at ``CALL_THRESH``, the decision around the forward that
  ``parallelize_transformer`` installed (each rank sees the whole latent there; its sums are reduced all the same);
* ``probe`` (``--probe-no-reduce``): TeaCache with ``process_group=None`` and a threshold
  so small that every step is computed, so the ranks stay in lock step while each one
  records the indicator of its own shard only.

Every rank writes ``DIR/sp_rank{R}.pt``, rank 0 also ``DIR/sp.pt``; ``--single``
writes ``DIR/single.pt``. Each file is a dict: ``meta`` and ``runs[pass]`` with
``latents`` (final), ``step_outputs`` (guided transformer output per step),
``report`` (TeaCache ``report()``, for the TeaCache passes) and ``seconds``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]

# Tiny problem: latents [1, C, T, H, W] (C = the tiny config's 16 channels); H // 2 is
# even, so upstream splits by height.
LATENT_SHAPE = (1, 16, 2, 8, 8)
# Padded text exercises parallel_attention's flash tail. Both CFG rows get the same
# valid length: upstream's parallel_attention takes the text length of batch row 0
# (cu_seqlens_q[1]) for every row, so rows with different lengths would not match the
# single-GPU result (an upstream limitation, not a stand-in artefact).
TEXT_LEN, TEXT_VALID = 8, 5
GUIDANCE_SCALE = 6.0
PROBE_THRESH = 1e-6  # below the published polynomial's minimum (~0.05): never skips
# ``call``: the whole-call skip (the transformation rate, the fitted rule) around upstream's parallel forward
CALL = dict(indicator="transformation-rate", skip="call", rule="fitted")
CALL_THRESH = 0.5


def _setup_paths() -> None:
    if not os.environ.get("HUNYUANVIDEO_ROOT"):
        sys.exit("sp_worker.py: set HUNYUANVIDEO_ROOT to a Tencent/HunyuanVideo checkout")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tinyhv.upstream_cpu.hyvideo_cpu import add_hunyuanvideo_to_path

    add_hunyuanvideo_to_path()


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--single", action="store_true", help="one process, no xfuser, no parallelize")
    p.add_argument("--ulysses-degree", type=int, default=1)
    p.add_argument("--ring-degree", type=int, default=1)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--teacache", type=float, default=None, metavar="THRESH")
    p.add_argument("--probe-no-reduce", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--valid-text-lens", type=int, nargs=2, default=[TEXT_VALID, TEXT_VALID],
                   metavar=("UNCOND", "COND"), help="valid text tokens per CFG row (see TEXT_LEN)")
    return p.parse_args(argv)


def _denoise(pipe, inputs, steps: int, cache=None) -> dict:
    """Euler flow matching, sigma 1 -> 0, batched CFG (uncond row 0, cond row 1).

    ``cache``: a TeaCache handle just enabled with ``num_steps=steps`` (no reset here, so
    that enabling with ``num_steps`` is what is exercised)."""
    import torch

    latents = inputs["latents"].clone()
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    outs = []
    start = time.perf_counter()
    for i in range(steps):
        x = torch.cat([latents] * 2)
        t = torch.full((2,), float(sigmas[i] * 1000))
        v = pipe.transformer(x, t, text_states=inputs["text_states"], text_mask=inputs["text_mask"],
                             text_states_2=inputs["text_states_2"], freqs_cos=inputs["freqs_cos"],
                             freqs_sin=inputs["freqs_sin"], guidance=None, return_dict=True)["x"]
        uncond, cond = v.chunk(2)
        v = uncond + GUIDANCE_SCALE * (cond - uncond)
        outs.append(v.clone())
        latents = latents + (sigmas[i + 1] - sigmas[i]) * v
    run = {"latents": latents, "step_outputs": outs, "seconds": time.perf_counter() - start}
    if cache is not None:
        run["report"] = cache.report()
    return run


def main(argv=None) -> int:
    args = _parse(argv)
    _setup_paths()
    import torch

    torch.set_grad_enabled(False)
    torch.set_num_threads(1 if not args.single else torch.get_num_threads())

    from tinyhv.upstream_cpu.hyvideo_cpu import install_cpu_standins, make_tiny_inputs, make_tiny_transformer

    install_cpu_standins()  # get_cu_seqlens / flash-varlen attention on CPU
    if args.single:
        rank, world = 0, 1
    else:
        from tinyhv.upstream_cpu.xfuser_cpu import init_gloo_sequence_parallel, install_xfuser_cpu_standins

        install_xfuser_cpu_standins()  # before hyvideo.inference imports xfuser
        rank, world = init_gloo_sequence_parallel(args.ulysses_degree, args.ring_degree)

    # Same weights on every rank; no guidance embedding: CFG is batched instead, as upstream does.
    transformer, _ = make_tiny_transformer(seed=args.seed, guidance_embed=False)
    _, _, t, h, w = LATENT_SHAPE
    inputs = make_tiny_inputs(transformer, batch=2, t=t, h=h, w=w, text_len=TEXT_LEN, seed=args.seed + 1,
                              valid_text_lens=list(args.valid_text_lens))
    inputs["latents"] = inputs["x"][:1].clone()
    pipe = SimpleNamespace(transformer=transformer)  # all parallelize_transformer touches
    if not args.single:
        from hyvideo.inference import parallelize_transformer

        parallelize_transformer(pipe)  # exactly as HunyuanVideoSampler.__init__ does

    runs = {"off": _denoise(pipe, inputs, args.steps)}
    if args.teacache is not None or args.probe_no_reduce:
        from teacache_sample_video import enable_teacache
    if args.teacache is not None:
        for name, thresh, options in (("teacache", args.teacache, {}), ("fitted", args.teacache, {"rule": "fitted"}),
                                      ("call", CALL_THRESH, CALL)):
            cache = enable_teacache(pipe.transformer, thresh, num_steps=args.steps, **options)
            runs[name] = _denoise(pipe, inputs, args.steps, cache)
            cache.disable()
    if args.probe_no_reduce:
        cache = enable_teacache(pipe.transformer, PROBE_THRESH, num_steps=args.steps, process_group=None)
        runs["probe"] = _denoise(pipe, inputs, args.steps, cache)
        cache.disable()

    meta = {"single": args.single, "rank": rank, "world_size": world, "ulysses_degree": args.ulysses_degree,
            "ring_degree": args.ring_degree, "steps": args.steps, "teacache": args.teacache,
            "latent_shape": LATENT_SHAPE, "valid_text_lens": list(args.valid_text_lens)}
    payload = {"meta": meta, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.single:
        torch.save(payload, args.out / "single.pt")
    else:
        torch.save(payload, args.out / f"sp_rank{rank}.pt")
        if rank == 0:
            torch.save(payload, args.out / "sp.pt")
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
