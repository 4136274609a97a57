"""The ContinuedPretrain API, defined once: CRD schema, CLI validation, operator and local runner."""

from cpt.api.base import ApiModel, Rule
from cpt.api.resource import ContinuedPretrain, ContinuedPretrainSpec
from cpt.api.status import Condition, ConditionType, ContinuedPretrainStatus, Phase

__all__ = [
    "ApiModel",
    "Condition",
    "ConditionType",
    "ContinuedPretrain",
    "ContinuedPretrainSpec",
    "ContinuedPretrainStatus",
    "Phase",
    "Rule",
]
