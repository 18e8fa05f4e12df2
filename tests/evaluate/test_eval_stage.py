"""The evaluate stage end to end, the judge against a local stand-in server, tokenizer metrics, and
evaluation during pretraining."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from groundup import cli


@pytest.fixture(scope="module")
def gen_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                            for q, a in [("Say cat:", "cat"), ("Say dog:", "dog"), ("Color of sky?", "blue")]))
    return path


def test_stage_writes_results_samples_and_table(eval_model_dir, mc_file, text_file, gen_file, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--model", str(eval_model_dir), "--tasks", json.dumps([
        str(mc_file), f"prose={text_file}", str(gen_file)]), "--out", str(out), "--max_new_tokens", "8",
        "--progress", "false", "--batch_size", "7"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"results", "config", "model", "tasks"}
    mc = results["results"]["tiny_mc"]
    assert mc["n"] == 40 and 0 <= mc["acc"] <= 1 and mc["acc_stderr"] > 0 and "acc_norm" in mc
    assert results["results"]["prose"]["bits_per_byte"] > 0
    qa = results["results"]["qa"]
    assert {"exact_match", "bleu", "chrf", "rouge1", "rouge2", "rougeL"} <= set(qa)
    assert qa["bleu_signature"].startswith("nrefs:")
    assert results["tasks"]["tiny_mc"]["sha256"] == __import__("hashlib").sha256(mc_file.read_bytes()).hexdigest()
    assert len(results["model"]["manifest_sha256"]) == 64
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 40 + 12 + 3
    first = samples[0]
    assert first["prompt"].startswith("Question:") and len(first["loglikelihoods"]) == len(first["choices"])
    assert first["prediction"] == max(range(len(first["choices"])), key=lambda i: first["loglikelihoods"][i])
    table = capsys.readouterr().out
    assert "tiny_mc" in table and "acc_norm" in table and "±" in table and "bleu_signature" in table
    assert (out / "manifest.json").is_file()


def test_stage_refuses_a_bad_task_file_before_loading_the_model(eval_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q", "choices": [], "answer": 0}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: empty choice list"):
        cli.main(["evaluate", "--model", str(eval_model_dir), "--tasks", json.dumps([str(bad)]),
                  "--out", str(tmp_path / "o")])


# ---------------------------------------------------------------------------- judge


class StandIn(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions that grades by rules, recording each prompt."""

    prompts: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions" and body["model"] == "stand-in"
        prompt = body["messages"][0]["content"]
        type(self).prompts.append(prompt)
        if "[The Start of Assistant A's Answer]" in prompt:
            a = prompt.split("[The Start of Assistant A's Answer]\n")[1].split("\n[The End")[0]
            b = prompt.split("[The Start of Assistant B's Answer]\n")[1].split("\n[The End")[0]
            # prefers an answer saying "blue"; otherwise always the first one it reads (a position bias)
            verdict = "B" if "blue" in b and "blue" not in a else "A"
            content = f"Explanation. [[{verdict}]]"
        else:
            content = "Good. Rating: [[8]]" if "blue" in prompt.split("Assistant's Answer]")[1] else "Rating: [[3]]"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    StandIn.prompts = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_judge_scores_and_swaps_positions(judge_url):
    from groundup.evaluate.judge import Judge, JudgeConfig

    judge = Judge(JudgeConfig(url=judge_url, model="stand-in"))
    assert judge.score("Sky?", "blue")[0] == 8.0
    assert judge.score("Sky?", "green")[0] == 3.0
    # a genuine preference survives the swap, in either position
    assert judge.compare("Sky?", "green", "blue")[0] == "B"
    assert judge.compare("Sky?", "blue", "green")[0] == "A"
    # a pure position bias ("always A") cancels out into a tie
    verdict, texts = judge.compare("Sky?", "red", "green")
    assert verdict == "tie" and len(texts) == 2
    assert "[The Start of Assistant A's Answer]\nred" in StandIn.prompts[-2]
    assert "[The Start of Assistant A's Answer]\ngreen" in StandIn.prompts[-1]


