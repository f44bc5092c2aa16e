"""The one exception type the command line turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from a user (a path, a URI, a config value, a file): say what is wrong in one line."""
