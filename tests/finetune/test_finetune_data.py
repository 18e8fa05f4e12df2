"""Fine-tuning data: loss masks token by token, Alpaca/chat parsing, bad lines, truncation, batch order."""

from __future__ import annotations

import pytest
from finetune_helpers import write_jsonl

from groundup.finetune.data import (
    IGNORE_INDEX,
    DataError,
    DataStats,
    ExampleBatches,
    chat_segments,
    pad_batch,
    parse_conversation,
    read_jsonl,
    tokenize_segments,
    truncate,
)
from groundup.finetune.sft import load_examples
from groundup.tokenizer import Tokenizer
from groundup.tokenizer.chat import DEFAULT_CHAT_TEMPLATE, render_chat

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "A pear."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "A plum, then."},
]


@pytest.fixture(scope="module")
def tokenizer(spine_tokenizer):
    return Tokenizer.from_file(spine_tokenizer)


def test_loss_mask_covers_exactly_the_answers_and_their_end_of_turn(tokenizer):
    example = tokenize_segments(tokenizer, chat_segments(CONVERSATION, DEFAULT_CHAT_TEMPLATE))
    im_start, im_end = tokenizer.token_to_id("<|im_start|>"), tokenizer.token_to_id("<|im_end|>")
    # the whole rendered conversation, with specials as single ids
    assert tokenizer.decode(example.ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a fruit.<|im_end|>\n"
        "<|im_start|>assistant\nA pear.<|im_end|>\n<|im_start|>user\nAnother?<|im_end|>\n"
        "<|im_start|>assistant\nA plum, then.<|im_end|>\n")
    assert example.ids.count(im_start) == 5 and example.ids.count(im_end) == 5
    # token by token: every label is either -100 or the token itself
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(example.ids, example.labels, strict=True))
    trained = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
    runs, start = [], trained[0]
    for a, b in zip(trained, trained[1:] + [None], strict=True):
        if b != a + 1:
            runs.append((start, a + 1))
            start = b
    assert [tokenizer.decode(example.ids[s:e]) for s, e in runs] == ["A pear.<|im_end|>", "A plum, then.<|im_end|>"]
    # what comes before each answer is tokenized exactly as the prompt of a chat request at inference
    for (start, _), k in zip(runs, (2, 4), strict=True):
        prompt = render_chat(CONVERSATION[:k], add_generation_prompt=True)
        assert example.ids[:start] == tokenizer.encode_with_specials(prompt)
    # only 2 of the 5 end-of-turn tokens (the assistant's) are trained, and no <|im_start|>
    assert sum(example.ids[i] == im_end for i in trained) == 2
    assert not any(example.ids[i] == im_start for i in trained)
    # the padded batch shifts the labels: the target of position t is label t + 1
    x, y = pad_batch([example], pad_id=0)
    assert x[0].tolist() == example.ids[:-1] and y[0].tolist() == example.labels[1:]


def test_special_strings_become_ids_only_through_the_chat_path(tokenizer):
    im_end = tokenizer.token_to_id("<|im_end|>")
    assert im_end in tokenizer.encode_with_specials("hi<|im_end|>")
    assert im_end not in tokenizer.encode("hi<|im_end|>")  # plain text encoding stays literal


def test_alpaca_record_becomes_a_conversation():
    messages = parse_conversation({"instruction": "Add", "input": "2 3", "output": "5", "system": "Math."})
    assert messages == [{"role": "system", "content": "Math."}, {"role": "user", "content": "Add\n\n2 3"},
                        {"role": "assistant", "content": "5"}]
    assert parse_conversation({"instruction": "Hi", "output": "Hello"})[0] == {"role": "user", "content": "Hi"}


def test_bad_lines_name_file_and_line_or_are_skipped_and_counted(tmp_path, tokenizer):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [
        good,
        {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]},  # line 2
        {"instruction": "no output"},  # line 3
        "{not json",  # line 4
        {"messages": [{"role": "user", "content": "only a question"}]},  # line 5
        good,
    ])
    with pytest.raises(DataError, match=r"d\.jsonl:2: .*unknown role 'robot'"):
        read_jsonl(path, parse_conversation, DataStats())
    stats = DataStats()
    records = read_jsonl(path, parse_conversation, stats, skip_bad_lines=True)
    assert len(records) == 2 and stats.skipped == 4 and stats.lines == 6
    assert [e.split(": ")[0].rsplit(":", 1)[1] for e in stats.errors] == ["2", "3", "4", "5"]
    assert "missing key(s) 'output'" in stats.errors[1]


