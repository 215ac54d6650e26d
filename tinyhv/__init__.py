"""Two tiny trained HunyuanVideo-family text-to-video models shipped with the project.

diffusers' ``HunyuanVideoTransformer3DModel`` (dual-stream + single-stream blocks, token refiner,
guidance embedding, 3D rotary positions) trained with rectified flow on procedural clips of
coloured shapes, conditioned by a small word-embedding text encoder. It lets the TeaCache demo
and the speed-vs-fidelity benchmark run anywhere, on CPU, in seconds::

    from tinyhv import TinyHunyuanVideo
    model = TinyHunyuanVideo.from_pretrained()
    video = model.generate("a big red circle moves left on a dark background", seed=0)  # (T, H, W, 3) in [0, 1]

The second, ``TinyHunyuanVideo15``, is diffusers' ``HunyuanVideo15Transformer3DModel`` (HunyuanVideo 1.5:
dual-stream blocks only, its text and image conditioning inputs) trained on ``tinyhv.scenes``: two objects that
cross, anywhere in the frame, at two speeds, over a random texture that the camera may pan. Its fine detail is
whatever the sampler makes of the noise, as in real video, so a step cache has something to get wrong::

    from tinyhv import TinyHunyuanVideo15
    model = TinyHunyuanVideo15.from_pretrained()
    video = model.generate("a red circle and a blue square cross horizontally quickly camera left", seed=0)

Also here, for the tests and the benchmarks (untrained, nothing shipped): ``tinyhv.random_models``, tiny
random-weight diffusers transformers, their inputs and an Euler loop; ``tinyhv.upstream_cpu``, CPU stand-ins that run
Tencent's own HunyuanVideo code from ``$HUNYUANVIDEO_ROOT``.
"""

__all__ = ["DEFAULT_ASSETS", "SCENES_ASSETS", "TinyHunyuanVideo", "TinyHunyuanVideo15", "TinyTextEncoder"]


def __getattr__(name):  # lazy: ``python -m tinyhv.evaluate`` / ``tinyhv.train`` set OMP_WAIT_POLICY before torch loads
    if name in __all__:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
