"""Each rule on hand-made documents on both sides of its threshold; the n-gram statistics against plain loops."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from curate_helpers import english_text

from groundup.curate.filters.c4 import C4QualityFilter
from groundup.curate.filters.fineweb import FineWebQualityFilter
from groundup.curate.filters.gopher import (
    GopherQualityFilter,
    GopherRepetitionFilter,
    covered_characters,
    duplicate_ngram_characters,
    repeated_positions,
    repeats,
    split_lines,
    split_paragraphs,
    top_ngram_bound,
    top_ngram_characters,
)
from groundup.curate.filters.language import LanguageFilter, language_sample
from groundup.curate.filters.length import LengthFilter
from groundup.curate.filters.url import URLFilter
from groundup.curate.hashing import next_ngram_hashes, word_hashes
from groundup.curate.steps import Chain
from groundup.curate.text import PUNCTUATION, WORD_RE, Document, Words, split_words

PROSE = english_text(7, sentences=24)


def doc(text: str, url: str | None = None) -> Document:
    return Document(text, "test", 0, url)


def test_prose_passes_every_rule():
    for rule in (GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
                 FineWebQualityFilter(), LanguageFilter()):
        assert rule.filter(doc(PROSE)) == (True, ""), rule.name


# ---------------------------------------------------------------------------- n-gram statistics vs loops


def reference_duplicate_chars(words: list[str], n: int) -> int:
    """The reference walk, on n-grams as tuples (no separator ambiguity)."""
    seen, total, i = set(), 0, 0
    while i < len(words) - n + 1:
        gram = tuple(words[i:i + n])
        if gram in seen:
            total += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
            i += 1
    return total


def reference_top_chars(words: list[str], n: int) -> int:
    grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0
    gram, count = Counter(grams).most_common(1)[0]
    return len(gram) * count


@pytest.mark.parametrize("seed", range(6))
def test_ngram_statistics_match_plain_loops(seed):
    rng = random.Random(seed)
    vocab = [f"w{i}" * rng.randint(1, 3) for i in range(rng.choice((3, 8, 40)))]
    words = [rng.choice(vocab) for _ in range(rng.randint(5, 300))]
    hashes = word_hashes(words)
    import numpy as np

    lengths = np.array([len(w) for w in words])
    prefix = np.concatenate([[0], np.cumsum(lengths)])
    grams = hashes
    later_5 = None
    for n in range(2, 11):
        if n > len(words):
            break
        grams = next_ngram_hashes(grams, hashes, n)
        chars = prefix[n:] - prefix[:-n]
        top = reference_top_chars(words, n)
        assert top_ngram_characters(grams, chars + n - 1) == top
        assert top_ngram_bound(grams, chars + n - 1) >= top  # the bound that spares the sort
        positions, later = repeats(grams)
        assert positions.tolist() == repeated_positions(grams).tolist() == \
            [i for i in range(len(grams)) if (grams == grams[i]).sum() > 1]
        assert later.tolist() == [i for i in range(len(grams)) if grams[i] in grams[:i]]
        got = duplicate_ngram_characters(positions, grams[positions], chars[positions], n)
        assert got == reference_duplicate_chars(words, n)
        assert covered_characters(later, n, prefix) >= got  # the bound that spares the walk
        if later_5 is not None:  # the words covered by n-grams seen before shrink as n grows
            assert covered_characters(later_5, 5, prefix) >= got
        if n == 5:
            later_5 = later


# ---------------------------------------------------------------------------- Gopher repetition


def test_gopher_repetition_lines_and_paragraphs():
    rule = GopherRepetitionFilter()
    lines = PROSE.split("\n")
    # 2 repeated paragraphs of 6 (0.33 > 0.3) vs 1 of 6
    assert rule.filter(doc("\n\n".join(lines[:4] + lines[:2])))[1] == "dup_para_frac"
    assert rule.filter(doc("\n\n".join(lines[:5] + lines[:1])))[0] in (True, False)
    short = [f"Line number {i} is here." for i in range(10)]
    # 4 of 14 lines repeated (0.29, under 0.3) but they hold 0.29 of the characters (over 0.2)
    assert rule.filter(doc("\n".join(short + short[:4])))[1] == "dup_line_char_frac"
    assert rule.filter(doc("\n".join(short[:6] + short[:4])))[1] == "dup_line_frac"  # 4/10 = 0.4


def test_gopher_repetition_ngrams():
    rule = GopherRepetitionFilter()
    assert rule.filter(doc("cheap watches " * 60 + PROSE))[1] == "top_2_gram"  # 780 of 2,700 characters
    assert rule.filter(doc("buy cheap watches now " * 30 + PROSE))[1] == "top_3_gram"
    assert rule.filter(doc("cheap watches " * 5 + PROSE))[0]
    # a 12-word phrase repeated: caught by duplicated n-grams, not by the top n-gram rules
    phrase = "the river carries every golden lantern past the quiet harbor tonight again"
    text = PROSE + " " + " ".join([phrase] * 8)
    keep, reason = rule.filter(doc(text))
    assert not keep and reason.startswith("duplicated_")
    assert rule.filter(doc(PROSE + " " + phrase))[0]


def reference_repetition(words: list[str], size: int, top: dict, dup: dict) -> str:
    """Gopher's n-gram rules as plain loops, sizes in increasing order (top before duplicated)."""
    for n in sorted(set(top) | set(dup)):
        if n in top and reference_top_chars(words, n) / size > top[n]:
            return f"top_{n}_gram"
        if n in dup and reference_duplicate_chars(words, n) / size > dup[n]:
            return f"duplicated_{n}_n_grams"
    return ""


