"""``POST /tokenize``, ``POST /detokenize`` and ``GET /tokenizer_info``, as vLLM answers them.

lm-evaluation-harness's ``local-completions`` model finds these (its "remote" tokenizer backend) and
then needs no tokenizer files of its own: it counts context tokens with ``/tokenize`` and looks the
EOS token up by its text. Elsewhere groundup encodes special-token strings inside text as ordinary
text (but for a rendered chat template); a prompt that is exactly one special token's string is that
token here, so the lookup works.
"""

from __future__ import annotations

import fastapi

from groundup.serve.errors import APIError
from groundup.serve.protocol import DetokenizeRequest, TokenizeRequest
from groundup.serve.state import State
from groundup.serve.validation import check_model, render_messages

router = fastapi.APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, state: State):
    check_model(state, body.model)
    if body.messages is not None:
        tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
        text = render_messages(state, body.messages, body.add_generation_prompt, tools)
    elif body.prompt is not None:
        text = body.prompt
    else:
        raise APIError(400, "give 'prompt' or 'messages'", param="prompt")
    special = state.tokenizer.special_tokens
    tokens = [special[text]] if text in special else state.tokenizer.encode(text)
    return {"tokens": tokens, "count": len(tokens), "max_model_len": state.engine.max_len}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, state: State):
    check_model(state, body.model)
    vocab = state.tokenizer.vocab_size
    if any(not 0 <= t < vocab for t in body.tokens):
        raise APIError(400, f"token ids must be in 0..{vocab - 1}", param="tokens")
    return {"prompt": state.tokenizer.decode(body.tokens)}


@router.get("/tokenizer_info")
async def tokenizer_info(state: State):
    tok = state.tokenizer
    names = {i: s for s, i in tok.special_tokens.items()}
    return {"tokenizer_class": "groundup", "eos_token": names.get(tok.eos_id), "bos_token": None, "pad_token": None,
            "chat_template": state.chat_template, "model_max_length": state.engine.max_len,
            "vocab_size": tok.vocab_size}
