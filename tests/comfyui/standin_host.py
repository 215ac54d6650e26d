"""The ComfyUI stand-in (``standin/``) swapped into ``sys.modules`` for one test, and the node pack loaded the
way ComfyUI loads a custom node (by file path, under a path-derived module name)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "standin"
REPO = HERE.parents[1]
_OURS = ("comfy", "folder_paths")


def _owned(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _OURS) or name.startswith("custom_nodes_")


@contextlib.contextmanager
def standin():
    """Import ``comfy``/``folder_paths`` from the stand-in; whatever was imported before (a real ComfyUI in the
    same session) is put back afterwards."""
    saved = {n: m for n, m in sys.modules.items() if _owned(n)}
    for n in saved:
        del sys.modules[n]
    sys.path.insert(0, str(STANDIN))
    # the stand-in's ``comfy`` package lives in ``standin/comfy_standin`` (a folder named ``comfy`` would read as
    # ComfyUI's own code in this repository); it is imported under ComfyUI's name
    package = STANDIN / "comfy_standin"
    spec = importlib.util.spec_from_file_location("comfy", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    comfy = importlib.util.module_from_spec(spec)
    sys.modules["comfy"] = comfy
    spec.loader.exec_module(comfy)
    try:
        yield types_namespace()
    finally:
        sys.path.remove(str(STANDIN))
        for n in [n for n in sys.modules if _owned(n)]:
            del sys.modules[n]
        sys.modules.update(saved)


def types_namespace():
    import types
    names = ("comfy.patcher_extension", "comfy.model_patcher", "comfy.samplers", "comfy.ldm.hunyuan_video.model",
             "folder_paths")
    return types.SimpleNamespace(**{n.split(".")[-1]: importlib.import_module(n) for n in names})


def load_custom_node(path: Path, name: str = None):
    """What ComfyUI's ``load_custom_node`` does with a folder: ``<folder>/__init__.py`` by file location, as a
    package, under a module name made from the path."""
    path = Path(path)
    name = name or "custom_nodes_" + str(path).replace("/", "_").replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, path / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def make_model(c, **kwargs):
    """A stand-in HunyuanVideo in a ModelPatcher (flow model sampling, shift 7)."""
    dm = c.model.HunyuanVideo(**kwargs).eval()
    return c.model_patcher.ModelPatcher(c.model_patcher.HunyuanVideo(dm, c.samplers.ModelSamplingFlow(7.0)))


def conds(seed=0, tokens=5, dim=8, **extra):
    g = torch.Generator().manual_seed(seed)
    return ([{"cross_attn": torch.randn(1, tokens, dim, generator=g), **extra}],
            [{"cross_attn": torch.randn(1, tokens, dim, generator=g) * 0.5}])


def latent(seed=1, shape=(1, 4, 3, 4, 4)):
    return torch.zeros(shape), torch.randn(shape, generator=torch.Generator().manual_seed(seed))
