"""A local run reads no Secret: training.secretEnv's variables come from the caller's environment."""

from __future__ import annotations

from cpt.api import ContinuedPretrain
from cpt_pipeline.local import missing_secret_env
from tests.cpt.test_spec import with_change


def test_secret_env_is_taken_from_the_callers_environment_and_a_missing_one_is_named() -> None:
    secrets = {"WANDB_API_KEY": {"name": "wandb"}, "MLFLOW_TRACKING_TOKEN": {"name": "ml"}}
    spec = ContinuedPretrain.model_validate(with_change("spec.training.secretEnv", secrets)).spec
    assert missing_secret_env(spec, {"WANDB_API_KEY": "from-the-shell"}) == ["MLFLOW_TRACKING_TOKEN"]
    assert missing_secret_env(spec, {"WANDB_API_KEY": "a", "MLFLOW_TRACKING_TOKEN": "b"}) == []
