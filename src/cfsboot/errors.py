"""The one exception type users see as a one-line error (exit status 1).

Every layer raises ``CfsError`` (or a subclass) for bad input; the CLI prints
``cfsboot: <message>`` and exits 1.  Anything else is a bug.
"""


class CfsError(Exception):
    """Bad input or an environment problem, reported as one line."""
