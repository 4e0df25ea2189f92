"""ComfyUI entry point of the trellis2-comfy node pack.

ComfyUI imports this file as a package (named after the folder, e.g. ``trellis2-comfy``). It only wires the node
table and the web folder; no model or GPU work happens at import. The library itself (``trellis2_core``) is
importable without ComfyUI.
"""
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load_library() -> None:
    """Make this folder's ``trellis2_core`` importable by name.

    The folder is not put on ``sys.path``: that would also expose ``nodes``, ``kernels`` and ``install`` as
    top-level names to every other package in the ComfyUI process (``nodes`` is ComfyUI's own module, ``kernels``
    a PyPI package that transformers imports).
    """
    if "trellis2_core" in sys.modules:
        return
    folder = os.path.join(_HERE, "trellis2_core")
    spec = importlib.util.spec_from_file_location("trellis2_core", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["trellis2_core"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["trellis2_core"]
        raise


if __package__:  # loaded as a package, as ComfyUI does
    _load_library()
    from trellis2_core.dependencies import check_torch, triton_status  # noqa: E402

    check_torch()  # a too-old or missing torch fails the import with how to fix it (we never install torch)
    if triton_status():
        import logging

        logging.getLogger("trellis2_core").warning(triton_status())
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

    WEB_DIRECTORY = "web"
    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
# Otherwise this file was imported as a plain module with no package: pytest does that with the root folder of a
# checkout whose name is not a Python identifier (``trellis2-comfy``); there is no node table to build then.
