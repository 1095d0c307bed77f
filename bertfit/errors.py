"""The one exception users see: a mistake they can fix, reported in one line with exit code 2."""


class BertfitError(Exception):
    """A user-caused problem: the message says what is wrong, where, and how to fix it."""

    exit_code = 2
