"""The errors detect.py prints as one line (`error: ...`, exit code 2), before any frame is read."""


class BadInput(Exception):
    """A problem the user can fix before any work: printed as one line, exit code 2."""


class LayoutError(Exception):
    """The model's outputs, or the layout bundle.json names, are not what this decode reads."""
