"""Loaded only when this repository is cloned into ``ComfyUI/custom_nodes``: the ComfyUI nodes in ``comfyui/``
(ComfyUI imports this file as a package; anything else that imports it, such as pytest, gets nothing)."""

if __package__:
    from .comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F401
