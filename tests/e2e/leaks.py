"""Find secret values in outputs: each value as written and base64-encoded (at every byte alignment, so a value
inside a larger encoded blob is found too)."""

from __future__ import annotations

import base64
from collections.abc import Iterable


def forms(value: str) -> list[bytes]:
    """The value's bytes, and the part of its base64 that does not depend on what comes before or after it when
    it starts 0, 1 or 2 bytes into a 3-byte group."""
    raw = value.encode()
    if len(raw) < 16:
        raise ValueError(f"a secret of {len(raw)} bytes is too short to look for: its base64 forms match anything")
    found = [raw]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        start = -(-shift * 4 // 3)  # the first character that no padding byte touches
        end = (len(raw) + shift) // 3 * 4  # the last full group
        found.append(encoded[start:end])
    return found


def leaks(outputs: Iterable[tuple[str, bytes]], secrets: dict[str, str]) -> list[str]:
    """`where: secret` for each output (a name and its bytes) holding any form of any secret (a name and its
    value)."""
    patterns = {name: forms(value) for name, value in secrets.items()}
    return [
        f"{where}: {name}"
        for where, data in outputs
        for name, needles in patterns.items()
        if any(needle in data for needle in needles)
    ]
