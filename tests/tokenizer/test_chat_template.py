import pytest

from groundup.tokenizer.chat import (
    DEFAULT_CHAT_TEMPLATE,
    ChatFormatError,
    read_chat_template,
    render_chat,
    write_chat_template,
)


def test_chatml_rendering_and_generation_prompt():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = render_chat(msgs, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert not render_chat(msgs).endswith("assistant\n")


def test_matches_transformers_rendering():
    pytest.importorskip("transformers")
    from transformers.utils.chat_template_utils import render_jinja_template

    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    theirs, _ = render_jinja_template(conversations=[msgs], chat_template=DEFAULT_CHAT_TEMPLATE,
                                      add_generation_prompt=True)
    assert theirs[0] == render_chat(msgs, add_generation_prompt=True)


@pytest.mark.parametrize("bad, needle", [
    ([], "empty"),
    ("hello", "list of messages"),
    ([{"role": "user"}], "missing key 'content'"),
    ([{"role": "robot", "content": "x"}], "unknown role 'robot'"),
    ([{"role": "user", "content": 3}], "must be a string"),
])
def test_bad_conversations_are_named(bad, needle):
    with pytest.raises(ChatFormatError, match=needle):
        render_chat(bad)


def test_model_dir_template_round_trip(tmp_path):
    assert read_chat_template(tmp_path) == DEFAULT_CHAT_TEMPLATE
    custom = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    write_chat_template(tmp_path, custom)
    assert read_chat_template(tmp_path) == custom
    assert render_chat([{"role": "user", "content": "x"}], read_chat_template(tmp_path)) == "[user] x\n"
