"""A tiny trained HunyuanVideo-architecture text-to-video model shipped with the project.

diffusers' ``HunyuanVideoTransformer3DModel`` (dual-stream + single-stream blocks, token refiner,
guidance embedding, 3D rotary positions) trained with rectified flow on procedural clips of
coloured shapes, conditioned by a small word-embedding text encoder. It lets the TeaCache demo
and the speed-vs-fidelity benchmark run anywhere, on CPU, in seconds::

    from tinyhv import TinyHunyuanVideo
    model = TinyHunyuanVideo.from_pretrained()
    video = model.generate("a big red circle moves left on a dark background", seed=0)  # (T, H, W, 3) in [0, 1]
"""

__all__ = ["DEFAULT_ASSETS", "TinyHunyuanVideo", "TinyTextEncoder"]


def __getattr__(name):  # lazy: ``python -m tinyhv.evaluate`` / ``tinyhv.train`` set OMP_WAIT_POLICY before torch loads
    if name in __all__:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
