"""Classifiers: a model whose output head has one row per class, read at each text's last real token
or averaged over its tokens.

A classifier dir is a model dir whose ``lm_head.weight`` has one row per class (``config.json`` has
``tie_embeddings: false``) plus ``classifier.json``: ``{"labels": [...], "pooling": "last_token",
"max_len": N, "pad_id": id}``. A regression head (``"task": "regression"``) has one row, ``labels``
is ``["score"]``, and the prediction is ``target_mean + target_std * output`` (the head learns the
standardized target). ``groundup finetune classify`` writes one (:mod:`groundup.finetune.classify`);
:func:`load_classifier_dir` reads it and ``groundup classify`` runs it (:mod:`groundup.infer.classify`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groundup.artifacts import read_json, require_files
from groundup.model.io import load_model_weights, read_model_config
from groundup.model.transformer import Transformer
from groundup.tokenizer import Tokenizer

CLASSIFIER_FILE = "classifier.json"
HEAD = "lm_head.weight"
POOLINGS = ("last_token", "mean")


def add_class_head(model: nn.Module, n_classes: int) -> nn.Module:
    """Replace the vocabulary head by a fresh (n_classes, C) head; the embedding is no longer tied to it."""
    head = nn.Linear(model.config.n_embd, n_classes, bias=False)
    nn.init.normal_(head.weight, std=model.config.init_std)
    model.lm_head = head
    model.config = dataclasses.replace(model.config, tie_embeddings=False)
    return model


def class_logits(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor, pooling: str = "last_token") -> torch.Tensor:
    """Class logits (B, K) of each sequence; ``x`` (B, T) right-padded, ``lengths`` (B,).

    ``pooling``: 'last_token' reads the head at the last real token (which has attended to the whole text);
    'mean' averages it over the real tokens, which is the head applied to the mean of the hidden states
    (the head is linear, without bias). Through the model's ``forward`` (the head on every position, K wide:
    cheap), so that a DDP wrapper or FSDP2's hooks see the call as they must under torchrun."""
    logits = model(x)  # (B, T, K)
    if pooling == "last_token":
        return logits[torch.arange(x.shape[0], device=x.device), lengths - 1]
    if pooling == "mean":
        real = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        return (logits * real[..., None]).sum(1) / lengths[:, None].to(logits.dtype)
    raise ValueError(f"unknown pooling {pooling!r} (choose from {', '.join(POOLINGS)})")


def pad_texts(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
    return x, torch.tensor([len(s) for s in seqs])


def encode_texts(tokenizer, texts: list[str], max_len: int, stats: Any = None) -> list[list[int]]:
    """Token ids of each text, cut to its first ``max_len`` tokens (counted in ``stats.truncated`` when
    given: fine-tuning's DataStats); an empty text becomes the EOS token."""
    out = []
    for ids in tokenizer.encode_batch(texts):
        if len(ids) > max_len:
            ids = ids[:max_len]
            if stats is not None:
                stats.truncated += 1
        out.append(ids or [tokenizer.eos_id or 0])
    return out


def load_classifier_dir(path: str | Path, *, device: str = "cpu"):
    """``(model, tokenizer, meta)`` of a classifier dir; ``meta`` is its classifier.json."""
    path = require_files(path, {"model.safetensors", "config.json", "tokenizer.json", CLASSIFIER_FILE},
                         "classifier dir")
    meta = read_json(path / CLASSIFIER_FILE)
    model = add_class_head(Transformer(read_model_config(path)), len(meta["labels"]))
    load_model_weights(model, path / "model.safetensors")
    return model.to(device).eval(), Tokenizer.from_file(path / "tokenizer.json"), meta
