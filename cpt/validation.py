"""Load ContinuedPretrain manifests and turn pydantic errors into messages with field paths."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cpt import KIND
from cpt.api import ContinuedPretrain
from cpt.crd import openapi_schema
from cpt.kube_yaml import load_all

# The CRD's schema, built once from the models: where the API server prunes nulls.
_schema = cache(openapi_schema)


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


# Wrong JSON types, named as the structural schema names them (pydantic error type -> schema type).
_TYPE_ERRORS = {
    "bool_type": "a boolean",
    "int_type": "an integer",
    "string_type": "a string",
    "float_type": "a number",
    "model_type": "an object",
    "dict_type": "an object",
    "list_type": "a list",
}
# Location parts that pydantic adds for validators and union members, not fields.
_NOT_A_FIELD = re.compile(r"^(function-.*|int|str|bool|float|none|[a-z-]+\[.*\])$")


def _json_kind(value: Any) -> str:
    for kind, types in (("boolean", bool), ("integer", int), ("number", float), ("string", str), ("list", list)):
        if isinstance(value, types):
            return kind
    return "object" if isinstance(value, dict) else "null"


def problems_from_error(error: ValidationError, source: str) -> list[Problem]:
    """One Problem per field, with rule errors pointing at the field they are about and the wrong types of
    a union (int or string) said in one message."""
    problems: dict[str, Problem] = {}
    wanted: dict[str, list[str]] = {}
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and _NOT_A_FIELD.match(p)))
        extra = (err.get("ctx") or {}).get("field") if err["type"] == "rule" else None
        path = field_path(loc + tuple(extra.split("."))) if extra else field_path(loc)
        if err["type"] in _TYPE_ERRORS:
            wanted.setdefault(path, []).append(_TYPE_ERRORS[err["type"]])
            got = _json_kind(err["input"])
            shown = f" {json.dumps(err['input'])}" if got not in ("object", "list", "null") else ""
            message = f"must be {' or '.join(wanted[path])}, got {got}{shown}"
        else:
            message = err["msg"].removeprefix("Value error, ")
        problems[path] = Problem(source, path, message) if path not in problems or path in wanted else problems[path]
    return list(problems.values())


def without_pruned_nulls(value: Any, schema: dict[str, Any]) -> Any:
    """`value` less the nulls the API server prunes before validating: a null field (or map value) whose
    schema is not nullable counts as unset, so its default applies or, if required, it is missing."""
    if isinstance(value, list):
        return [without_pruned_nulls(item, schema.get("items", {})) for item in value]
    if not isinstance(value, dict):
        return value
    properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
    out = {}
    for key, item in value.items():
        sub = properties.get(key, extra if isinstance(extra, dict) else {})
        if item is None and sub and not sub.get("nullable"):
            continue
        out[key] = without_pruned_nulls(item, sub)
    return out


def validate_object(obj: Any, source: str) -> tuple[ContinuedPretrain | None, list[Problem]]:
    """Validate one parsed document as the API server does; returns the model or the problems.

    The document is validated as the JSON that kubectl sends, in pydantic's strict mode: as in the CRD's
    structural schema, "yes" or "true" is not a boolean and "1", 1.5 or true is not an integer.
    """
    if not isinstance(obj, dict):
        return None, [Problem(source, "", f"expected a mapping (a {KIND} resource), got {type(obj).__name__}")]
    try:
        document = json.dumps(without_pruned_nulls(obj, _schema()), default=str)
        return ContinuedPretrain.model_validate_json(document, strict=True), []
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
