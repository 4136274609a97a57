"""Run one training worker in this process (rank 0 of 1, gloo, real DeepSpeed) and print, as the last line, how
often the pipeline's own code called a Tensor method that waits for the device, by `file:line method`:

    python -m tests.pipeline.train.sync_counter SPEC   (with torchrun's RANK, WORLD_SIZE, MASTER_* set)
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

SYNCING = ("item", "__float__", "__bool__", "tolist", "cpu")  # Tensor methods that wait for the device's queue


def count_syncs() -> Counter[str]:
    import torch

    import cpt_pipeline

    ours = str(Path(cpt_pipeline.__file__).parent)
    calls: Counter[str] = Counter()
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counting(self: Any, *args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(ours):
                calls[f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno} {_name}"] += 1
            return _original(self, *args, **kwargs)

        setattr(torch.Tensor, name, counting)
    return calls


def main(spec_path: str) -> int:
    from cpt_pipeline.__main__ import load_spec
    from cpt_pipeline.storage import Storage
    from cpt_pipeline.train.loop import run_worker

    spec = load_spec(spec_path)
    calls = count_syncs()
    code = run_worker(spec, Storage.from_spec(spec.storage))
    print(json.dumps({"exit": code, "calls": dict(calls)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
