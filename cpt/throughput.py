"""The throughput table shipped with the product (cpt/throughput.yaml): GPU types, their memory, and tokens/s
per GPU measured on named models, each with its source; a figure is scaled to another model by model FLOPs
per token (the same MFU as the source)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from cpt.memory import CUDA_CONTEXT_BYTES, ModelShape

TABLE = Path(__file__).with_name("throughput.yaml")
KIND_ORDER = ("bench", "paper", "published")  # which figure of a GPU type status.plan takes first
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # the GPU feature discovery label naming a node's GPU


def flops_per_token(params: int, layers: int, hidden: int, seq_len: int) -> float:
    """Model FLOPs per trained token: 6N for the matmuls plus 12 L d s for attention (recompute excluded)."""
    return 6.0 * params + 12.0 * layers * hidden * seq_len


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: float

    @property
    def usable_bytes(self) -> int:
        """What one training process may use: the memory less the CUDA context (cpt/memory.py)."""
        return int(self.memory_gb * 10**9) - CUDA_CONTEXT_BYTES

    def matches(self, product: str) -> bool:
        """Does a node's GPU product label (e.g. NVIDIA-A100-SXM4-80GB) name this type?"""
        words = {w.lower() for w in re.split(r"[-_ ]+", product)}
        return all(w.lower() in words for w in self.name.split("-"))


@dataclass(frozen=True)
class Figure:
    """Tokens/s per GPU of one model at one sequence length, and where the figure comes from."""

    gpu: str
    kind: str
    tokens_per_second: float
    model: str
    parameters: int
    layers: int
    hidden: int
    sequence_length: int
    source: str

    def scale(self, shape: ModelShape, seq_len: int) -> float:
        """The factor from this figure to `shape` at `seq_len`: the ratio of model FLOPs per token."""
        mine = flops_per_token(self.parameters, self.layers, self.hidden, self.sequence_length)
        return mine / flops_per_token(shape.params, shape.layers, shape.hidden, seq_len)


@dataclass(frozen=True)
class Table:
    gpus: tuple[Gpu, ...]
    figures: tuple[Figure, ...]

    def gpu(self, name: str) -> Gpu:
        """The GPU type of this name (case-insensitive); ValueError naming the known ones."""
        for gpu in self.gpus:
            if gpu.name.lower() == name.lower():
                return gpu
        raise ValueError(f"unknown GPU type {name!r}: the table ({TABLE.name}) has {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [gpu.name for gpu in self.gpus]

    def for_product(self, product: str) -> Gpu | None:
        """The GPU type a node's product label names, if any."""
        return next((gpu for gpu in self.gpus if gpu.matches(product)), None)

    def figures_for(self, gpu: str) -> list[Figure]:
        """The figures of a GPU type, the preferred (by kind) first."""
        mine = [f for f in self.figures if f.gpu == gpu]
        return sorted(mine, key=lambda f: KIND_ORDER.index(f.kind))


def parse_table(document: dict) -> Table:
    """A Table from the YAML document; ValueError naming the entry that is malformed."""
    gpus = tuple(Gpu(g["name"], float(g["memoryGB"])) for g in document["gpus"])
    names = {g.name for g in gpus}
    figures = []
    for number, entry in enumerate(document.get("figures") or []):
        figure = Figure(
            entry["gpu"],
            entry["kind"],
            float(entry["tokensPerSecond"]),
            entry["model"],
            int(entry["parameters"]),
            int(entry["layers"]),
            int(entry["hidden"]),
            int(entry["sequenceLength"]),
            " ".join(str(entry["source"]).split()),
        )
        if figure.gpu not in names or figure.kind not in KIND_ORDER or figure.tokens_per_second <= 0:
            raise ValueError(f"{TABLE.name}: figures[{number}]: gpu must be one of gpus, kind one of {KIND_ORDER}")
        figures.append(figure)
    return Table(gpus, tuple(figures))


@cache
def load_table() -> Table:
    """The shipped table; ValueError naming the file when it is malformed (one line)."""
    try:
        return parse_table(yaml.safe_load(TABLE.read_text(encoding="utf-8")))
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        message = " ".join(str(error).split())
        raise ValueError(message if message.startswith(TABLE.name) else f"{TABLE.name}: {message}") from error
