"""Errors raised on bad user input.

Every message names the file (or object), the field and what was expected, so a user with
thousands of scans can find and fix the one that is wrong without reading a stack trace.
"""

from __future__ import annotations


class BrainLMInputError(ValueError):
    """Input data or options that brainlm cannot use as given.

    Parameters
    ----------
    message : str
        What is wrong and what was expected.
    source : str, optional
        The file (or object) the problem was found in; prefixed to the message.
    """

    def __init__(self, message: str, source: str | None = None):
        self.source = None if source is None else str(source)
        self.reason = message
        super().__init__(f"{self.source}: {message}" if self.source else message)

    def __reduce__(self):
        # Keeps the exception intact when it crosses a joblib process boundary.
        return (type(self), (self.reason, self.source))
