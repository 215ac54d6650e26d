"""Launching test workers (``torchrun`` or one process) so that a hang cannot block the suite. Test-only."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_worker(cmd: list, what: str, timeout_s: float, env: dict | None = None) -> str:
    """Run ``cmd`` from the repository root with one OpenMP thread (and ``env`` added to the environment); fail the
    test with its output's tail if it exits non-zero or outlives ``timeout_s``, else return its output. It runs in
    its own session, so that a hang (e.g. mismatched collectives) is killed together with the workers it started."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{what} timed out after {timeout_s} s:\n{out[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{out[-4000:]}")
    return out
