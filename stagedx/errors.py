"""User-facing errors: one clear line and exit code 2 (``--debug`` shows the traceback)."""


class StagedxError(Exception):
    """Bad input or an unusable environment; the CLI prints the message alone and exits 2."""

    exit_code = 2


class ContractError(Exception):
    """A programming error inside stagedx, not a user error: a runner or KV cache used against
    its contract (``commit`` without a ``run``, rows out of range, truncating beyond the
    committed length, shapes that disagree, a call after ``close()``). Every backend raises this
    one type for the same misuse; the CLI does not catch it (a traceback is the right report)."""
