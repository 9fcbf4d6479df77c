"""The one exception type the CLI turns into a one-line message and a non-zero exit.

Library code raises `CurateError` for anything the user can fix (bad input, a missing
server, an unknown name); programming errors stay ordinary exceptions with tracebacks.
"""


class CurateError(Exception):
    """A problem the user can act on; its message is shown as is, on one line."""