@pytest.mark.parametrize("sizes", [{}, {"top_n_grams": ((2, 0.1), (4, 0.1)), "dup_n_grams": ((3, 0.05), (5, 0.1))},
                                   {"top_n_grams": ((2, 0.05),), "dup_n_grams": ((4, 0.05), (6, 0.03), (9, 0.02))}])
def test_gopher_repetition_ngram_rules_match_plain_loops(sizes):
    """The filter (bounds, early exits, arrays shrunk to repeated positions) decides as the plain loops do,
    including duplicated-n-gram sizes below the top-n-gram sizes."""
    rule = GopherRepetitionFilter(dup_line_frac=None, dup_para_frac=None, dup_line_char_frac=None,
                                  dup_para_char_frac=None, **sizes)
    top, dup = dict(rule.top_n_grams), dict(rule.dup_n_grams)
    rng = random.Random(11)
    reasons = Counter()
    for seed in range(150):
        words = english_text(seed, sentences=rng.randint(2, 20)).split(" ")
        kind = seed % 4
        if kind == 1:  # a phrase repeated
            words += words[:rng.randint(2, 12)] * rng.randint(1, 12)
        elif kind == 2:  # a small vocabulary
            words = [rng.choice(words[:rng.randint(3, 25)]) for _ in range(rng.randint(10, 400))]
        elif kind == 3:  # a passage copied once
            i = rng.randrange(len(words))
            words += words[i:i + rng.randint(5, 60)]
        text = " ".join(words)
        expected = reference_repetition(split_words(text), len(text), top, dup)
        got = rule.filter(doc(text))
        assert got == (expected == "", expected), seed
        reasons[expected] += 1
    assert reasons[""] > 10 and len(reasons) >= 4  # both sides of the thresholds were exercised


# ---------------------------------------------------------------------------- Gopher quality


