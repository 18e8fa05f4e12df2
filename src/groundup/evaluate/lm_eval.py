"""lm-evaluation-harness adapter: a groundup model dir as an lm-eval ``LM`` registered as ``"groundup"``.

Python::

    import groundup.evaluate.lm_eval  # registers "groundup" with lm-eval
    from lm_eval import simple_evaluate
    simple_evaluate(model="groundup", model_args="path=runs/x/model,batch_size=16", tasks=[...])

Command line: lm-eval looks models up in its own registry only (no entry-point plugin group in
0.4.x), so ``lm_eval --model groundup`` cannot find a third-party model by itself. ``groundup
lm-eval`` is lm-eval's own command line with groundup's model registered first; every lm-eval flag
works::

    groundup lm-eval --model groundup --model_args path=runs/x/model --tasks my_task \\
        --include_path my_tasks/

Requests are scored by :func:`groundup.evaluate.lm.score_requests`, the same code as ``groundup
evaluate``, so the two agree exactly and both are independent of the batch size.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from groundup import config as configlib
from groundup.evaluate.lm import rolling_windows
from groundup.extras import import_extra
from groundup.infer.score import ScoreRequest, score_requests

import_extra("lm_eval.models", "eval", purpose="the lm-evaluation-harness adapter")  # fills lm-eval's registry first
from lm_eval.api.model import TemplateLM  # noqa: E402  (after the check that names the extra)
from lm_eval.api.registry import register_model  # noqa: E402


@register_model("groundup")
class GroundupLM(TemplateLM):
    """A groundup model (a model dir, or a model and tokenizer in memory) for lm-eval."""

    def __init__(self, path: str | None = None, *, model=None, tokenizer=None, batch_size: int | str = 16,
                 max_length: int | None = None, stride: int | None = None, device: str = "cpu",
                 max_gen_toks: int = 256, **_ignored) -> None:
        device = device or "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line defaults to --device cuda; on a CPU-only machine use the CPU, and say so.
            logging.getLogger(__name__).warning("device %s asked for but CUDA is not available: using the CPU", device)
            device = "cpu"
        super().__init__()
        if model is None:
            if path is None:
                raise ValueError("groundup LM: give path=<model dir> (or model= and tokenizer= in Python)")
            from groundup.model.io import load_model_dir

            model, tokenizer = load_model_dir(Path(path), device=device)
        self.model = model.eval()
        self.tok = tokenizer
        self.batch_size = 16 if batch_size is None or str(batch_size).startswith("auto") else int(batch_size)
        self.max_length = int(max_length or model.config.block_size)
        self.stride = int(stride) if stride else None
        self.max_gen_toks = int(max_gen_toks)
        self._device = torch.device(device)

    @classmethod
    def create_from_arg_obj(cls, arg_dict, additional_config=None):
        # lm-eval's command line always passes its own --batch_size and --device; a value given in
        # --model_args is the more specific one and wins (lm-eval itself would raise a TypeError).
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # ------------------------------------------------------------------ what TemplateLM needs

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tok, "name", "groundup")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode(string)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        scores = score_requests(self.model, [ScoreRequest(tuple(ctx), tuple(cont)) for _, ctx, cont in requests],
                                batch_size=self.batch_size, max_length=self.max_length,
                                progress=not disable_tqdm)
        out = []
        for (key, _, _), s in zip(requests, scores, strict=True):
            out.append((s.loglikelihood, s.is_greedy))
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, (s.loglikelihood, s.is_greedy))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for r, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in rolling_windows(self.tok_encode(string), prefix_token=self.eot_token_id,
                                             max_length=self.max_length, stride=self.stride):
                windows.append(((None, None), ctx, cont))
                owner.append(r)
        parts: list[list[float]] = [[] for _ in requests]
        for r, (ll, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm), strict=True):
            parts[r].append(ll)
        totals = [math.fsum(p) for p in parts]
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from groundup.evaluate.generation import generate_until

        # Requests with the same settings are generated together, through one engine.
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            _, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = (until,) if isinstance(until, str) else tuple(until)
            key = (until, int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks)),
                   float(gen_kwargs.pop("temperature", 0.0)))
            groups.setdefault(key, []).append(i)
        out: list[str] = [""] * len(requests)
        for (until, max_new_tokens, temperature), members in groups.items():
            texts = generate_until(self.model, self.tok, [requests[i].args[0] for i in members], until=until,
                                   max_new_tokens=max_new_tokens, temperature=temperature)
            for i, text in zip(members, texts, strict=True):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out


@dataclass(kw_only=True)
class Config:
    """lm-evaluation-harness's own command line, with groundup's model registered (--model groundup).
    Everything after `groundup lm-eval` goes to lm-eval as it is; `groundup lm-eval --help` is lm-eval's help."""

    args: list[str] = field(default_factory=list, metadata=configlib.remainder())
    """lm-eval's options (--model groundup --model_args path=MODEL_DIR --tasks ...)."""


def run(cfg: Config) -> None:
    """Run lm-eval's command line ``cfg.args`` (it writes where its own --output_path says)."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *cfg.args]
    cli_evaluate()
