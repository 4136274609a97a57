"""Exit codes of the training stage (defined once for every stage in `cpt/exit_codes.py`)."""

from cpt.exit_codes import EXIT_BAD_INPUT, EXIT_FORGETTING, EXIT_NONFINITE, EXIT_PREEMPTED, EXIT_UNAVAILABLE

# the order the launcher reports them
DISTINCT = (EXIT_PREEMPTED, EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_UNAVAILABLE, EXIT_FORGETTING)
__all__ = ["DISTINCT", "EXIT_BAD_INPUT", "EXIT_FORGETTING", "EXIT_NONFINITE", "EXIT_PREEMPTED", "EXIT_UNAVAILABLE"]
