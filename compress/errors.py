"""User-facing errors: one clear line, exit code 2, nothing lost."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (recipe, model, data, checkpoint): print one line and exit 2."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        message = " ".join(str(message).split())  # always one line
        self.message, self.hint = message, hint
        super().__init__(f"{message}; {hint}" if hint else message)


class VerificationError(Exception):
    """An artifact failed its numerical check against the model it came from (exit 3)."""

    exit_code = 3
