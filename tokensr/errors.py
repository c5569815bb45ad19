"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""


class TokensrError(Exception):
    """Base class for errors caused by input, options or missing files, not by a bug."""


class ImageReadError(TokensrError):
    """An input file is not a readable image, is corrupt, or is too large."""


class OptionError(TokensrError):
    """A command-line option or API argument has an invalid value."""
