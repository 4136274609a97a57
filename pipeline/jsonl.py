"""JSON lines split the way JSON lines are written: on "\\n" only.

`str.splitlines()` also breaks on U+0085, U+2028 and U+2029 (and a few control characters). JSON keeps the
first three raw inside strings (`json.dumps(..., ensure_ascii=False)` writes them so, web text and real
benchmark files such as the MMLU test set contain them), so splitlines() cuts such a record in two. Every
reader of JSON-lines text in the product goes through `lines()` (tests/test_jsonl_readers.py guards this).
"""

from __future__ import annotations

import json
from typing import Any


def lines(data: str | bytes) -> list[str]:
    """The non-blank lines of JSON-lines text (bytes are UTF-8); a trailing "\\r" is left to json.loads."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return [line for line in text.split("\n") if line.strip()]


def records(data: str | bytes) -> list[Any]:
    """The decoded records of JSON-lines text, blank lines skipped."""
    return [json.loads(line) for line in lines(data)]
