"""The one exception users see: a mistake they can fix, reported in one line with exit code 2."""


class BertfitError(Exception):
    """A user-caused problem: the message says what is wrong, where, and how to fix it."""

    exit_code = 2


def first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