def test_gopher_quality_thresholds():
    rule = GopherQualityFilter()
    words50 = " ".join(["the cat and the dog"] * 10)
    assert rule.filter(doc(words50 + "."))[0]
    assert rule.filter(doc(" ".join(["the cat and the dog"] * 9) + " of the cat."))[1] == "gopher_short_doc"
    assert rule.filter(doc(" ".join(["a to of it"] * 20)))[1] == "gopher_below_avg_threshold"
    assert rule.filter(doc(" ".join(["extraordinarily"] * 60)))[1] == "gopher_above_avg_threshold"
    assert rule.filter(doc(PROSE + " #tag" * 40))[1] == "gopher_too_many_hashes"
    assert rule.filter(doc(PROSE + " wait..." * 40))[1] == "gopher_too_many_ellipsis"
    bullets = "\n".join(f"- item {w} of the list and more" for w in PROSE.split()[:60])
    assert rule.filter(doc(bullets))[1] == "gopher_too_many_bullets"
    ellipses = "\n".join(" ".join(PROSE.split()[i:i + 12]) + "..." for i in range(0, 200, 12))
    assert rule.filter(doc(ellipses))[1] in ("gopher_too_many_end_ellipsis", "gopher_too_many_ellipsis")
    numbers = PROSE + " " + " ".join(str(i) for i in range(600))
    assert rule.filter(doc(numbers))[1] == "gopher_below_alpha_threshold"
    no_stop = " ".join(["green cats eat fish quickly"] * 12)
    assert rule.filter(doc(no_stop))[1] == "gopher_enough_stop_words"


# ---------------------------------------------------------------------------- C4


def test_c4_rules():
    rule = C4QualityFilter(filter_no_terminal_punct=False)
    assert rule.filter(doc(PROSE + "\nLorem ipsum dolor sit amet."))[1] == "lorem_ipsum"
    assert rule.filter(doc(PROSE + "\nThe function f { returns } nothing."))[1] == "curly_bracket"
    assert rule.filter(doc("One sentence here. Two sentences here.\nThree more words."))[1] == "too_few_sentences"
    d = doc(PROSE + "\nPlease enable JavaScript to view it.\nThis site uses cookies to work.\nMenu\n  ")
    assert rule.filter(d) == (True, "")
    assert "JavaScript" not in d.text and "cookies" not in d.text and "Menu" not in d.text
    strict = C4QualityFilter(filter_no_terminal_punct=True)
    d = doc(PROSE + "\nA line without an end mark")
    assert strict.filter(d)[0] and "without an end mark" not in d.text


# ---------------------------------------------------------------------------- FineWeb


def test_fineweb_rules():
    rule = FineWebQualityFilter()
    lines = PROSE.split("\n")
    no_punct = "\n".join(line.rstrip(".?!") + " and more words here" for line in lines)
    assert rule.filter(doc(no_punct))[1] == "line_punct_ratio"
    short = "\n".join(["Short line here."] * 1 + [f"Item {i}." for i in range(20)] + lines)
    assert rule.filter(doc(short))[1] == "short_line_ratio"
    # about 5% of characters in a repeated line: kept at the paper's 0.1, dropped at datatrove's 0.01
    repeated = PROSE + "\n" + lines[-1][:60] + ".\n" + lines[-1][:60] + "."
    assert rule.filter(doc(repeated))[0]
    assert FineWebQualityFilter(char_duplicates_ratio=0.01).filter(doc(repeated))[1] == "char_dup_ratio"
    listy = "\n".join(f"Word{i} ok." for i in range(40))  # 39 newlines for 120 words
    assert FineWebQualityFilter(short_line_thr=1.0).filter(doc(listy))[1] == "list_ratio"


# ---------------------------------------------------------------------------- length, URL, language


def test_length_filter():
    rule = LengthFilter(min_chars=10, max_chars=20)
    assert rule.filter(doc("x" * 9))[1] == "too_short"
    assert rule.filter(doc("x" * 15))[0]
    assert rule.filter(doc("x" * 21))[1] == "too_long"


