"""Failures a user can fix, told in one line with a documented exit code; everything else is a bug.

A user error (a missing file, model, tokenizer or task data; data that cannot feed the model; a spec
that cannot resume a checkpoint; a model with code of its own the spec does not trust) ends the stage
with one line on stderr that names the file or field and says what to do, and exit code 4
(`cpt/exit_codes.py`). An object store that keeps failing after the retries ends it with exit code 5,
which is worth retrying. Any other exception is a bug: it keeps its traceback and exits 1. `--debug`
prints the traceback of user errors too.
"""

from __future__ import annotations

from cpt.exit_codes import EXIT_BAD_INPUT, EXIT_UNAVAILABLE

# botocore's exceptions do not derive from the built-in ones; matched by name to keep boto optional here
_BAD_INPUT_NAMES = {"NoCredentialsError", "PartialCredentialsError", "NoSuchBucket", "RepositoryNotFoundError"}
_UNAVAILABLE_NAMES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"}


def _user_error_types() -> tuple[type[BaseException], ...]:
    from cpt.memory import MemoryPlanError
    from cpt_pipeline.evaluate.harness import TaskDataError
    from cpt_pipeline.hf_loading import RemoteCodeError
    from cpt_pipeline.preprocess.identity import PreparedUnderAnotherSpec
    from cpt_pipeline.preprocess.readers import SourceError
    from cpt_pipeline.preprocess.tokenize import TokenizerError
    from cpt_pipeline.train.data import DataError

    return (
        SourceError,
        PreparedUnderAnotherSpec,
        TokenizerError,
        DataError,
        MemoryPlanError,
        TaskDataError,
        RemoteCodeError,
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    )


def exit_code_for(error: BaseException) -> int | None:
    """The exit code of a user-facing failure, or None for a bug."""
    from cpt_pipeline.preprocess.readers import SourceReadError

    names = {cls.__name__ for cls in type(error).__mro__}
    if isinstance(error, SourceReadError | ConnectionError | TimeoutError) or names & _UNAVAILABLE_NAMES:
        return EXIT_UNAVAILABLE
    if isinstance(error, _user_error_types()) or names & _BAD_INPUT_NAMES:
        return EXIT_BAD_INPUT
    return None


def one_line(stage: str, error: BaseException) -> str:
    """`<stage> failed: <message>` on one line (multi-line messages are joined)."""
    message = " ".join(str(error).split()) or type(error).__name__
    return f"{stage} failed: {message}"
