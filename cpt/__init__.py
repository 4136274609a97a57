"""kubecpt: the shared API of the ContinuedPretrain operator and pipeline (pydantic only)."""

API_GROUP = "cpt.kubecpt.dev"
API_VERSION = "v1alpha1"
KIND = "ContinuedPretrain"
PLURAL = "continuedpretrains"
SHORT_NAME = "cpt"