def test_url_filter(tmp_path):
    extra = tmp_path / "block.txt"
    extra.write_text("# mine\nbad-example.org\nhttps://good.org/one-page\nword:lottery\n")
    rule = URLFilter(files=[extra])
    assert rule.filter(doc("x", "https://bad-example.org/a"))[1] == "blocked_domain"
    assert rule.filter(doc("x", "https://www.news.bad-example.org/a"))[1] == "blocked_domain"
    assert rule.filter(doc("x", "https://notbad-example.org/a"))[0]
    assert rule.filter(doc("x", "https://good.org/one-page"))[1] == "blocked_url"
    assert rule.filter(doc("x", "https://good.org/other"))[0]
    assert rule.filter(doc("x", "https://win-the-lottery.net/"))[1] == "blocked_word"
    assert rule.filter(doc("x", None))[0]
    shipped = URLFilter()
    assert shipped.filter(doc("x", "https://www.pornhub.com/x"))[1] == "blocked_domain"
    assert shipped.filter(doc("x", "https://en.wikipedia.org/wiki/River"))[0]


def test_language_filter_offline():
    rule = LanguageFilter(["en"], threshold=0.65)
    d = doc(PROSE)
    assert rule.filter(d) == (True, "") and d.meta["language"] == "en" and d.meta["language_score"] > 0.65
    french = doc("Le petit village se trouve au bord de la rivière, et les habitants aiment se promener "
                 "le long des champs pendant les longues soirées d'été.")
    assert rule.filter(french)[1] == "other_language" and french.meta["language"] == "fr"
    assert LanguageFilter(["en"], threshold=1.01).filter(doc(PROSE))[1] == "low_language_score"


def test_language_sample_is_bounded_and_spread():
    short = "one line\nand another"
    assert language_sample(short, 3000) == "one line and another"  # short texts whole, newlines as spaces
    long = "\n".join(f"line{i} " + "word " * 20 for i in range(400))
    sample = language_sample(long, 3000)
    assert "\n" not in sample and len(sample) <= 3000 + 8
    assert "line0 " in sample and "line399" not in sample  # slices across the page, not its top only
    assert any(f"line{i} " in sample for i in range(340, 360))
    assert language_sample(long, None) == long.replace("\n", " ")
    en = doc(PROSE * 20)  # a long page: identified from its sample
    assert LanguageFilter(["en"]).filter(en)[0] and LanguageFilter(["en"], max_chars=None).filter(en)[0]


def test_line_and_paragraph_splits_match_the_regex_splits():
    import re

    rng = random.Random(3)
    for _ in range(3000):
        text = "".join(rng.choice(["\n", "a", " ", "b\n", "\n\n", "\n\n\n"]) for _ in range(rng.randint(0, 12)))
        assert split_lines(text) == re.split(r"\n+", text)
        assert split_paragraphs(text) == re.split(r"\n{2,}", text.strip())


def test_chain_counts_every_step():
    chain = Chain([LengthFilter(min_chars=100), GopherQualityFilter()])
    docs = [doc(PROSE), doc("short"), doc(" ".join(["green cats eat fish"] * 30))]
    kept = list(chain.run(docs))
    assert kept == [docs[0]]
    stats = chain.stats.as_dict()
    assert stats["length"]["documents_in"] == 3 and stats["length"]["dropped"] == {"too_short": 1}
    assert stats["gopher_quality"]["documents_out"] == 1
    assert stats["gopher_quality"]["dropped"] == {"gopher_enough_stop_words": 1}
    assert stats["gopher_quality"]["bytes_out"] == len(PROSE.encode())


