"""Building blocks shared by every API model: camelCase aliases, cross-field rules, typed strings.

A `Rule` is written once and used twice: its CEL expression goes into the CRD (checked by the API
server) and its Python predicate runs in pydantic (checked by `cpt validate`, the operator and the
local runner). Decimal values are strings, as Kubernetes API conventions ask for no floats in spec.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

# Maximum list sizes keep CEL cost estimates bounded in the API server.
MAX_LIST = 64


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, written once as CEL and as the equivalent Python predicate.

    `field` is the camelCase path (relative to the model) that the message is about. A rule whose
    `check` is None needs the old object (a transition rule) and is enforced by the API server only.
    """

    cel: str
    message: str
    field: str | None = None
    check: Callable[[Any], bool] | None = None

    def to_crd(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field:
            out["fieldPath"] = "." + self.field
        return out


def _add_rules_to_schema(schema: dict[str, Any], cls: type) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.to_crd() for rule in rules]


class ApiModel(BaseModel):
    """Base of every API model: camelCase in YAML, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_add_rules_to_schema,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for rule in type(self).rules:
            if rule.check is not None and not rule.check(self):
                raise PydanticCustomError("rule", "{message}", {"message": rule.message, "field": rule.field})
        return self

    def to_api(self) -> dict[str, Any]:
        """The camelCase dict as stored in Kubernetes (unset optional fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def section(model: type[ApiModel], description: str) -> Any:
    """A nested section that is optional and filled with its defaults (the CRD carries them too)."""
    return Field(default_factory=model, description=description)


# At most two exponent digits: with 32 characters at most, every match is a finite double (no "1e999").
DECIMAL_PATTERN = r"^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]{1,2})?$"
_OPS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def cel_not_decimal(expr: str) -> str:
    """CEL that is true when `expr` is not a decimal string double() can convert: a rule guarded by it passes
    such a value, so the refusal the server gives is the pattern's, naming the field, not a conversion error."""
    return f"!{expr}.matches(r'{DECIMAL_PATTERN}')"


def _cel_double(value: float) -> str:
    text = repr(float(value))
    return text if ("." in text or "e" in text) else text + ".0"


def decimal(**bounds: float) -> Any:
    """A non-negative decimal string type such as "1e-4" or "0.25", with optional ge/gt/le/lt bounds."""
    unknown = set(bounds) - set(_OPS)
    if unknown:
        raise TypeError(f"unknown bounds {sorted(unknown)}")
    message = "must be a decimal string" + "".join(f", {_OPS[k]} {v:g}" for k, v in bounds.items())

    def check(text: str) -> str:
        value = float(text)
        ok = all({"ge": value >= v, "gt": value > v, "le": value <= v, "lt": value < v}[k] for k, v in bounds.items())
        if not ok:
            raise ValueError(f"{text!r} {message}")
        return text

    extra: dict[str, Any] = {}
    if bounds:
        cel = " && ".join(f"double(self) {_OPS[k]} {_cel_double(v)}" for k, v in bounds.items())
        extra["x-kubernetes-validations"] = [{"rule": f"{cel_not_decimal('self')} || ({cel})", "message": message}]
    return Annotated[
        str,
        StringConstraints(pattern=DECIMAL_PATTERN, max_length=32),
        AfterValidator(check),
        Field(json_schema_extra=extra),
    ]


# Kubernetes resource quantity ("8", "500m", "64Gi"): int or string, as in core/v1 ResourceRequirements.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, bool) or (isinstance(value, str) and not _QUANTITY_RE.match(value)):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}),
]


class Resources(ApiModel):
    """Requests and limits of a pod's container (Kubernetes quantities), as in core/v1 ResourceRequirements."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description='Requests, e.g. {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": 1}.'
    )
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Limits, same keys as requests.")


DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DnsLabel = Annotated[str, StringConstraints(pattern=DNS_LABEL, min_length=1, max_length=63)]
# Secret and ConfigMap names are DNS subdomains.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DnsSubdomain = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, min_length=1, max_length=253)]
# A URI or local path; object-store schemes are checked where they matter.
Uri = Annotated[str, StringConstraints(min_length=1, max_length=2048)]


class SecretKeyRef(ApiModel):
    """A key in a Secret in the same namespace."""

    name: DnsSubdomain = Field(description="Name of the Secret.")
    key: str = Field("token", min_length=1, max_length=253, description="Key inside the Secret.")


class SecretRef(ApiModel):
    """A whole Secret in the same namespace, exposed to the pods as environment variables."""

    name: DnsSubdomain = Field(description="Name of the Secret.")
