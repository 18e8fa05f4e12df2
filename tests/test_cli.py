"""The `groundup` command: sub-commands, positionals and aliases, one-line errors, --debug, logging, Ctrl-C."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from groundup import cli
from groundup import config as configlib

SRC = str(Path(__file__).resolve().parents[1] / "src")


def console(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit status and stderr lines of the `groundup` script run in this process."""
    try:
        code = cli.console(argv)
    except SystemExit as e:  # a usage error: jsonargparse exits 2
        code = e.code
    return code, capsys.readouterr().err.splitlines()


def script(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`groundup ARGV` in a fresh process (what a user sees: logging, tracebacks, exit status)."""
    base = {k: v for k, v in os.environ.items() if k != "GROUNDUP_DEBUG"}
    env = {**base, "PYTHONPATH": SRC + os.pathsep + base.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.run([sys.executable, "-m", "groundup.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.fixture(scope="module")
def model_dirs(spine_tokenizer, tmp_path_factory) -> dict[str, Path]:
    """A small model dir, and copies with a corrupt model.safetensors and a malformed tokenizer.json."""
    from groundup.model.config import ModelConfig
    from groundup.model.io import save_model_dir
    from groundup.model.transformer import Transformer

    root = tmp_path_factory.mktemp("cli_models")
    model = Transformer(ModelConfig(vocab_size=320, block_size=32, n_layer=1, n_head=2, n_kv_head=2, n_embd=16,
                                    intermediate_size=32))
    good = save_model_dir(root / "good", model, tokenizer_file=spine_tokenizer, stage="test", config={})
    dirs = {"good": good, "missing": root / "missing"}
    for name, file, data in (("bad_weights", "model.safetensors", b"\x10\0\0\0\0\0\0\0not a header at all"),
                             ("bad_tokenizer", "tokenizer.json", b'{"version": "1.0", "model": {"type": "BPE"')):
        dirs[name] = root / name
        shutil.copytree(good, dirs[name])
        (dirs[name] / file).write_bytes(data)
    return dirs


@pytest.mark.parametrize(("argv", "case", "named"), [
    (["generate", "--prompt", "x"], "missing", "missing"),
    (["generate", "--prompt", "x"], "bad_weights", "bad_weights/model.safetensors"),
    (["generate", "--prompt", "x"], "bad_tokenizer", "bad_tokenizer/tokenizer.json"),
    (["export", "--to", "gguf"], "bad_weights", "bad_weights/model.safetensors"),
    (["import"], "missing", "missing"),
    (["finetune", "sft"], "bad_tokenizer", "bad_tokenizer/tokenizer.json"),
])
def test_a_bad_input_is_one_line_naming_it(argv, case, named, model_dirs, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text('{"instruction": "Name a fruit.", "output": "A pear."}\n' * 8)
    extra = ["--data", str(data)] if argv[0] == "finetune" else []
    code, err = console([*argv, *extra, "--model", str(model_dirs[case]), "--out", str(tmp_path / "out")], capsys)
    prog = " ".join(a for a in argv if a in cli.STAGES or a in ("sft",))
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"groundup {prog}: error: ") and named in err[0], err


@pytest.mark.parametrize(("argv", "named"), [
    (["pretrain", "--no-such-key", "1"], "--no_such_key"),
    (["pretrain", "--optim.lr", "fast"], "optim.lr"),
    (["export", "--to", "onnx"], "onnx"),
    (["run", "huge"], "unknown recipe 'huge'"),
    (["fly"], "'fly'"),
])
def test_a_bad_command_line_is_one_line(argv, named, capsys):
    code, err = console(argv, capsys)
    assert code != 0 and len(err) == 1 and named in err[0], err


def test_a_malformed_config_file_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "recipe.yaml"
    bad.write_text("batch_size: 4\noptim: {lr: 1e-3\n")
    for argv in (["pretrain", "--config", str(bad)], ["run", str(bad)]):
        code, err = console(argv, capsys)
        assert code == 2 and len(err) == 1 and f"{bad}:" in err[0] and "not valid YAML" in err[0], err


def test_debug_shows_the_traceback(model_dirs, capsys, monkeypatch):
    monkeypatch.setenv("GROUNDUP_DEBUG", "0")  # restored afterwards, whatever --debug sets
    with pytest.raises(FileNotFoundError, match="model dir not found"):
        cli.console(["--debug", "generate", "--model", str(model_dirs["missing"])])
    assert os.environ["GROUNDUP_DEBUG"] == "1"  # inherited by the processes a stage starts
    monkeypatch.setenv("GROUNDUP_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.console(["generate", "--model", str(model_dirs["missing"])])


def test_the_script_prints_one_line_and_the_traceback_only_with_debug(model_dirs):
    plain = script("generate", "--model", str(model_dirs["bad_weights"]))
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert len(plain.stderr.strip().splitlines()) <= 3, plain.stderr
    debug = script("generate", "--model", str(model_dirs["bad_weights"]), env={"GROUNDUP_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "model.safetensors" in debug.stderr


def test_interrupt_exits_130_with_one_line(monkeypatch, capsys):
    from groundup.plan import run as plan_stage

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(plan_stage, "run", interrupted)
    code, err = console(["plan"], capsys)
    assert code == 130 and err == ["groundup plan: interrupted"]


def test_every_command_logs_at_the_level_asked(tmp_path):
    (tmp_path / "empty").mkdir()
    shown = script("report", str(tmp_path / "empty"), "--out", str(tmp_path / "a.html"))
    assert shown.returncode == 0 and "INFO groundup.report.run: report written to" in shown.stderr
    quiet = script("--log-level", "warning", "report", str(tmp_path / "empty"), "--out", str(tmp_path / "b.html"))
    assert quiet.returncode == 0 and "report written" not in quiet.stderr and (tmp_path / "b.html").is_file()


def test_the_stage_list_imports_no_stage():
    code = ("import sys; from groundup import cli; assert cli.main(['--help']) == 0; "
            "print(sorted(m for m in sys.modules if m.startswith('groundup.') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": SRC}).stdout
    assert "pretrain" in out  # listed, not imported (nor torch)
    assert out.strip().splitlines()[-1] == "['groundup.cli', 'groundup.config', 'groundup.interop']"


# ---------------------------------------------------------------------------- positionals, aliases, bare flags


def test_positional_run_dirs_and_flags_in_any_order():
    from groundup.report import run as report_stage

    for argv in (["a", "b", "--title", "T"], ["--title", "T", "a", "b"], ["--title=T", "a", "b"]):
        cfg = configlib.parse(report_stage.Config, argv)
        assert cfg.runs == [Path("a"), Path("b")] and cfg.title == "T", argv
    assert configlib.parse(report_stage.Config, []).runs == []


def test_recipe_positional_is_applied_under_the_flags():
    from groundup import run as pipeline

    for argv in (["--tokenizer.vocab-size", "999"], ["tiny", "--tokenizer.vocab_size", "999"]):
        cfg = configlib.parse(pipeline.Config, argv)
        assert cfg.recipe == "tiny" and cfg.tokenizer.vocab_size == 999, argv
    assert configlib.parse(pipeline.Config, []).tokenizer.vocab_size == 8192  # the tiny recipe's
    assert configlib.parse(pipeline.Config, ["gpt2-124m"]).tokenizer.vocab_size == 50304


def test_aliases_and_bare_true_false_flags():
    from groundup.interop import export, importer

    cfg = configlib.parse(export.Config, ["--verify", "--to", "gguf", "--max-shard-size", "1GB"])
    assert cfg.verify is True and cfg.format == "gguf" and cfg.max_shard_size == "1GB"
    assert configlib.parse(export.Config, ["--verify", "false"]).verify is False
    assert configlib.parse(export.Config, ["--format=gguf", "--verify=true"]).format == "gguf"
    assert configlib.parse(importer.Config, ["--from", "hf-dir"]).model == Path("hf-dir")


def test_lm_eval_takes_its_command_line_as_it_is():
    pytest.importorskip("lm_eval")
    from groundup.evaluate import lm_eval as harness

    argv = ["--model", "groundup", "--model_args", "path=x", "--tasks", "a,b", "--some-flag"]
    assert configlib.parse(harness.Config, argv).args == argv


def test_a_remainder_field_must_be_alone():
    import dataclasses

    @dataclasses.dataclass(kw_only=True)
    class Both:
        args: list[str] = dataclasses.field(default_factory=list, metadata=configlib.remainder())
        other: int = 1

    with pytest.raises(TypeError, match="only field"):
        configlib.build_parser(Both)


def test_dashes_stop_at_the_double_dash():
    assert configlib.normalize_flags(["--max-minutes=1", "--", "--not-a-key"]) == [
        "--max_minutes=1", "--", "--not-a-key"]


def test_classify_takes_one_text_or_several():
    from groundup.infer import classify

    assert configlib.parse(classify.Config, ["--text", "some text"]).text == "some text"
    assert configlib.parse(classify.Config, ["--text", "[a b, c]"]).text == ["a b", "c"]
    assert configlib.parse(classify.Config, ["--text+", "a b", "--text+", "c"]).text == ["a b", "c"]
