"""Each filter drops what it should, keeps what it should, and reports a reason."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpt.api.data import Filters, RepetitionFilter
from cpt_pipeline.preprocess.filters import (
    Features,
    FilterChain,
    c4_rules,
    fineweb_quality,
    gopher_quality,
    split_paragraphs,
)
from tests.pipeline.preprocess.helpers import document


def chain(**cfg: object) -> FilterChain:
    return FilterChain.from_spec(Filters.model_validate(cfg))


def test_min_lines_counts_non_empty_lines() -> None:
    f = chain()
    assert f.reason("only one line") == "min_lines"
    assert f.reason("one\n\n\ntwo\n   \n") == "min_lines"
    assert f.reason(document(1, lines=3)) is None
    assert chain(minLines=0).reason("x") is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "\n\n".join(["same paragraph here"] * 4 + ["a different one", "and another", "third"]),
            "dup_paragraph_fraction",
        ),
        ("\n".join(["repeated line of text"] * 5 + [f"unique line number {i}" for i in range(6)]), "dup_line_fraction"),
        (
            "\n".join(
                ["a long repeated line with many many characters in it"] * 2 + ["x y", "z w", "q r", "s t", "u v"]
            ),
            "dup_line_char_fraction",
        ),
        ("\n".join(" ".join(["the cat"] * 10 + ["sat on the mat", str(i)]) for i in range(3)), "top_2_gram"),
    ],
)
def test_gopher_repetition_rules(text: str, reason: str) -> None:
    assert chain(minLines=0).reason(text) == reason


def test_duplicated_ngrams_are_caught_after_the_top_ngram_rules() -> None:
    base = document(7, lines=4, words_per_line=20)
    repeated = base + "\n" + "\n".join(f"{line} extra{i}" for i, line in enumerate(base.splitlines()))
    reason = chain(minLines=0).reason(repeated)
    assert reason is not None and reason.startswith(("dup_", "top_"))
    relaxed = RepetitionFilter(topNgrams=[], dupLineCharFraction="1", dupLineFraction="1")
    only_ngrams = FilterChain.from_spec(Filters(minLines=0, repetition=relaxed))
    assert only_ngrams.reason(repeated).startswith("dup_")


def test_duplicated_ngram_chars_counts_each_covered_word_once() -> None:
    doc = Features("a b c d e a b c d e f")  # the 5-gram 'a b c d e' occurs twice
    assert doc.duplicated_ngram_chars(5) == 5  # the second occurrence's five one-letter words
    assert doc.top_ngram_chars(2) == 2 * 2  # 'ab' twice (the first most frequent 2-gram)
    assert Features("one two").duplicated_ngram_chars(5) == 0


def test_thresholds_come_from_the_spec() -> None:
    text = "\n".join(["repeated line"] * 2 + ["other line one", "other line two", "other three"])
    assert chain(minLines=0).reason(text) is not None
    lenient = {
        "dupLineFraction": "0.9",
        "dupLineCharFraction": "0.9",
        "dupParagraphCharFraction": "0.9",
        "topNgrams": [{"size": 2, "maxCharFraction": "0.9"}],
    }
    assert chain(minLines=0, repetition=lenient).reason(text) is None
    assert chain(minLines=0, repetition={"enabled": False}).reason(text) is None


def test_real_textbook_sections_are_mostly_kept(shared_data) -> None:
    f = chain()
    lines = (shared_data / "corpora" / "openstax_stem.jsonl").read_text().splitlines()[:300]
    reasons = [f.reason(json.loads(line)["text"]) for line in lines]
    kept = reasons.count(None)
    assert kept / len(reasons) > 0.9, {r: reasons.count(r) for r in set(reasons)}


def test_gopher_quality() -> None:
    good = " ".join(["The cell is the basic unit of life and that is what we study with care."] * 1) * 6
    good = good.replace("care.", "care today.", 1)
    assert gopher_quality(Features(good)) is None
    assert gopher_quality(Features("too short")) == "gopher_word_count"
    assert gopher_quality(Features(" ".join(["#tag"] * 60) + " the and")) == "gopher_symbol_ratio"
    assert gopher_quality(Features(" ".join(["zzzz"] * 60))) == "gopher_stop_words"


def test_fineweb_quality() -> None:
    assert fineweb_quality(Features(document(3, lines=8))) is None
    assert fineweb_quality(Features("\n".join(f"item {i}" for i in range(20)))) == "fineweb_line_punctuation"


def test_c4_rules() -> None:
    assert c4_rules(Features("Lorem ipsum dolor. Sit amet. Again.")) == "c4_lorem_ipsum"
    assert c4_rules(Features("function f() { return 1; }. Two. Three.")) == "c4_curly_bracket"
    assert c4_rules(Features("Just one sentence.")) == "c4_too_few_sentences"
    assert c4_rules(Features("One. Two! Three?")) is None


def test_optional_rule_sets_are_off_by_default() -> None:
    assert len(chain().checks) == 2
    assert len(chain(gopherQuality=True, finewebQuality=True, c4=True).checks) == 5


def test_the_top_ngram_of_a_tie_is_the_earliest_whatever_the_hash_seed() -> None:
    """Two 2-grams occur twice each; the rule measures the first to occur (as datatrove's most_common does).
    Before, the tie was broken by Python's per-process string hash: the same document was kept by one run
    (or worker) and dropped by another."""
    import subprocess
    import sys

    text = "a bb a bb ccc dddd ccc dddd"
    assert Features(text).top_ngram_chars(2) == 2 * len("abb")
    code = f"from cpt_pipeline.preprocess.filters import Features; print(Features({text!r}).top_ngram_chars(2))"
    values = {
        subprocess.run(
            [sys.executable, "-P", "-c", code], capture_output=True, text=True, env={"PYTHONHASHSEED": str(seed)}
        ).stdout.strip()
        for seed in range(12)
    }
    assert values == {"6"}


def test_ngram_hashes_extended_word_by_word_equal_the_direct_ones() -> None:
    from cpt_pipeline.preprocess.ngrams import ngram_hashes

    doc = Features(" ".join(f"w{i % 7}" for i in range(40)))
    direct = {n: ngram_hashes(doc._word_arrays()[0], n) for n in range(1, 11)}
    assert all(doc.ngram_hashes(n).tolist() == direct[n].tolist() for n in range(1, 11))


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="ab \n\t\r\u2028", max_size=40))
def test_paragraphs_are_those_of_the_regular_expression(text: str) -> None:
    assert split_paragraphs(text) == [p for p in re.split(r"\n{2,}", text.strip()) if p]
