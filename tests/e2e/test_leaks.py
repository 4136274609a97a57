"""The secret scanner of the end-to-end leak test finds a value however it is embedded (no cluster needed)."""

from __future__ import annotations

import base64
import json

import pytest

from tests.e2e.leaks import leaks

VALUE = "hf_0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("before", range(4))
@pytest.mark.parametrize("after", range(3))
def test_a_value_is_found_plain_and_inside_any_base64_blob(before: int, after: int) -> None:
    payload = b"x" * before + VALUE.encode() + b"y" * after
    secret = {"apiVersion": "v1", "kind": "Secret", "data": {"token": base64.b64encode(payload).decode()}}
    outputs = [("secret", json.dumps(secret).encode()), ("log", b"token=" + payload), ("clean", b"token=<redacted>")]
    assert leaks(outputs, {"hub-token": VALUE}) == ["secret: hub-token", "log: hub-token"]


def test_a_value_too_short_to_look_for_is_refused() -> None:
    with pytest.raises(ValueError, match="too short"):
        leaks([("log", b"")], {"pin": "1234"})
