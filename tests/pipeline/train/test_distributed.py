"""The process-group choices a GPU run makes, checked on CPU: every collective the loop issues is served."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpt_pipeline.train.distributed import LOOP_COLLECTIVE_DEVICE, backend_for_device, process_group_backend


def test_a_gpu_run_has_a_backend_for_the_loops_cpu_tensors_and_for_deepspeeds_cuda_tensors() -> None:
    backend = process_group_backend(cuda=True)
    assert backend_for_device(backend, LOOP_COLLECTIVE_DEVICE) == "gloo"
    assert backend_for_device(backend, "cuda") == "nccl"
    # plain NCCL (what the loop used before) serves no CPU tensor: the first step's all-reduce raised
    assert backend_for_device("nccl", LOOP_COLLECTIVE_DEVICE) is None


def test_a_cpu_run_uses_gloo() -> None:
    assert process_group_backend(cuda=False) == "gloo"
    assert backend_for_device("gloo", LOOP_COLLECTIVE_DEVICE) == "gloo"


def test_the_loops_collectives_run_on_a_per_device_backend_string(tmp_path: Path) -> None:
    """torch accepts the `device:backend` form the GPU path passes, and the loop's reductions (sum of the
    loss, MAX of the stop flag, the sample-id gather) work on CPU tensors under it."""
    import torch
    import torch.distributed as dist

    cpu_part = ",".join(p for p in process_group_backend(cuda=True).split(",") if p.startswith("cpu:"))
    assert cpu_part == "cpu:gloo"
    dist.init_process_group(cpu_part, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        total = torch.tensor([2.5, 1.0], dtype=torch.float64, device=LOOP_COLLECTIVE_DEVICE)
        flags = torch.tensor([15], dtype=torch.int64, device=LOOP_COLLECTIVE_DEVICE)
        dist.all_reduce(total)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        gathered: list[object] = [None]
        dist.all_gather_object(gathered, ["domain/a/1"])
        assert total.tolist() == [2.5, 1.0] and flags.item() == 15 and gathered == [["domain/a/1"]]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("backend", "device"), [("cpu:gloo,cuda:nccl", "xla"), ("mystery", "cpu")])
def test_unknown_devices_and_backends_are_not_served(backend: str, device: str) -> None:
    assert backend_for_device(backend, device) is None
