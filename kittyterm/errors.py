"""The one error type both front ends show as it is: the CLI as one line with exit status 1,
the app in its status line."""


class UserError(Exception):
    """A problem the user can fix, already worded for them."""
