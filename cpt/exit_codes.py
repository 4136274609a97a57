"""Exit codes of every pipeline stage: one table for the stages, the local runner and the operator (its
podFailurePolicy and JobSet failure rules decide from these which failures are worth a retry).

| code | meaning | retry? |
|---|---|---|
| 0 | done | - |
| 1 | a bug: an unexpected exception (traceback in the log) | yes (backoffLimit) |
| 2 | the spec file is invalid (the problems are printed with field paths) | no |
| 3 | training: non-finite loss (lower the learning rate or check the data) | no |
| 4 | bad input: a missing/unreadable file, model, tokenizer, shards or task data; a spec that cannot resume | no |
| 5 | unavailable: an object store or source kept failing after retries | yes |
| 6 | training: stopped by the forgetting guardrail (`evaluation.guardrail`, action stop) | no |
| 75 | preempted (SIGTERM): a checkpoint was saved; map to `podFailurePolicy: Ignore` | yes, free |
"""

EXIT_BUG = 1
EXIT_INVALID_SPEC = 2
EXIT_NONFINITE = 3
EXIT_BAD_INPUT = 4
EXIT_UNAVAILABLE = 5
EXIT_FORGETTING = 6
EXIT_PREEMPTED = 75
PERMANENT = (EXIT_INVALID_SPEC, EXIT_NONFINITE, EXIT_BAD_INPUT, EXIT_FORGETTING)  # retrying cannot help
