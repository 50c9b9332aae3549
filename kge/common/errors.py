"""One exception type for bad user input, reported by the CLI as a single line."""


class KgeInputError(Exception):
    """Bad input: the message names the file or config key and what was expected, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