def test_stage_judges_generation_tasks(eval_model_dir, gen_file, judge_url, tmp_path):
    out = tmp_path / "judged"
    cli.main(["evaluate", "--model", str(eval_model_dir), "--tasks", json.dumps([str(gen_file)]), "--out", str(out),
              "--max_new_tokens", "4", "--progress", "false", "--judge.url", judge_url, "--judge.model", "stand-in"])
    qa = json.loads((out / "results.json").read_text())["results"]["qa"]
    assert qa["judge_rating"] == 3.0  # a random model never says "blue"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(s["judge"]["rating"] == 3.0 for s in samples)


# ---------------------------------------------------------------------------- tokenizer metrics


def test_tokenizer_metrics_over_several_tokenizers(spine_tokenizer, eval_model_dir, tmp_path):
    from groundup.evaluate.tokenizer_eval import tokenizer_metrics
    from groundup.tokenizer import Tokenizer

    en = tmp_path / "en.txt"
    fr = tmp_path / "fr.txt"
    en.write_text("the cat sat on the mat\nthe house is big\n")
    fr.write_text("le chat était assis sur le tapis\nla maison est très grande\n")
    results = tokenizer_metrics([spine_tokenizer, eval_model_dir / "tokenizer.json"], [en], [en, fr])
    assert len(results) == 2
    m = next(iter(results.values()))
    tok = Tokenizer.from_file(spine_tokenizer / "tokenizer.json")
    lines = en.read_text().splitlines()
    n_tokens = sum(len(tok.encode(x)) for x in lines)
    assert m["fertility"] == pytest.approx(n_tokens / 10)
    assert m["bytes_per_token"] == pytest.approx(sum(len(x.encode()) for x in lines) / n_tokens)
    assert 0 <= m["continued_words"] <= 1
    expected = sum(len(tok.encode(f)) / len(tok.encode(e)) for e, f in zip(lines, fr.read_text().splitlines(),
                                                                          strict=True)) / 2
    assert m["parity"] == pytest.approx(expected) and m["parity"] > 1  # accents cost an English-trained BPE


# ---------------------------------------------------------------------------- during training


def test_pretrain_logs_task_scores_every_eval(spine_tokens, mc_file, text_file, tmp_path, monkeypatch):
    from groundup.model.config import ModelConfig
    from groundup.train import pretrain
    from groundup.train.loop import LoopConfig
    from groundup.train.optim import OptimConfig

    model = ModelConfig.from_name("tiny-llama", n_layer=1, n_embd=32, n_head=4, n_kv_head=2, vocab_size=320,
                                  block_size=32)
    cfg = pretrain.Config(tokens=spine_tokens, out=tmp_path / "run", model=model, optim=OptimConfig(lr=1e-2),
                          train=LoopConfig(max_steps=4, eval_every=2, log_every=2, progress_bar=False,
                                           checkpoint_every=0),
                          batch_size=4, eval_windows=2, device="cpu", eval_tasks=[str(mc_file), str(text_file)],
                          eval_tasks_limit=5, final_eval_stride=32)
    monkeypatch.setattr(pretrain, "peak_flops_for", lambda device: None)  # skips a 2 s matmul timing
    pretrain.run(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if "eval/tiny_mc/acc" in x]
    assert [x["step"] for x in evals] == [2, 4]  # every eval_every steps and at the end
    assert {"eval/tiny_mc/acc_norm", "eval/tiny_text/bits_per_byte", "val_loss"} <= set(evals[0])
    assert not any(k.endswith("_stderr") for k in evals[0])


def test_stage_pairwise_against_another_run(eval_model_dir, gen_file, judge_url, tmp_path):
    first = tmp_path / "first"
    cli.main(["evaluate", "--model", str(eval_model_dir), "--tasks", str(gen_file), "--out", str(first),
              "--max_new_tokens", "4", "--progress", "false"])
    second = tmp_path / "second"
    cli.main(["evaluate", "--model", str(eval_model_dir), "--tasks", str(gen_file), "--out", str(second),
              "--max_new_tokens", "4", "--progress", "false", "--judge.url", judge_url, "--judge.model", "stand-in",
              "--judge.mode", "pairwise", "--against", str(first / "samples.jsonl")])
    qa = json.loads((second / "results.json").read_text())["results"]["qa"]
    # the stand-in only ever prefers the answer it reads first: swapping positions turns that into ties
    assert qa["judge_win_rate"] == 0.5
    assert len(StandIn.prompts) == 2 * 3
