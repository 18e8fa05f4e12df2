"""Generation: KV-cached decoding against full recomputation, seeds, stopping, streaming text, the stage."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from groundup import config as configlib
from groundup.infer import engine as engine_module
from groundup.infer import generate as generate_module
from groundup.infer.generate import Config, TextStream, generate, generate_tokens, run
from groundup.infer.sampling import SamplingParams
from groundup.model.config import ModelConfig
from groundup.model.transformer import Transformer

EOS = 256


class ByteTokenizer:
    """A stand-in with the tokenizer's API: ids 0..255 are bytes, 256 is the end-of-sequence token."""

    eos_id = EOS
    vocab_size = 257
    special_tokens = {"<|endoftext|>": EOS}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids) -> bytes:
        return bytes(i for i in ids if i < 256)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def tiny_model(family: str = "gpt2", block_size: int = 64) -> Transformer:
    # init_std 0.2 rather than 0.02: greedy decoding of a near-uniform model repeats one token, which
    # would let a broken cache pass.
    torch.manual_seed(0)
    name = "tiny-gpt2" if family == "gpt2" else "tiny-llama"
    extra = {} if family == "gpt2" else {"n_kv_head": 2}
    config = ModelConfig.from_name(name, n_layer=2, n_embd=64, n_head=4, vocab_size=300, block_size=block_size,
                                   init_std=0.2, **extra)
    return Transformer(config).eval()


@pytest.fixture(scope="module")
def gpt2() -> Transformer:
    return tiny_model("gpt2")


def greedy_reference(model: Transformer, prompt: list[int], n: int, *, keep_on_slide: int | None = None) -> list[int]:
    """Greedy decoding with a full forward over the visible window at every step, no cache.

    The window mirrors the 'slide' policy: a prompt keeps its last block_size tokens, and a context that
    would outgrow block_size restarts from its last ``keep_on_slide`` tokens.
    """
    block_size = model.config.block_size
    ids = list(prompt)
    start = max(len(ids) - block_size, 0)
    out = []
    with torch.no_grad():
        for _ in range(n):
            if len(ids) - start > block_size:
                start = len(ids) - keep_on_slide
            logits = model(torch.tensor([ids[start:]]))[0, -1]
            token = int(logits.argmax())
            out.append(token)
            ids.append(token)
    return out


def module_state(model: Transformer) -> dict:
    """Every module's attributes and mode: generation must leave the model exactly as it found it."""
    return {name: (sorted(vars(m)), m.training) for name, m in model.named_modules()}


GREEDY = SamplingParams(temperature=0, max_new_tokens=24)


# ---------------------------------------------------------------------------- generate_tokens


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cached_greedy_equals_recomputed_greedy(family):
    model = tiny_model(family)
    before = module_state(model)
    prompt = [11, 42, 7, 99, 3, 250]
    tokens = list(generate_tokens(model, prompt, GREEDY))
    assert len(set(tokens)) > 5  # a varied sequence, so that a cache bug would show
    assert tokens == greedy_reference(model, prompt, GREEDY.max_new_tokens)
    assert module_state(model) == before


@pytest.mark.parametrize("edit", ["fused_adamw", "data"])
def test_generation_follows_weights_changed_behind_the_version_counters(edit):
    """Fused AdamW and edits through ``.data`` change weights without moving their version counters; the
    cached decode layout must see it, or a model generates from its weights as they were (GRPO's rollouts)."""
    model = tiny_model("llama")
    prompt = [11, 42, 7, 99, 3, 250]
    before = list(generate_tokens(model, prompt, GREEDY))
    versions = [p._version for p in model.parameters()]
    if edit == "fused_adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
        model(torch.tensor([prompt])).logsumexp(-1).mean().backward()
        optimizer.step()
    else:
        with torch.no_grad():
            for p in model.parameters():
                p.data.mul_(-1.5)
    assert [p._version for p in model.parameters()] == versions  # the counters did not move
    after = list(generate_tokens(model, prompt, GREEDY))
    assert after == greedy_reference(model, prompt, GREEDY.max_new_tokens)
    assert after != before


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sliding_past_block_size_matches_recomputation(family):
    model = tiny_model(family, block_size=16)
    params = SamplingParams(temperature=0, max_new_tokens=40)
    short, long = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14], list(range(20, 40))  # 10 and 20 tokens
    for prompt in (short, long):
        tokens = list(generate_tokens(model, prompt, params))
        assert len(tokens) == 40
        assert tokens == greedy_reference(model, prompt, 40, keep_on_slide=8)


