"""Interop with the ecosystem: Hugging Face transformers folders in and out (``hf``), GGUF out (``gguf``).

``transformers`` and ``gguf`` are the ``interop`` extra; they are imported only where needed, with a
message naming the extra when they are missing.
"""

from __future__ import annotations


def require(module: str):
    """Import ``module`` (``transformers``, ``gguf``) or say which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed for this (install groundup's interop extra: "
                          f"pip install 'groundup[interop]'): {e}") from e
