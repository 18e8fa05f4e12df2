"""Tiny random models in model dirs for the serving tests (the spine tokenizer, a few layers, fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from groundup.model.config import ModelConfig
from groundup.model.io import load_model_dir, save_model_dir
from groundup.model.transformer import Transformer


def make_model_dir(out: Path, tokenizer_dir: Path, *, seed: int = 0, **shape) -> Path:
    torch.manual_seed(seed)
    base = dict(vocab_size=384, block_size=256, n_layer=2, n_head=4, n_embd=64, init_std=0.2)
    model = Transformer(ModelConfig(**{**base, **shape}))
    return save_model_dir(out, model, tokenizer_file=tokenizer_dir, stage="test", config={})


@pytest.fixture(scope="session")
def serve_model_dir(spine_tokenizer, tmp_path_factory) -> Path:
    """GPT-2-style tiny random model; vocab padded to 384 above the tokenizer's 320."""
    return make_model_dir(tmp_path_factory.mktemp("serve") / "model", spine_tokenizer)


@pytest.fixture(scope="session")
def serve_llama_dir(spine_tokenizer, tmp_path_factory) -> Path:
    """Llama-style tiny random model (RoPE, RMSNorm, SwiGLU, grouped-query attention)."""
    return make_model_dir(tmp_path_factory.mktemp("serve") / "llama", spine_tokenizer, seed=1, norm="rmsnorm",
                          mlp="swiglu", position="rope", n_kv_head=2, bias=False, tie_embeddings=False)


@pytest.fixture(scope="session")
def serve_draft_dir(spine_tokenizer, tmp_path_factory) -> Path:
    """A smaller random model over the same tokenizer (a draft for speculative decoding)."""
    return make_model_dir(tmp_path_factory.mktemp("serve") / "draft", spine_tokenizer, seed=5, n_layer=1, n_embd=32,
                          n_head=2)


@pytest.fixture(scope="session")
def harness_model_dir(spine_tokenizer, tmp_path_factory) -> Path:
    """GPT-2-style tiny random model whose vocabulary is exactly the tokenizer's (no padding rows)."""
    return make_model_dir(tmp_path_factory.mktemp("serve") / "harness", spine_tokenizer, seed=3, vocab_size=320)


@pytest.fixture(scope="session")
def serve_tools_dir(spine_tokenizer, tmp_path_factory) -> Path:
    """GPT-2-style tiny random model with room for a tools system prompt (about 800 tokens of this vocabulary)."""
    return make_model_dir(tmp_path_factory.mktemp("serve") / "tools", spine_tokenizer, seed=7, block_size=1536)


@pytest.fixture(scope="session")
def serve_model(serve_model_dir):
    return load_model_dir(serve_model_dir)


class LiveServer:
    """`groundup serve`'s app under a real uvicorn on a free loopback port, in a thread."""

    def __init__(self, model_dir: Path, *, engine: dict | None = None, limits: dict | None = None,
                 **settings) -> None:
        import socket
        import threading
        import time

        import uvicorn

        from groundup.serve.app import create_app
        from groundup.serve.run import Config, EngineSettings, build_state
        from groundup.serve.settings import RequestLimits

        self.state = build_state(Config(model=model_dir, engine=EngineSettings(**(engine or {})),
                                        limits=RequestLimits(**(limits or {})), **settings))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(create_app(self.state), host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.state.engine.shutdown()


@pytest.fixture(scope="session")
def live_server(serve_model_dir):
    server = LiveServer(serve_model_dir, served_model_name="tiny", engine={"max_seqs": 8},
                        limits={"max_prompt_tokens": 200, "max_tokens": 64, "max_request_bytes": 20_000})
    yield server
    server.close()


@pytest.fixture(scope="session")
def keyed_server(serve_model_dir):
    server = LiveServer(serve_model_dir, served_model_name="tiny", api_key="sekret", engine={"max_seqs": 4})
    yield server
    server.close()


@pytest.fixture(scope="session")
def make_live_server():
    """``make_live_server(model_dir, **settings)`` starts another LiveServer, closed at the end of the session."""
    servers: list[LiveServer] = []

    def make(model_dir: Path, **settings) -> LiveServer:
        servers.append(LiveServer(model_dir, **settings))
        return servers[-1]

    yield make
    for server in servers:
        server.close()