def test_context_overflow_stop_ends_at_block_size_and_rejects_long_prompts():
    model = tiny_model(block_size=16)
    params = SamplingParams(temperature=0, max_new_tokens=40, context_overflow="stop")
    tokens = list(generate_tokens(model, list(range(10)), params))
    # 10 prompt positions + 6 fed tokens fill the 16 positions; their logits give a 7th token.
    assert len(tokens) == 7
    assert tokens == greedy_reference(model, list(range(10)), 7)
    with pytest.raises(ValueError, match="block_size 16"):
        generate_tokens(model, list(range(17)), params)


def test_seed_makes_sampling_reproducible(gpt2):
    prompt = [1, 2, 3]
    sample = lambda seed: list(generate_tokens(gpt2, prompt, SamplingParams(temperature=1.0, seed=seed,
                                                                             max_new_tokens=20)))
    assert sample(123) == sample(123)
    assert sample(123) != sample(124)


def test_max_new_tokens_is_respected(gpt2):
    params = SamplingParams(temperature=1.0, max_new_tokens=9, seed=0)
    assert len(list(generate_tokens(gpt2, [1, 2], params, eos_id=None))) == 9


def test_eos_stops_unless_told_otherwise(gpt2):
    force_eos = {EOS: 100.0}
    params = SamplingParams(temperature=1.0, max_new_tokens=10, logit_bias=force_eos, seed=0)
    assert list(generate_tokens(gpt2, [1, 2], params, eos_id=EOS)) == [EOS]
    keep_going = SamplingParams(temperature=1.0, max_new_tokens=10, logit_bias=force_eos, stop_at_eos=False)
    assert list(generate_tokens(gpt2, [1, 2], keep_going, eos_id=EOS)) == [EOS] * 10


def test_stop_token_ids_end_generation(gpt2):
    first = next(iter(generate_tokens(gpt2, [1, 2], GREEDY)))
    params = SamplingParams(temperature=0, max_new_tokens=10, stop_token_ids=[first])
    assert list(generate_tokens(gpt2, [1, 2], params)) == [first]


def test_vocab_limit_never_samples_padding_rows(gpt2):
    # Bias pushes everything toward id 299, a padding row when the tokenizer has 257 ids.
    params = SamplingParams(temperature=1.0, max_new_tokens=20, seed=0, logit_bias={299: 100.0})
    assert set(generate_tokens(gpt2, [1], params)) == {299}
    limited = list(generate_tokens(gpt2, [1], params, vocab_limit=257))
    assert len(limited) == 20 and max(limited) < 257
    with pytest.raises(ValueError, match="vocab_limit"):
        generate_tokens(gpt2, [1], params, vocab_limit=301)


def test_early_exit_leaves_the_model_as_it_was_and_decodes_in_eval_mode():
    """Generation decodes with an eval-mode view of the model (no dropout), never touching the model itself:
    in train mode with dropout it gives the eval-mode greedy tokens, before and after an early exit."""
    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny-gpt2", n_layer=2, n_embd=64, n_head=4, vocab_size=300, block_size=64,
                                   init_std=0.2, dropout=0.5)
    model = Transformer(config).eval()
    expected = greedy_reference(model, [1, 2, 3], 3)
    model.train()
    before = module_state(model)
    tokens = generate_tokens(model, [1, 2, 3], SamplingParams(temperature=0.0, max_new_tokens=50))
    first = list(itertools.islice(tokens, 3))
    assert first == expected
    assert module_state(model) == before  # mid-generation
    tokens.close()
    assert module_state(model) == before and model.training


def test_penalties_change_greedy_output(gpt2):
    prompt = [11, 42, 7]
    plain = list(generate_tokens(gpt2, prompt, GREEDY))
    penalized = list(generate_tokens(gpt2, prompt, SamplingParams(temperature=0, max_new_tokens=24,
                                                                   repetition_penalty=100.0)))
    assert plain != penalized
    assert len(set(penalized)) == len(penalized)  # a huge penalty never repeats a token
    assert not set(penalized) & set(prompt)


def test_bad_prompts_raise(gpt2):
    with pytest.raises(ValueError, match="empty"):
        generate_tokens(gpt2, [], GREEDY)
    with pytest.raises(ValueError, match="vocabulary of 300"):
        generate_tokens(gpt2, [1, 300], GREEDY)
    with pytest.raises(ValueError, match="logit_bias"):
        generate_tokens(gpt2, [1], SamplingParams(logit_bias={999: 1.0}))


