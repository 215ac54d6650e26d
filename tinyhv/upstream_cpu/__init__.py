"""Run Tencent's upstream HunyuanVideo code (HunyuanVideo, HunyuanVideo-I2V, HunyuanVideo-1.5) on a CPU with tiny
random weights, for the tests and ``benchmarks/bench_upstream.py``. Not used by the product.

Upstream is never copied into this repository: it is imported at run time from the checkout named by
``$HUNYUANVIDEO_ROOT`` (the directory that contains ``hyvideo/``).

- ``hyvideo_cpu``: path set-up, tiny configs, CPU stand-ins (SDPA for flash attention, "cuda" allocations and
  autocast on the CPU), weight randomisation, tiny args, transformer and inputs.
- ``hyvideo15_cpu``: HunyuanVideo-1.5's transformer, its inputs and denoising loop, its parallel state on the CPU.
- ``xfuser_cpu``: xfuser's and yunchang's sequence parallelism on CPU (gloo), and upstream's CLI under ``torchrun``.

What each stand-in replaces, and why: ``tests/support/README.md``.
"""

import socket


def free_port() -> int:
    """A TCP port free now on 127.0.0.1 (a rendezvous port for gloo, or for ``torchrun --master-port``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
