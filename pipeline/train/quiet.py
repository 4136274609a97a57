"""Known third-party warning floods, silenced at their source, one pattern each, so a real warning still shows.

DeepSpeed calls torch collectives that torch 2.13 deprecates; torch warns on every call (a FutureWarning per
all-gather and reduce-scatter: hundreds per run on the terminal and in `kubectl logs`).
"""

from __future__ import annotations

import warnings

FLOODS = ((FutureWarning, r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"),)


def silence_known_floods() -> None:
    for category, message in FLOODS:
        warnings.filterwarnings("ignore", message=message, category=category)