# ---------------------------------------------------------------------------- TextStream


def push_all(stream: TextStream, ids: list[int]) -> list[str]:
    deltas = []
    for i in ids:
        deltas.append(stream.push(i))
        if stream.stopped:
            break
    deltas.append(stream.finish())
    return deltas


def test_stream_never_emits_half_characters():
    text = "héllo → 世界 🙂!"
    stream = TextStream(ByteTokenizer())
    deltas = push_all(stream, list(text.encode()))
    assert "".join(deltas) == text == stream.text
    assert all("\ufffd" not in d for d in deltas)
    # The four bytes of the emoji arrive one at a time: the first three emit nothing.
    assert deltas[-6:] == ["", "", "", "🙂", "!", ""]


def test_stream_replaces_bytes_that_never_form_a_character():
    stream = TextStream(ByteTokenizer())
    assert push_all(stream, [0xE4, 0xB8, ord("a")]) == ["", "", "\ufffda", ""]
    stream = TextStream(ByteTokenizer())
    assert push_all(stream, [ord("a"), 0xE4]) == ["a", "", "\ufffd"]  # an unfinished character at the end


def test_stop_string_split_across_tokens_cuts_the_text():
    stream = TextStream(ByteTokenizer(), stop=["END"])
    deltas = push_all(stream, list(b"Hello END world"))
    assert stream.stopped and stream.stop_string == "END"
    assert "".join(deltas) == stream.text == "Hello "
    assert len(stream.token_ids) == len(b"Hello END")  # pushing stopped at the token completing the stop string
    with pytest.raises(RuntimeError):
        stream.push(ord("x"))


def test_stream_holds_a_possible_stop_string_until_it_is_resolved():
    stream = TextStream(ByteTokenizer(), stop=["ENDX", "世界"])
    deltas = [stream.push(i) for i in b"ab END"]
    assert "".join(deltas) == "ab "  # "END" could still become "ENDX"
    assert stream.push(ord("!")) == "END!"  # it did not
    for i in "世".encode():
        assert stream.push(i) == ""  # a multi-byte stop string's first character is held too
    deltas = push_all(stream, list("界 x".encode()))
    assert stream.stopped and stream.text == "ab END!" and deltas == [""] * 4


def test_earliest_stop_string_wins():
    stream = TextStream(ByteTokenizer(), stop=["cd", "abcdef"])
    push_all(stream, list(b"xxabcdefgh"))
    assert stream.text == "xxab" and stream.stop_string == "cd"


# ---------------------------------------------------------------------------- generate()


def scripted(ids: list[int], log: list[str]):
    """A stand-in for the engine's draw from the sampled distribution: the fixed ``ids`` in turn, each draw logged."""
    script = iter(ids)

    def fake(processed, params, generator=None):
        log.append("draw")
        return torch.tensor([next(script)])

    return fake


def test_generate_cuts_at_stop_strings_and_streams_the_same_text(gpt2, monkeypatch):
    log: list[str] = []
    ids = list("Hi → 世界 END more".encode())
    monkeypatch.setattr(engine_module, "draw", scripted(ids, log))
    pieces: list[str] = []
    result = generate(gpt2, ByteTokenizer(), "prompt", SamplingParams(stop=["END"]), on_text=pieces.append)
    assert result.text == "".join(pieces) == "Hi → 世界 "
    assert result.finish_reason == "stop"
    assert result.token_ids == ids[: len("Hi → 世界 END".encode())]
    assert result.completion_tokens == len(result.token_ids) and result.prompt_tokens == 6
    assert log == ["draw"] * len(result.token_ids)  # generation stopped at the stop string


def test_generate_finish_reasons(gpt2, monkeypatch):
    tok = ByteTokenizer()

    def script() -> None:  # each generation draws the same ids from the start
        monkeypatch.setattr(engine_module, "draw", scripted([*b"ab", EOS, *b"cd"], []))

    script()
    result = generate(gpt2, tok, "x", SamplingParams())
    assert (result.text, result.finish_reason, result.token_ids) == ("ab", "eos", [97, 98, EOS])
    script()
    result = generate(gpt2, tok, "x", SamplingParams(max_new_tokens=2))
    assert (result.text, result.finish_reason) == ("ab", "length")
    script()
    result = generate(gpt2, tok, "x", SamplingParams(stop_at_eos=False, max_new_tokens=5))
    assert (result.text, result.finish_reason) == ("abcd", "length")  # the EOS token decodes to no text
    script()
    result = generate(gpt2, tok, "x", SamplingParams(stop_token_ids=[98]))
    assert (result.text, result.finish_reason, result.token_ids) == ("a", "stop", [97, 98])