def test_chain_in_batches_matches_one_document_at_a_time():
    """Chain.run (every step over a batch in turn) keeps, rewrites, counts and reports drops exactly as
    Chain.process one document at a time, in the same order."""
    from groundup.curate.pii import PIIRedactor

    def steps():
        return [LengthFilter(min_chars=200), GopherRepetitionFilter(), GopherQualityFilter(),
                C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter(), PIIRedactor(["email"])]

    rng = random.Random(2)
    texts = []
    for seed in range(60):
        text = english_text(seed, sentences=rng.randint(1, 20))
        kind = seed % 5
        if kind == 1:
            text += "\nWrite to someone@example.org today, please."
        elif kind == 2:
            text = (text.split("\n")[0] + "\n") * 4
        elif kind == 3:
            text += "\n{ curly }"
        texts.append(text)

    def drops_of(sink):
        return lambda doc, step, reason: sink.append((doc.text, step, reason))

    single, single_drops = Chain(steps()), []
    kept = [d.text for d in map(Document, texts) if single.process(d, drops_of(single_drops))]
    reference = {name: {k: v for k, v in st.items() if k != "seconds"} for name, st in single.stats.as_dict().items()}
    assert 0 < len(kept) < len(texts) and len({r for _, _, r in single_drops}) >= 3
    for batch in (1, 7, 64):
        chain, drops = Chain(steps(), batch_documents=batch), []
        assert [d.text for d in chain.run(map(Document, texts), drops_of(drops))] == kept
        assert drops == single_drops
        assert {name: {k: v for k, v in st.items() if k != "seconds"}
                for name, st in chain.stats.as_dict().items()} == reference


def test_words_split_punctuation():
    assert split_words("Hello, world... It's 3.14 (really)!") == \
        ["Hello", ",", "world", "...", "It's", "3.14", "(", "really", ")", "!"]


def test_word_arrays_match_the_word_regex():
    """Words (numpy and character tables; the regex beyond the Basic Multilingual Plane): the same words,
    lengths, equal hashes for equal words only, and the counts the quality rules take from them."""
    import re

    symbols = frozenset(PUNCTUATION) | {"..."}
    letter = re.compile(r"[^\W\d_]")
    stop = frozenset(("the", "of", "and", "with"))
    rng = random.Random(8)
    ascii_pieces = [*"ab _.,'-#!$", "...", "..", "....", "\n", "\t", "\r", "\x1c", "\x0b", "\x00", "3", "the", " of ",
                    "and", "with"]
    other_pieces = ["\u00e9", "\u00bd", "\u00b2", "\u2026", "\u2019", "\u4e2d", "\u3000", "\u2028", "\U0001f600",
                    "\uff11", "\ud800"]
    for i in range(9000):
        pool = (ascii_pieces, ascii_pieces + other_pieces, [*ascii_pieces, None])[i % 3]
        # None: any character of the Basic Multilingual Plane (every script, marks, digits, surrogates)
        text = "".join(rng.choice(pool) or chr(rng.randrange(0x10000)) for _ in range(rng.randint(0, 40)))
        expected = WORD_RE.findall(text)
        for words in (Words(text), Words(text, expected)):
            assert words.strings() == expected and words.lengths.tolist() == [len(w) for w in expected], repr(text)
            seen: dict[int, str] = {}
            assert all(seen.setdefault(h, w) == w for h, w in zip(words.hashes.tolist(), expected, strict=True))
            assert len(seen) == len(set(expected))
            assert int(words.symbols().sum()) == sum(w in symbols for w in expected), repr(text)
            assert words.with_letter() == sum(bool(letter.search(w)) for w in expected), repr(text)
            assert words.count_distinct(stop) == len(stop.intersection(expected)), repr(text)
    assert Document("the cat, the dog...").word_arrays.strings() == ["the", "cat", ",", "the", "dog", "..."]


def test_fast_word_split_matches_the_word_regex():
    """split_words (whitespace taken into the match, an ASCII-only pattern for ASCII text) finds WORD_RE's words."""
    rng = random.Random(4)
    pieces = [*"ab _.,'-", "...", "\u2019", "\n", "\t", "\x1c", "\x0b", "3", "\u00e9", "\u00bd", "\u00b2", "\u2026",
              "\u4e2d", "\u3000", "\u2028", "\U0001f600", "don't", "e.g.", "1,000"]
    for _ in range(4000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        assert split_words(text) == WORD_RE.findall(text), repr(text)
