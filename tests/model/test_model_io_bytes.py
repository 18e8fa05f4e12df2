"""Saved weights are reproducible files: the same tensors give the same model.safetensors bytes in any process."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

SAVE = textwrap.dedent("""
    import sys, torch
    from groundup.model.config import ModelConfig
    from groundup.model.io import save_model_weights
    from groundup.model.transformer import Transformer
    torch.manual_seed(5)
    model = Transformer(ModelConfig.from_name("tiny-llama", n_layer=2, n_embd=32, n_head=4, n_kv_head=2,
                                              vocab_size=96, block_size=16, tie_embeddings=False))
    save_model_weights(model, sys.argv[1])
""")


def test_the_same_weights_give_the_same_file_in_two_processes(tmp_path):
    digests = []
    for i in range(2):
        path = tmp_path / f"model-{i}.safetensors"
        # a different hash seed in each process: nothing may depend on set or dict-of-str ordering
        subprocess.run([sys.executable, "-c", SAVE, str(path)], check=True, env=_env(seed=str(i)))
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def _env(seed: str) -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}
