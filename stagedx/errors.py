"""User-facing errors: one clear line and exit code 2 (``--debug`` shows the traceback)."""


class StagedxError(Exception):
    """Bad input or an unusable environment; the CLI prints the message alone and exits 2."""

    exit_code = 2
