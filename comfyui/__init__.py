"""TeaCache for HunyuanVideo: ComfyUI nodes (``TeaCacheHunyuanVideo``, ``TeaCacheCalibrateHunyuanVideo``) on the
engine ``teacache_sample_video.py`` of this repository. Symlink or copy this folder into ``ComfyUI/custom_nodes``,
or clone the whole repository there (its top-level ``__init__.py`` loads this one). See docs/comfyui.md."""

from .teacache_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
