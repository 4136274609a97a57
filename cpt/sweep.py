"""`cpt sweep`: one ContinuedPretrain per combination of `--set PATH=V1,V2,...` values.

Each run is named from the base name and its values, carries the shared label `cpt.kubecpt.dev/sweep: <base>`
plus one label per value (where the value is a valid label value) and an annotation with every value, and
writes to its own storage (`<base storage uri>/<run name>`): two runs sharing storage would share shards,
checkpoints and results. Every document is validated as `cpt validate` validates it.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from cpt import API_GROUP
from cpt.api.resource import RUN_NAME_MAX
from cpt.kube_yaml import load_all
from cpt.validation import validate_object

SWEEP_LABEL = f"{API_GROUP}/sweep"
VALUES_ANNOTATION = f"{API_GROUP}/sweep-values"
VALUE_LABEL_PREFIX = f"sweep.{API_GROUP}/"
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_SEGMENT = re.compile(r"^[A-Za-z][A-Za-z0-9]*$|^[0-9]+$")


class SweepError(ValueError):
    """A `--set` or a generated run that cannot be used; the message is one line naming the path."""


@dataclass(frozen=True)
class Setting:
    """One `--set`: a dotted path under spec and the values it takes."""

    path: str
    values: tuple[str, ...]

    @property
    def parts(self) -> list[str]:
        return self.path.split(".")


def parse_setting(text: str) -> Setting:
    """'data.replay.fraction=0,0.05' -> Setting('data.replay.fraction', ('0', '0.05'))."""
    path, sep, values = text.partition("=")
    path = path.strip().removeprefix("spec.")
    if not sep or not path:
        raise SweepError(f"--set {text}: expected PATH=VALUE[,VALUE...] (PATH under spec, e.g. data.replay.fraction)")
    if not all(_SEGMENT.match(part) for part in path.split(".")):
        raise SweepError(f"--set {path}: not a field path (dotted camelCase names, list indices as numbers)")
    items = tuple(v.strip() for v in values.split(","))
    if not all(items):
        raise SweepError(f"--set {path}: empty value in '{values}'")
    if len(set(items)) != len(items):
        raise SweepError(f"--set {path}: a value is repeated in '{values}'")
    return Setting(path, items)


def _assign(spec: dict[str, Any], setting: Setting, value: Any) -> None:
    """Set spec[path] = value, creating missing mappings; a path through a non-mapping is an error."""
    node: Any = spec
    parts = setting.parts
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SweepError(f"--set {setting.path}: spec.{where}: no such list item ({len(node)} in the list)")
            key: Any = int(part)
        elif isinstance(node, dict):
            if part.isdigit():
                raise SweepError(f"--set {setting.path}: spec.{where}: not a list")
            key = part
            if not last and key not in node:
                node[key] = {}
        else:
            raise SweepError(f"--set {setting.path}: spec.{'.'.join(parts[:depth])} is a value, not an object")
        if last:
            node[key] = value
        else:
            node = node[key]


def _readings(raw: str) -> list[Any]:
    """A value as YAML reads it (1e-3 -> float, 8 -> int, true -> bool) and as the string itself."""
    parsed = load_all(raw)[0] if raw else raw
    return [parsed, raw] if parsed != raw or not isinstance(parsed, str) else [raw]


def _problems_at(doc: dict[str, Any], path: str) -> list[str]:
    _, problems = validate_object(doc, "")
    field = f"spec.{path}"
    return [f"{p.path}: {p.message}" for p in problems if p.path == field or p.path.startswith(field + ".")]


def resolve_values(base: dict[str, Any], setting: Setting) -> list[Any]:
    """Each value typed as its field wants: the YAML reading, or the plain string where the field is a string
    (fractions and learning rates are decimal strings). Errors at the path itself name it in one line."""
    typed = []
    for raw in setting.values:
        found: list[str] = []
        for reading in _readings(raw):
            doc = copy.deepcopy(base)
            _assign(doc["spec"], setting, reading)
            errors = _problems_at(doc, setting.path)
            if not errors:
                typed.append(reading)
                break
            found += errors
        else:  # a reading of the right type that breaks a rule says more than the wrong type of another reading
            best = next((e for e in found if ", got " not in e), found[0])
            raise SweepError(f"--set {setting.path}={raw}: {best}")
    return typed


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def _kebab(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name).lower()


def run_name(base: str, pairs: list[tuple[Setting, str]]) -> str:
    """'tiny-cpu' + fraction=0.05 -> 'tiny-cpu-fraction-0-05'; shortened with a hash past the name limit."""
    words = [base] + [f"{_kebab(s.parts[-1])}-{_slug(raw) or 'x'}" for s, raw in pairs]
    name = "-".join(words)
    if len(name) <= RUN_NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: RUN_NAME_MAX - 9].rstrip('-')}-{digest}"


def _label(metadata: dict[str, Any], key: str, value: str) -> None:
    metadata.setdefault("labels", {})[key] = value


def _storage_uri(base_uri: str, name: str) -> str:
    return f"{base_uri.rstrip('/')}/{name}"


def build_run(base: dict[str, Any], pairs: list[tuple[Setting, str, Any]]) -> dict[str, Any]:
    """The base resource with these values set, its own name, labels, annotation and storage."""
    doc = copy.deepcopy(base)
    doc.pop("status", None)
    metadata = doc.setdefault("metadata", {})
    base_name = metadata["name"]
    for setting, _, value in pairs:
        _assign(doc["spec"], setting, value)
    name = run_name(base_name, [(s, raw) for s, raw, _ in pairs])
    for key in ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"):
        metadata.pop(key, None)
    metadata["name"] = name
    _label(metadata, SWEEP_LABEL, base_name)
    for setting, raw, _ in pairs:
        if _LABEL_NAME.match(setting.path) and len(setting.path) <= 63 and _LABEL_VALUE.match(raw) and len(raw) <= 63:
            _label(metadata, VALUE_LABEL_PREFIX + setting.path, raw)
    values = {s.path: raw for s, raw, _ in pairs}
    metadata.setdefault("annotations", {})[VALUES_ANNOTATION] = json.dumps(values, sort_keys=True)
    doc["spec"]["storage"]["uri"] = _storage_uri(doc["spec"]["storage"]["uri"], name)
    return doc


def expand(base: dict[str, Any], settings: list[Setting]) -> list[dict[str, Any]]:
    """Every combination (cartesian product, in --set order) as a validated resource."""
    _check_base(base, settings)
    typed = [list(zip(s.values, resolve_values(base, s), strict=True)) for s in settings]
    runs = []
    for combination in itertools.product(*typed):
        pairs = [(s, raw, value) for s, (raw, value) in zip(settings, combination, strict=True)]
        doc = build_run(base, pairs)
        _, problems = validate_object(doc, doc["metadata"]["name"])
        if problems:
            given = ", ".join(f"{s.path}={raw}" for s, raw, _ in pairs)
            raise SweepError(f"run {problems[0]} (with {given})")
        runs.append(doc)
    names = [r["metadata"]["name"] for r in runs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SweepError(f"two runs would both be named {dup}: give values that differ in letters or digits")
    return runs


def _check_base(base: dict[str, Any], settings: list[Setting]) -> None:
    if not settings:
        raise SweepError("give at least one --set PATH=VALUE[,VALUE...]")
    paths = [s.path for s in settings]
    if len(set(paths)) != len(paths):
        raise SweepError(f"--set {next(p for p in paths if paths.count(p) > 1)}: given twice")
    for setting in settings:
        if setting.path == "storage.uri" or setting.path.startswith("storage.uri."):
            raise SweepError("--set storage.uri: each run's storage is derived from the base file's storage.uri")
    _, problems = validate_object(base, "base")
    if problems:
        raise SweepError(f"the base file is not valid: {problems[0]}")
