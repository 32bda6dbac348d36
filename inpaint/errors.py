"""The core's exception tree; the Triton adapter maps each class to one TritonError code.

InpaintError
├── InvalidInputError    the request is wrong: fix it and retry (INVALID_ARG)
├── CancelledError       the caller cancelled the run (CANCELLED)
└── WeightsError         the weights are missing or corrupt: the model cannot load
"""


class InpaintError(Exception):
    """Base of every error the core raises on purpose."""

    code = "INTERNAL"


class InvalidInputError(InpaintError):
    """A request input is missing, malformed or out of range."""

    code = "INVALID_ARG"

    def __init__(self, tensor: str, problem: str) -> None:
        super().__init__(f"{tensor}: {problem}")
        self.tensor = tensor


class CancelledError(InpaintError):
    """The run was stopped by its progress callback."""

    code = "CANCELLED"


class WeightsError(InpaintError):
    """The configured weights cannot be used."""

    code = "UNAVAILABLE"
