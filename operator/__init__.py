"""cpt_operator: the kopf operator that reconciles ContinuedPretrain resources (imported from `operator/`).

The folder is named `operator/` as in the design card; it is installed as `cpt_operator` because the
stdlib module `operator` would shadow it. It imports kopf and the Kubernetes client, never torch.
"""
