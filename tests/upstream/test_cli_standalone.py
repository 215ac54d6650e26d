"""The drop-in's behaviour outside a HunyuanVideo checkout (no checkout needed)."""

import os
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "teacache_sample_video.py"


def test_outside_a_checkout_says_where_to_copy_the_file_and_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--rel-l1-thresh", "0.1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "sample_video.py" in lines[0] and "HunyuanVideo" in lines[0]
    assert proc.stdout == ""


def test_help_outside_a_checkout_lists_the_teacache_flags(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--rel-l1-thresh", "--teacache-rule", "--teacache-calibrate", "--teacache-speedup"):
        assert flag in proc.stdout
    assert "sample_video.py" in proc.stdout and "generate.py" in proc.stdout  # where the other flags live
    assert "--diffusers-model" in proc.stdout and proc.stderr == ""


def test_in_a_15_checkout_without_its_generate_py_it_says_so_in_one_line(tmp_path):
    """1.5's layout (hyvideo/commons/parallel_states.py, no hyvideo/config.py) is recognised; a generate.py that is
    not upstream's gets one line, no traceback."""
    (tmp_path / "hyvideo" / "commons").mkdir(parents=True)
    for name in ("hyvideo/__init__.py", "hyvideo/commons/__init__.py", "hyvideo/commons/parallel_states.py",
                 "generate.py"):
        (tmp_path / name).write_text("")
    script = tmp_path / SCRIPT.name
    script.write_text(SCRIPT.read_text())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script), "--prompt", "a cat"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "HunyuanVideo-1.5 generate.py" in lines[0] and "generate_video" in lines[0], proc.stderr
