"""Load ContinuedPretrain manifests and turn pydantic errors into messages with field paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cpt import KIND
from cpt.api import ContinuedPretrain
from cpt.kube_yaml import load_all


@dataclass(frozen=True)
class Problem:
    """One validation failure: where (file, document, field path) and what."""

    source: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.path}: {self.message}" if self.path else f"{self.source}: {self.message}"


def field_path(loc: tuple[int | str, ...]) -> str:
    """('spec', 'data', 'sources', 0, 'uri') -> 'spec.data.sources[0].uri'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def problems_from_error(error: ValidationError, source: str) -> list[Problem]:
    """One Problem per pydantic error, with rule errors pointing at the field they are about."""
    problems = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        extra = (err.get("ctx") or {}).get("field") if err["type"] == "rule" else None
        path = field_path(loc + tuple(extra.split("."))) if extra else field_path(loc)
        message = err["msg"].removeprefix("Value error, ")
        problems.append(Problem(source, path, message))
    return problems


def validate_object(obj: Any, source: str) -> tuple[ContinuedPretrain | None, list[Problem]]:
    """Validate one parsed document; returns the model or the problems."""
    if not isinstance(obj, dict):
        return None, [Problem(source, "", f"expected a mapping (a {KIND} resource), got {type(obj).__name__}")]
    try:
        return ContinuedPretrain.model_validate(obj), []
    except ValidationError as error:
        return None, problems_from_error(error, source)


def load_documents(path: Path) -> list[tuple[str, Any]]:
    """Every YAML document of a file, read as kubectl reads it, labelled 'file' or 'file#N' if several."""
    try:
        documents = [d for d in load_all(path.read_text(encoding="utf-8")) if d is not None]
    except OSError as error:
        raise ValueError(f"{path}: cannot read: {error.strerror or error}") from error
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from error
    if not documents:
        raise ValueError(f"{path}: no YAML document found")
    if len(documents) == 1:
        return [(str(path), documents[0])]
    return [(f"{path}#{i}", doc) for i, doc in enumerate(documents)]


def validate_file(path: Path) -> tuple[list[ContinuedPretrain], list[Problem]]:
    """Validate every document in a file."""
    try:
        documents = load_documents(path)
    except ValueError as error:
        return [], [Problem(str(path), "", str(error).removeprefix(f"{path}: "))]
    resources, problems = [], []
    for source, doc in documents:
        resource, found = validate_object(doc, source)
        problems.extend(found)
        if resource is not None:
            resources.append(resource)
    return resources, problems