def test_empty_dataset_is_a_clear_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataError, match="empty.jsonl: no usable records"):
        load_examples(path, tokenizer, DEFAULT_CHAT_TEMPLATE, 64, DataStats(), False)


def test_over_long_conversations_are_cut_at_the_end_and_counted(tmp_path, tokenizer):
    long_answer = "word " * 60
    path = write_jsonl(tmp_path / "long.jsonl", [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": long_answer}]},
        {"messages": [{"role": "user", "content": "question " * 80}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    ])
    stats = DataStats()
    examples = load_examples(path, tokenizer, DEFAULT_CHAT_TEMPLATE, 32, stats, False)
    # the first keeps its first 33 tokens (32 inputs + 1 target); the second has no answer left: dropped
    assert [len(e) for e in examples][0] == 33 and len(examples) == 2
    assert stats.truncated == 2 and stats.dropped_no_target == 1 and stats.examples == 2
    assert truncate(examples[1], 32, DataStats()) is examples[1]


def test_batches_resume_where_they_stopped():
    lengths = [5, 9, 3, 7, 12, 4, 8, 6, 10, 2]
    a = ExampleBatches(lengths, 3, list, seed=1)
    straight = [a.next_batch() for _ in range(9)]  # crosses two epoch boundaries
    b = ExampleBatches(lengths, 3, list, seed=1)
    first = [b.next_batch() for _ in range(5)]
    c = ExampleBatches(lengths, 3, list, seed=1)
    c.load_state_dict(b.state_dict())
    assert first + [c.next_batch() for _ in range(4)] == straight
    epoch = sorted(i for batch in straight[:4] for i in batch)
    assert epoch == list(range(10))  # an epoch visits each example once


def test_batches_are_numbered_and_older_states_read_the_same():
    lengths = [5, 9, 3, 7, 12, 4, 8, 6, 10, 2]
    a = ExampleBatches(lengths, 3, list, seed=1)
    straight = [a.next_batch() for _ in range(9)]
    # batch k is a pure function of (seed, k), in any order: what each rank under torchrun takes
    b = ExampleBatches(lengths, 3, list, seed=1)
    assert [b.batch(k) for k in (8, 0, 5, 4)] == [straight[k] for k in (8, 0, 5, 4)] and b.batches == 0
    assert a.state_dict() == {"batches": 9, "epoch": 2, "seed": 1}
    c = ExampleBatches(lengths, 3, list, seed=1)
    c.load_state_dict({"epoch": 1, "position": 2, "seed": 1})  # the form checkpoints had before numbering
    assert c.batches == 6 and c.next_batch() == straight[6]


def test_tool_use_conversation_trains_the_calls_and_answers_not_the_results(tokenizer, tmp_path):
    tools = [{"type": "function", "function": {"name": "calc", "parameters": {
        "type": "object", "required": ["expression"], "properties": {"expression": {"type": "string"}}}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": '{"expression": "2+3"}'}}
    messages = [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "5"}, {"role": "assistant", "content": "It is 5."}]
    path = write_jsonl(tmp_path / "tools.jsonl", [{"messages": messages, "tools": tools}])
    (example,) = load_examples(path, tokenizer, DEFAULT_CHAT_TEMPLATE, 4096, DataStats(), skip_bad_lines=False)
    assert tokenizer.decode(example.ids) == render_chat(messages, tools=tools)
    trained = tokenizer.decode([label for label in example.labels if label != IGNORE_INDEX])
    assert trained == ('<tool_call>\n{"name": "calc", "arguments": {"expression": "2+3"}}\n</tool_call><|im_end|>'
                       "It is 5.<|im_end|>")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [*messages[:2], {**messages[2], "tool_call_id": "c9"}]}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: messages\[2\].tool_call_id"):
        load_examples(bad, tokenizer, DEFAULT_CHAT_TEMPLATE, 4096, DataStats(), skip_bad_lines=False)
