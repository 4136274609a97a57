"""The per-word loop in C (`_words.c`) against its numpy twin, the oracle: the same words, hashes, n-gram statistics,
filter decisions and MinHash signatures, bit for bit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpt.api.data import Filters, MinHash
from cpt_pipeline.preprocess import words
from cpt_pipeline.preprocess.dedup import MinHasher
from cpt_pipeline.preprocess.filters import Features, FilterChain

SPACES = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2005\u200a\u2028\u2029\u202f\u205f\u3000"
# words from a small vocabulary (so n-grams repeat), mixed scripts, a lone surrogate, and every kind of space
TEXT = st.lists(
    st.one_of(
        st.sampled_from(["the", "cat", "İstanbul", "ΣΑΣ", "x", "é", "\ud800", "中文", "a-b", "#"]),
        st.text(alphabet=SPACES, min_size=1, max_size=3),
    ),
    max_size=80,
).map("".join)


def _native() -> object:
    if words.NATIVE is None:
        pytest.fail("the C extension cpt_pipeline.preprocess._words is not built (pip install -e . needs a C compiler)")
    return words.NATIVE


def _statistics(text: str) -> list[int]:
    doc = Features(text)
    return [doc.top_ngram_chars(n) for n in range(1, 5)] + [doc.duplicated_ngram_chars(n) for n in range(1, 11)]


def _both(monkeypatch: pytest.MonkeyPatch, compute: object, text: str) -> tuple[object, object]:
    native = _native()
    with monkeypatch.context() as patch:
        patch.setattr(words, "NATIVE", None)
        twin = compute(text)  # type: ignore[operator]
    monkeypatch.setattr(words, "NATIVE", native)
    return compute(text), twin  # type: ignore[operator]


def test_the_c_extension_is_built_where_the_tests_run() -> None:
    """CI and the worker image have a compiler: a missing extension is a failure here, not a slow silent fallback."""
    if os.environ.get("CPT_NATIVE_WORDS") == "0":
        pytest.fail("CPT_NATIVE_WORDS=0 is set: the tests compare the C extension with its numpy twin")
    _native()
    assert words.IMPLEMENTATION == "native (C)"


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_words_are_those_of_str_split_with_equal_hashes_in_c_and_numpy(text: str) -> None:
    hashes, lengths = words.numpy_words(text)
    assert lengths.tolist() == [len(w) for w in text.split()]
    native_hashes, native_lengths = _native().words(text)  # type: ignore[attr-defined]
    assert np.frombuffer(native_hashes, dtype=np.uint64).tolist() == hashes.tolist()
    assert np.frombuffer(native_lengths, dtype=np.int64).tolist() == lengths.tolist()


def test_a_word_hashes_the_same_wherever_it_stands_and_words_differing_in_one_character_differ() -> None:
    hashes, _ = words.numpy_words("cat dog\u3000cat cats Cat")
    assert hashes[0] == hashes[2]
    assert len(set(hashes[[0, 1, 3, 4]].tolist())) == 4
    assert words.numpy_words("")[0].size == 0 and words.numpy_words(" \u2028 ")[0].size == 0


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_ngram_statistics_and_signatures_are_equal_in_c_and_numpy(text: str) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        native, twin = _both(monkeypatch, _statistics, text)
        assert native == twin
        hasher = MinHasher(MinHash(enabled=True))
        native, twin = _both(monkeypatch, hasher.signature, text)
        assert native.tolist() == twin.tolist()  # type: ignore[attr-defined]


def test_every_decision_on_the_shared_corpora_is_equal_in_c_and_numpy(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [
        json.loads(line)["text"]
        for name in ("openstax_stem.jsonl", "stories260k_samples.jsonl")
        for line in (shared_data / "corpora" / name).read_text(encoding="utf-8").split("\n")[:600]
        if line.strip()
    ]
    chain = FilterChain.from_spec(Filters())
    hasher = MinHasher(MinHash(enabled=True))

    def decide(text: str) -> tuple[str | None, list[int], list[int]]:
        return chain.reason(text), _statistics(text), hasher.signature(text).tolist()

    differing = [i for i, text in enumerate(texts) if len(set(map(repr, _both(monkeypatch, decide, text)))) != 1]
    assert len(texts) > 500
    assert differing == []
    reasons = {chain.reason(text) for text in texts}
    assert None in reasons and len(reasons) > 1, reasons  # the corpora exercise both outcomes


def _thue_morse(length: int) -> str:
    return "".join("ab"[bin(i).count("1") % 2] for i in range(length))


def test_thue_morse_words_do_not_collide() -> None:
    """A plain polynomial hash modulo 2^64 gives these two 1024-character words one hash, for any odd base."""
    word = _thue_morse(1024)
    other = word.translate(str.maketrans("ab", "ba"))
    for hashes in (words.numpy_words(f"{word} {other}")[0], np.frombuffer(_native().words(f"{word} {other}")[0], "u8")):  # type: ignore[attr-defined]
        assert hashes[0] != hashes[1]
    doc = Features(" ".join([word, other] * 3))
    assert doc.top_ngram_chars(1) == 3 * 1024  # three occurrences of one word, not six of "one"


def test_the_c_functions_refuse_arguments_that_would_read_past_their_buffers() -> None:
    native = _native()
    hasher = MinHasher(MinHash(enabled=True))
    with pytest.raises(ValueError, match="powers at least ngram long"):
        native.signature("a b c", 2**61, hasher._a, hasher._b, hasher._powers)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="equally long"):
        native.top_ngram_chars(b"\0" * 16, b"\0" * 8, 1)  # type: ignore[attr-defined]


def test_the_word_hash_is_the_one_its_name_says() -> None:
    """Workers record words.WORD_HASH, and the reduce prepares again those whose hash differs: a change to the hash
    that keeps the name would let two versions' signatures meet. Change the hash, change WORD_HASH, then these."""
    assert words.WORD_HASH == "position-mixed code-point polynomial, SplitMix64 (2026-12)"
    assert words.numpy_words("cat é")[0].tolist() == [4136770493763297491, 4312018044216140067]
    native = _native()
    assert native.WORD_HASH == words.WORD_HASH  # type: ignore[attr-defined]
    assert np.frombuffer(native.words("cat é")[0], "u8").tolist() == [4136770493763297491, 4312018044216140067]  # type: ignore[attr-defined]
