"""A transformers model and tokenizer equal to a groundup model, to run lm-eval's own HF backend as the peer.

The model is ``groundup.interop.hf.to_transformers``'s copy, the same weights the Hugging Face export writes.
"""

from __future__ import annotations


def to_transformers(model):
    """The transformers copy of ``model`` that the Hugging Face export writes (GPT-2 or Llama family)."""
    from groundup.interop.hf import to_transformers as interop_to_transformers

    return interop_to_transformers(model)


def hf_tokenizer(tokenizer_file):
    """The model dir's tokenizer.json as a transformers fast tokenizer (EOS as lm-eval's prefix token)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
    from groundup.tokenizer import Tokenizer

    eos = Tokenizer.from_file(tokenizer_file).eos_id
    if eos is not None:
        tok.eos_token = tok.convert_ids_to_tokens(eos)
    return tok
