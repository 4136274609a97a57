"""cpt_pipeline: the stages that run in pods and locally (preprocess, train, evaluate, report).

Installed from `pipeline/`. It imports the ML libraries lazily, and never kopf or kubernetes.
"""
