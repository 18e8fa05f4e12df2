"""Stage configs: --help from docstrings, YAML and flags, saved resolved configs, refused values."""

from __future__ import annotations

import pytest
import yaml

from groundup import cli
from groundup import config as configlib
from groundup.train import pretrain


def test_help_shows_every_field_with_its_docstring(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag, doc in [("--optim.lr", "Peak learning rate"), ("--train.max_minutes", "Wall-clock budget"),
                      ("--model.n_kv_head", ""), ("--batch_size", "Sequences per micro-batch"),
                      ("--train.resume", "newest checkpoint")]:
        assert flag in text, flag
        assert doc in text, doc


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"batch_size": 3, "optim": {"lr": 0.01, "schedule": "wsd"},
                                    "model": {"n_layer": 2}}))
    cfg = configlib.parse(pretrain.Config, ["--config", str(path), "--optim.lr", "3e-4", "--train.max-steps", "9"])
    assert cfg.batch_size == 3 and cfg.optim.lr == 3e-4 and cfg.optim.schedule == "wsd"
    assert cfg.model.n_layer == 2 and cfg.train.max_steps == 9


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = configlib.parse(pretrain.Config, ["--optim.betas", "[0.8, 0.9]", "--preset", "tiny-gpt2"])
    path = configlib.save(cfg, tmp_path / "config.yaml")
    assert configlib.load(pretrain.Config, path) == cfg


@pytest.mark.parametrize("argv", [["--optim.lr", "fast"], ["--precision", "fp8"], ["--no-such-key", "1"]])
def test_bad_values_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        configlib.parse(pretrain.Config, argv)
    assert exit_info.value.code != 0
    assert argv[0].lstrip("-").split(".")[-1].replace("-", "_") in capsys.readouterr().err


def test_stage_list_and_unknown_stage(capsys):
    assert cli.main([]) == 0
    listing = capsys.readouterr().out
    for stage in ("run", "tokenizer", "tokenize", "pretrain", "generate", "plan"):
        assert stage in listing
    assert cli.main(["fly"]) == 2


def _stage_configs():
    import importlib

    from groundup.finetune.run import METHODS

    for name, (module_name, _) in cli.STAGES.items():
        module = importlib.import_module(module_name)
        if hasattr(module, "Config"):
            yield name, module.Config
    for name, (module_name, _) in METHODS.items():
        yield f"finetune {name}", importlib.import_module(module_name).Config


@pytest.mark.parametrize(("name", "cls"), list(_stage_configs()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_stage_field_is_a_flag_with_its_docstring(name, cls):
    import dataclasses

    parser = configlib.build_parser(cls, prog=f"groundup {name}")
    by_dest = {action.dest: action for action in parser._actions}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or f.name not in by_dest:
            # a nested group: its own fields are flags (build_parser refuses a field it could not add)
            assert any(dest.startswith(f.name + ".") for dest in by_dest), (name, f.name)
            continue
        assert "_EMPTY_HELP_" not in (by_dest[f.name].help or ""), f"{name}: --{f.name} has no docstring"


def test_a_field_with_an_unresolvable_hint_is_refused():
    import dataclasses

    ns: dict = {}
    exec("from __future__ import annotations\nimport dataclasses\n"
         "@dataclasses.dataclass(kw_only=True)\nclass Config:\n    a: int = 1\n    b: NoSuchType | None = None\n", ns)
    assert dataclasses.fields(ns["Config"])[1].name == "b"
    with pytest.raises(TypeError, match="cannot become command-line options"):  # jsonargparse drops every field
        configlib.build_parser(ns["Config"])


def test_list_settings_take_a_single_value_too():
    from groundup.curate import run as curate

    assert configlib.parse(curate.Config, ["--input", "crawl/*.warc.gz"]).input == "crawl/*.warc.gz"
    assert configlib.parse(curate.Config, ["--input", "[a.jsonl, b/]"]).input == ["a.jsonl", "b/"]
