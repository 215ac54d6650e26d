"""xDiT's sequence-parallel diffusers HunyuanVideo transformer on CPU, with TeaCache (test worker).

    torchrun --nproc_per_node=2 tests/support/xdit_diffusers_worker.py --out DIR --teacache THRESH
    python tests/support/xdit_diffusers_worker.py --single --out DIR --teacache THRESH

Two ranks (gloo, ulysses 2) run xfuser's own ``xFuserHunyuanVideoTransformer3DWrapper``, which shards the image
and text tokens over the sequence-parallel group and attends with xfuser's USP, loaded with the weights of the
tiny random ``HunyuanVideoTransformer3DModel`` of the tests; ``--single`` runs that model in one process. Both
sample the same Euler flow-matching loop with ``enable_teacache(model, THRESH)`` (xfuser's group is found by
itself), then once more with ``process_group=None`` and a threshold that never skips, recording each rank's
own-shard indicator. Each rank writes ``DIR/rank{R}.pt`` (``--single``: ``DIR/single.pt``).

Test-only stand-ins: ``tinyhv.upstream_cpu.xfuser_cpu`` (xfuser/yunchang on a CPU build), and xfuser's runtime
state, which its pipeline wrappers would set up, replaced by the few fields the transformer and USP read (flash
attention through torch's CPU kernel, which returns the log-sum-exp that USP's ring merge needs; no FP8
communication, no head balancing); USP's handle on yunchang's process groups, which it only takes when CUDA is
present at import.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

STEPS = 12
PROBE_THRESH = 1e-6  # below the published polynomial's minimum: never skips


def _parallel_model(plain):
    import torch

    from tinyhv.upstream_cpu.xfuser_cpu import init_gloo_sequence_parallel, install_xfuser_cpu_standins

    install_xfuser_cpu_standins(hyvideo=False)
    from xfuser.core.distributed.attention_backend import ATTENTION_FUNCTION_REGISTRY, AttentionBackendType
    import xfuser.model_executor.layers.usp as usp
    import yunchang.globals
    import xfuser.model_executor.models.transformers.transformer_hunyuan_video as xhv

    rank, _ = init_gloo_sequence_parallel(ulysses_degree=int(os.environ["WORLD_SIZE"]), ring_degree=1)

    def cpu_flash_attention(query, key, value, dropout_p, is_causal, attention_kwargs=None):
        # torch's ring merge needs the log-sum-exp, which xfuser's SDPA backend does not return
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p=dropout_p, is_causal=is_causal)[:2]
        return out, lse

    ATTENTION_FUNCTION_REGISTRY[AttentionBackendType.SDPA_FLASH] = cpu_flash_attention
    state = SimpleNamespace(increment_step_counter=lambda: None, split_text_embed_in_sp=True,
                            attention_backend=AttentionBackendType.SDPA_FLASH, fp8_comms=None,
                            runtime_config=SimpleNamespace(use_spargeattn_head_balance=False))
    xhv.get_runtime_state = usp.get_runtime_state = lambda: state
    usp.PROCESS_GROUP = yunchang.globals.PROCESS_GROUP  # usp.py leaves it None when CUDA is absent at import
    model = xhv.xFuserHunyuanVideoTransformer3DWrapper.from_config(plain.config)
    model.load_state_dict(plain.state_dict())
    return model.eval(), rank


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--single", action="store_true")
    p.add_argument("--teacache", type=float, required=True, metavar="THRESH")
    args = p.parse_args(argv)

    import torch

    import teacache_sample_video as tc
    from tinyhv.random_models import make_inputs, make_transformer, sample

    torch.set_grad_enabled(False)
    model, rank = (make_transformer(seed=0), None) if args.single else _parallel_model(make_transformer(seed=0))
    inputs = make_inputs(batch=1, frames=2, height=8, width=8, text_len=6, pad=2)  # 32 image, 4 text tokens
    runs = {}
    for name, thresh, group in (("teacache", args.teacache, "auto"), ("probe", PROBE_THRESH, None)):
        cache = tc.enable_teacache(model, thresh, num_steps=STEPS, process_group=group)
        outputs = []
        final = sample(model, inputs, STEPS, outputs=outputs)
        runs[name] = {"final": final, "outputs": outputs, "report": cache.report()}
        cache.disable()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(runs, args.out / ("single.pt" if args.single else f"rank{rank}.pt"))
    if not args.single:  # in step with the peer, then exit without gloo's teardown (it can abort on CPU builds)
        torch.distributed.barrier()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
