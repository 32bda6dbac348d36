"""The core's exception tree; the Triton adapter maps each class to one TritonError code.

InpaintError
├── InvalidInputError    the request is wrong: fix it and retry (INVALID_ARG)
├── CancelledError       the caller cancelled the run (CANCELLED)
├── DeadlineExceededError  the run hit its time limit (UNAVAILABLE, message "deadline exceeded: ...")
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
        self.problem = problem


class CancelledError(InpaintError):
    """The run was stopped by its progress callback."""

    code = "CANCELLED"


class DeadlineExceededError(InpaintError):
    """The run passed its time limit and was stopped at the next step."""

    # TritonError has no DEADLINE_EXCEEDED code in this server build: clients read the message prefix.
    code = "UNAVAILABLE"

    def __init__(self, detail: str) -> None:
        super().__init__(f"deadline exceeded: {detail}")


class WeightsError(InpaintError):
    """The configured weights cannot be used."""

    code = "UNAVAILABLE"


# Triton's own refusals that mean "try again later" rather than "this request is wrong".
_UNAVAILABLE_HINTS = ("Exceeds maximum queue size", "has no available versions", "is not ready")


def code_for_message(message: str, input_names: tuple[str, ...]) -> str:
    """Recover an error's code from its message.

    This server build delivers every error that crosses BLS as INTERNAL; our messages say what they are
    (invalid input starts with the tensor's name), so flux_fill can still answer with the right code.
    """
    if message.split(":", 1)[0] in input_names:
        return InvalidInputError.code
    if message.startswith("cancelled"):
        return CancelledError.code
    if message.startswith("deadline exceeded") or any(hint in message for hint in _UNAVAILABLE_HINTS):
        return DeadlineExceededError.code
    return InpaintError.code
