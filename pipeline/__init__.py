"""cpt_pipeline: the stages that run in pods and locally (preprocess, train, evaluate, report).

Installed from `pipeline/`. It imports the ML libraries lazily, and never kopf or kubernetes. As its
container's PID 1 it blocks SIGTERM, SIGINT and SIGHUP first thing, before the stage's imports (pid1.py).
"""

from cpt_pipeline.pid1 import block_if_pid_1

block_if_pid_1()
