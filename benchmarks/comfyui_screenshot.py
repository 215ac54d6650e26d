#!/usr/bin/env python3
"""A screenshot of the real ComfyUI UI with the pack's example workflow loaded (docs/comfyui_ui.png).

Starts ComfyUI's server from a checkout (``--comfyui``; its frontend from the pip package
``comfyui-frontend-package`` in ``--server-python``'s environment) on 127.0.0.1 with a temporary base directory
whose ``custom_nodes`` links this repository's ``comfyui/``; opens it in a headless Chromium (Debian's
``chromium-headless-shell``) through Playwright; loads ``comfyui/example_workflow_api.json`` with the frontend's
own ``app.loadApiJson``; saves the screenshot; stops the server.

    python benchmarks/comfyui_screenshot.py --comfyui /path/to/ComfyUI --server-python .venv/bin/python
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCH = """
import runpy, sys
sys.path.insert(0, {tests!r})
import comfy_host
comfy_host._torchvision_stub()
sys.argv = ["main.py", "--cpu", "--listen", "127.0.0.1", "--port", {port!r}, "--base-directory", {base!r},
            "--disable-auto-launch"]
sys.path.insert(0, {root!r})
runpy.run_path({main!r}, run_name="__main__")
"""

# The workflow built in the page with the frontend's own LiteGraph (this frontend's app.loadApiJson looks nodes up
# by the string id after giving them numeric ones, and fails), then laid out and fitted to the window.
LOAD = """api => {
  const app = window.app, LG = window.LiteGraph, nodes = {};
  app.graph.clear();
  for (const [id, data] of Object.entries(api)) {
    const node = LG.createNode(data.class_type);
    if (!node) throw new Error('unknown node type ' + data.class_type);
    node.id = +id;
    node.title = (data._meta && data._meta.title) || node.title;
    app.graph.add(node);
    nodes[id] = node;
  }
  for (const [id, data] of Object.entries(api)) {
    const node = nodes[id];
    for (const [name, value] of Object.entries(data.inputs)) {
      if (Array.isArray(value)) {
        nodes[value[0]].connect(value[1], node, node.inputs.findIndex(i => i.name === name));
      } else {
        const widget = (node.widgets || []).find(w => w.name === name);
        if (widget) widget.value = value;
      }
    }
  }
  app.graph.arrange(60);
  app.graph.setDirtyCanvas(true, true);
  return Object.keys(nodes).length;
}"""
FIT = """() => {
  const c = window.app.canvas, nodes = window.app.graph._nodes;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const w = c.canvas.width / (window.devicePixelRatio || 1), h = c.canvas.height / (window.devicePixelRatio || 1);
  const scale = Math.min(w / (x1 - x0 + 80), (h - 80) / (y1 - y0 + 80), 1.2);
  c.ds.scale = scale;
  c.ds.offset = [-x0 + 40 / scale, -y0 + 60 / scale];
  c.setDirty(true, true);
  return scale;
}"""

# The frontend's model-folder map expects the built-in loaders; where one failed to import here (the upscale
# models' needs spandrel, which needs torchvision), a stand-in with its name and inputs keeps the frontend whole.
STANDINS = """
import nodes
NODE_CLASS_MAPPINGS = {}
if "UpscaleModelLoader" not in nodes.NODE_CLASS_MAPPINGS:
    class UpscaleModelLoader:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model_name": ([],)}}
        RETURN_TYPES = ("UPSCALE_MODEL",)
        FUNCTION = "load"
        CATEGORY = "loaders"
    NODE_CLASS_MAPPINGS["UpscaleModelLoader"] = UpscaleModelLoader
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", required=True)
    p.add_argument("--server-python", default=sys.executable)
    p.add_argument("--browser", default="/usr/bin/chromium-headless-shell")
    p.add_argument("--port", default="8189")
    p.add_argument("--out", default=str(REPO / "docs" / "comfyui_ui.png"))
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    root = Path(args.comfyui).resolve()
    base = Path(tempfile.mkdtemp(prefix="comfy_ui_"))
    (base / "custom_nodes").mkdir()
    os.symlink(REPO / "comfyui", base / "custom_nodes" / "teacache_hunyuanvideo")
    (base / "custom_nodes" / "screenshot_standins").mkdir()
    (base / "custom_nodes" / "screenshot_standins" / "__init__.py").write_text(STANDINS)
    # the model folders, with empty stand-ins named as the workflow's files (listed by the loaders, never loaded:
    # nothing is queued)
    for folder, name in (("diffusion_models", "hunyuan_video_t2v_720p_bf16.safetensors"),
                         ("text_encoders", "clip_l.safetensors"),
                         ("text_encoders", "llava_llama3_fp8_scaled.safetensors"),
                         ("vae", "hunyuan_video_vae_bf16.safetensors"), ("vae_approx", None),
                         ("teacache_profiles", None)):
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        if name:
            (base / "models" / folder / name).touch()
    code = LAUNCH.format(tests=str(REPO / "tests" / "comfyui"), port=args.port, base=str(base), root=str(root),
                         main=str(root / "main.py"))
    log = open(base / "server.log", "w")
    server = subprocess.Popen([args.server_python, "-c", code], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    url = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(120):
            try:
                info = json.load(urllib.request.urlopen(f"{url}/object_info/TeaCacheHunyuanVideo", timeout=2))
                break
            except Exception:
                if server.poll() is not None:
                    raise SystemExit(f"the server stopped: {(base / 'server.log').read_text()[-3000:]}")
                time.sleep(1)
        else:
            raise SystemExit("the server did not answer in 120 s")
        print("node registered:", list(info))
        workflow = json.loads((REPO / "comfyui" / "example_workflow_api.json").read_text())
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.browser, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            console = []
            page.on("console", lambda m: console.append(m.text))
            page.goto(url)
            page.wait_for_function("window.app && window.app.graph", timeout=120000)
            types = sorted({n["class_type"] for n in workflow.values()})
            page.wait_for_function("types => types.every(t => t in window.LiteGraph.registered_node_types)",
                                   arg=types, timeout=120000)  # the node definitions register asynchronously
            page.wait_for_timeout(1000)
            try:
                page.evaluate(LOAD, workflow)
            except Exception:
                print("browser console:", *console[-8:], sep="\n  ")
                raise
            page.wait_for_timeout(1500)
            print("fit scale", page.evaluate(FIT))
            page.wait_for_timeout(1500)
            page.keyboard.press("Escape")
            page.wait_for_timeout(500)
            page.screenshot(path=args.out)
            browser.close()
        print("saved", args.out)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
