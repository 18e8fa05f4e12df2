"""Interop with the ecosystem: Hugging Face transformers folders in and out (``hf``), GGUF out (``gguf``).

``transformers`` and ``gguf`` are the ``interop`` extra; they are imported only where needed, through
:func:`groundup.extras.import_extra` (a missing one is a message naming the extra).
"""

from __future__ import annotations


class VerificationError(Exception):
    """An export or import read back does not compute what the model dir computes (``--verify``)."""
