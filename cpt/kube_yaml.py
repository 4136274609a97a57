"""YAML read and written the way kubectl reads it (sigs.k8s.io/yaml, YAML 1.1 rules).

PyYAML and kubectl disagree on some plain scalars: `1e-4` is a string to PyYAML and a float to
kubectl, and `y`/`n` are strings to PyYAML and booleans to kubectl. `cpt validate` loads files with
KubeLoader, so it sees what the API server will see. Generated manifests are dumped with KubeDumper,
which quotes every string that kubectl could read as something else.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")
_YAML11_BOOL = re.compile(r"^(y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$")
_NUMBER_LIKE = re.compile(
    r"^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"
)
_NULL_LIKE = re.compile(r"^(~|null|Null|NULL)?$")


class KubeLoader(yaml.SafeLoader):
    """SafeLoader plus kubectl's readings of `1e-4` (float) and `y`/`n` (bool)."""


KubeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT, list("-+0123456789"))
KubeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(y|Y|n|N)$"), list("yYnN"))


def _construct_bool(loader: KubeLoader, node: yaml.ScalarNode) -> bool:
    return loader.construct_scalar(node).lower() in ("y", "yes", "true", "on")


KubeLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


class KubeDumper(yaml.SafeDumper):
    """SafeDumper that double-quotes strings kubectl would read as numbers, booleans or null."""


def _represent_str(dumper: KubeDumper, value: str) -> yaml.ScalarNode:
    ambiguous = _NUMBER_LIKE.match(value) or _YAML11_BOOL.match(value) or _NULL_LIKE.match(value)
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if ambiguous else None)


KubeDumper.add_representer(str, _represent_str)


def load_all(text: str) -> list[Any]:
    """Every document, as kubectl would parse it."""
    return list(yaml.load_all(text, Loader=KubeLoader))


def dump(obj: Any) -> str:
    """YAML that kubectl reads back as exactly obj."""
    return yaml.dump(obj, Dumper=KubeDumper, sort_keys=False, width=120)