def test_generate_with_a_model_streams_its_text(gpt2):
    pieces: list[str] = []
    params = SamplingParams(temperature=1.0, seed=3, max_new_tokens=30)
    result = generate(gpt2, ByteTokenizer(), "Once upon a time", params, on_text=pieces.append)
    assert "".join(pieces) == result.text
    assert result.prompt_tokens == len("Once upon a time") and 1 <= result.completion_tokens <= 30
    expected = list(generate_tokens(gpt2, list(b"Once upon a time"), params, eos_id=EOS, vocab_limit=257))
    assert result.token_ids == expected
    assert result.finish_reason == ("eos" if expected[-1] == EOS else "length")


def test_empty_prompt_starts_from_eos(gpt2):
    params = SamplingParams(temperature=0, max_new_tokens=5, stop_at_eos=False)
    result = generate(gpt2, ByteTokenizer(), "", params)
    assert result.prompt_tokens == 1
    assert result.token_ids == list(generate_tokens(gpt2, [EOS], params, vocab_limit=257))


# ---------------------------------------------------------------------------- the stage


def parse_flags(argv: list[str]) -> Config:
    # The parser groundup.config builds for every stage; instantiate_classes builds the nested dataclasses.
    parser = configlib.build_parser(Config)
    init = parser.instantiate_classes(parser.parse_args(configlib.normalize_flags(argv)))
    return Config(**{k: v for k, v in vars(init).items() if k != "config"})


def test_run_streams_to_stdout_and_writes_jsonl(gpt2, tmp_path, monkeypatch, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    seen = []

    def fake_load(path, *, device="cpu"):
        seen.append((path, device))
        return gpt2, ByteTokenizer()

    monkeypatch.setattr(generate_module, "load_model_dir", fake_load)
    out = tmp_path / "samples.jsonl"
    cfg = parse_flags(["--model", str(model_dir), "--prompt", "Hi", "--num_samples", "2",
                                   "--sampling.temperature", "1.0", "--sampling.seed", "5",
                                   "--sampling.max_new_tokens", "8", "--sampling.stop_at_eos", "false",
                                   "--out", str(out)])
    assert run(cfg) == out
    assert seen == [(model_dir, "cpu")]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sample"] for r in records] == [0, 1]
    assert [r["sampling"]["seed"] for r in records] == [5, 6]
    assert all(r["completion_tokens"] == 8 and r["finish_reason"] == "length" for r in records)
    captured = capsys.readouterr()
    for r in records:
        assert "Hi" + r["text"] in captured.out
    assert "tokens/s" in captured.err


def test_run_names_a_missing_model_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run(Config(model=missing, prompt="x"))


def test_config_parses_nested_sampling_flags():
    cfg = parse_flags(["--prompt", "x", "--sampling.top_p", "0.9", "--sampling.stop", '["\\n\\n"]',
                                   "--sampling.context_overflow", "stop"])
    assert cfg.sampling.top_p == 0.9 and cfg.sampling.stop == ["\n\n"]
    assert cfg.sampling.context_overflow == "stop" and cfg.sampling.temperature == 0.8
    with pytest.raises((ValueError, SystemExit)):
        parse_flags(["--sampling.top_p", "1.5"])


def test_run_end_to_end_with_a_real_model_dir(tmp_path, capsys):
    tokenizer_module = pytest.importorskip("groundup.tokenizer")
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from groundup.model.io import save_model_dir

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=290, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(["hello world, héllo wörld, 世界 and more words"] * 20, trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    tokenizer = tokenizer_module.Tokenizer.from_file(tmp_path / "tokenizer.json")
    model = tiny_model()  # 300 rows: padded beyond the tokenizer's vocabulary
    assert tokenizer.vocab_size < model.config.vocab_size
    model_dir = save_model_dir(tmp_path / "model", model, tokenizer_file=tmp_path / "tokenizer.json",
                               stage="test", config={})

    sampling = SamplingParams(temperature=1.0, seed=1, max_new_tokens=40, stop_at_eos=False)
    out = run(Config(model=model_dir, prompt="héllo", sampling=sampling, out=tmp_path / "s.jsonl"))
    (record,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert record["completion_tokens"] == 40 and max(record["token_ids"]) < tokenizer.vocab_size
    assert record["text"] == tokenizer.decode(record["token_ids"])  # streaming decoded the same text
    assert capsys.readouterr().out == "héllo" + record["text"] + "\n"
