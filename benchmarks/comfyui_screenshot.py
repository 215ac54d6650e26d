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
            page.goto(url)
            page.wait_for_function("window.app && window.app.graph", timeout=120000)
            page.wait_for_timeout(3000)
            page.evaluate("wf => window.app.loadApiJson(wf, 'teacache_hunyuanvideo_example.json')", workflow)
            page.wait_for_timeout(3000)
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
