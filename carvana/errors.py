"""User-facing errors: the entry points print these as one line and exit non-zero, with no traceback."""


class CarvanaError(Exception):
    """Bad input or setting; the message names the file or setting at fault and how to fix it."""
