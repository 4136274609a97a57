"""Exit codes of the training stage, shared by the workers and the launcher that passes them on.

75 preempted (SIGTERM: a checkpoint was saved; map it to `podFailurePolicy: Ignore`), 3 non-finite loss,
4 data/tokenizer/model mismatch found before training started.
"""

EXIT_PREEMPTED = 75
EXIT_NONFINITE = 3
EXIT_BAD_INPUT = 4
DISTINCT = (EXIT_PREEMPTED, EXIT_BAD_INPUT, EXIT_NONFINITE)  # in the order the launcher reports them
