"""A headless run of an API-format workflow through ComfyUI's own ``execution.PromptExecutor`` (tests only).

The workflow's loaders that need real weights are replaced: the text encoders by ``TeaCacheTestConditioning`` (a
node defined here: random conditioning of the text encoder's shape), the VAE decode and video save by ComfyUI's
``SaveLatent``; the UNET loader loads the tiny checkpoint. Everything else (ComfyUI's loader, guidance, shift,
empty latent and KSampler nodes, and this pack's node) runs as the workflow says."""

from __future__ import annotations

import asyncio
import copy
import importlib
import uuid
import zlib
from pathlib import Path

import comfy_host as H

_READY = {}


class TeaCacheTestConditioning:
    """Stands in for CLIPTextEncode: conditioning with the text encoder's shape, seeded by the text."""

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": ""})}}

    def encode(self, text):
        positive, _ = H.conditioning(_READY["comfy"], seed=zlib.crc32(text.encode()))
        return (positive,)


class _Server:
    """What the executor asks of the server: no client, messages kept."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


def _prepare(C, tmp: Path, pack):
    """ComfyUI's nodes (built-in and comfy_extras), this pack, the test node, and the tiny UNET in
    ``diffusion_models``. Comfy-Org's layout: top-level ``nodes``/``execution``/``folder_paths``, the pack loaded
    by ``nodes.load_custom_node``; hiddenswitch's packaged layout: ``comfy.nodes_context.get_nodes()`` and
    ``comfy.cmd.execution``, the pack (already loaded by path, as ComfyUI loads a custom node folder) added to the
    node registry."""
    if _READY:
        return _READY
    try:
        nodes, execution, folder_paths = (importlib.import_module(n) for n in ("nodes", "execution", "folder_paths"))
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        assert asyncio.run(nodes.load_custom_node(str(H.REPO / "comfyui")))  # ComfyUI's own custom node loader
        registry = nodes
    except ImportError:
        execution = importlib.import_module("comfy.cmd.execution")
        folder_paths = importlib.import_module("comfy.cmd.folder_paths")
        registry = importlib.import_module("comfy.nodes_context").get_nodes()
        registry.NODE_CLASS_MAPPINGS.update(pack.NODE_CLASS_MAPPINGS)
        registry.NODE_DISPLAY_NAME_MAPPINGS.update(pack.NODE_DISPLAY_NAME_MAPPINGS)
    registry.NODE_CLASS_MAPPINGS["TeaCacheTestConditioning"] = TeaCacheTestConditioning
    unets = tmp / "diffusion_models"
    H.write_checkpoint(unets / "tiny_t2v.safetensors", "t2v", C)
    folder_paths.add_model_folder_path("diffusion_models", str(unets))
    _READY.update(comfy=C, execution=execution, folder_paths=folder_paths)
    return _READY


def adapt(workflow: dict, thresh=None, bypass=False, steps=8) -> tuple:
    """The shipped workflow with the weight-needing nodes replaced (see the module's doc); returns it and the id
    of its output node."""
    w = copy.deepcopy(workflow)
    by_type = {}
    for node_id, node in w.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    for node_id in by_type.get("CLIPTextEncode", []):
        w[node_id] = {"class_type": "TeaCacheTestConditioning", "inputs": {"text": w[node_id]["inputs"]["text"]}}
    for kind in ("DualCLIPLoader", "VAELoader", "VAEDecodeTiled", "VAEDecode", "SaveAnimatedWEBP"):
        for node_id in by_type.get(kind, []):
            del w[node_id]
    unet, = by_type["UNETLoader"]
    w[unet]["inputs"]["unet_name"] = "tiny_t2v.safetensors"
    latent, = by_type["EmptyHunyuanLatentVideo"]
    w[latent]["inputs"].update(width=64, height=64, length=9)
    sampler, = by_type["KSampler"]
    w[sampler]["inputs"]["steps"] = steps
    cache, = by_type["TeaCacheHunyuanVideo"]
    if thresh is not None:
        w[cache]["inputs"]["rel_l1_thresh"] = thresh
    if bypass:  # the same graph without the TeaCache node
        source = w[cache]["inputs"]["model"]
        for node in w.values():
            for name, value in node["inputs"].items():
                if value == [cache, 0]:
                    node["inputs"][name] = source
        del w[cache]
    w["999"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0],
                                                       "filename_prefix": f"teacache_test/{uuid.uuid4().hex}"}}
    return w, "999"


def run(C, workflow: dict, tmp: Path, pack, thresh=None, bypass=False) -> dict:
    import json

    from safetensors.torch import load_file

    ready = _prepare(C, Path(tmp), pack)
    prompt, output = adapt(workflow, thresh, bypass)
    out_dir = Path(ready["folder_paths"].get_output_directory())
    before = set((out_dir / "teacache").glob("*.json")) if (out_dir / "teacache").is_dir() else set()
    try:  # hiddenswitch's executor asks more of its server: its own stub
        server = importlib.import_module("comfy.distributed.server_stub").ServerStub()
    except ImportError:
        server = _Server()
    executor = ready["execution"].PromptExecutor(server)
    executor.execute(prompt, uuid.uuid4().hex, {}, [output])
    prefix = prompt[output]["inputs"]["filename_prefix"]
    files = sorted(out_dir.glob(prefix + "*.latent"))
    reports = sorted(set((out_dir / "teacache").glob("*.json")) - before) if (out_dir / "teacache").is_dir() else []
    return {"success": executor.success and len(files) == 1, "messages": executor.status_messages[-3:],
            "latent": load_file(str(files[0]))["latent_tensor"] if files else None,
            "reports": [json.loads(p.read_text()) for p in reports]}
