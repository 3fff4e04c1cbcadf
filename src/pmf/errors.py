"""Error types raised by pixel-meanflow for bad user input."""


class PMFError(ValueError):
    """A clear, user-facing error: bad input, bad config, or an unreadable file."""


class CheckpointError(PMFError):
    """A checkpoint that cannot be read or does not fit the model."""
