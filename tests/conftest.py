"""Shared by every test module, whatever its folder under tests/ (engine/, diffusers/, upstream/, tinyhv/,
packaging/): the repository root and tests/ on ``sys.path`` (so the helpers here, ``fake_hunyuan``,
``reference_rule``, ``tiny_diffusers`` and ``support``, import by plain name), the paths to build on instead of
counting ``Path(__file__).parents``, and the skip for modules that need one of Tencent's checkouts."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the repository root
TESTS = ROOT / "tests"
for p in (ROOT, TESTS):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def _checkout_reason(var: str, what: str) -> str:
    return f"{var} is not set (needs a {what} checkout)"


def checkout_root(var: str, what: str) -> Path:
    """The checkout of repository ``what`` named by the environment variable ``var``; when ``var`` is unset or
    empty, skips the calling module (call it at module level, before importing anything from the checkout) with a
    reason that names both, which ``pytest -rs`` prints.

    ``HYV = checkout_root("HUNYUANVIDEO_ROOT", "Tencent/HunyuanVideo")``"""
    __tracebackhide__ = True  # -rs reports the skip at the calling module's line, not here
    value = os.environ.get(var, "").strip()
    if not value:
        pytest.skip(_checkout_reason(var, what), allow_module_level=True)
    return Path(value)


def needs_checkout(var: str, what: str) -> pytest.MarkDecorator:
    """``checkout_root``'s check as a mark, for a module whose tests are still collected (and skipped one by one)
    without the checkout: ``pytestmark = needs_checkout("HUNYUANVIDEO_ROOT", "Tencent/HunyuanVideo")``."""
    return pytest.mark.skipif(not os.environ.get(var, "").strip(), reason=_checkout_reason(var, what))
