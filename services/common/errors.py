"""Domain errors shared by every stage; one server interceptor maps them to gRPC status codes."""


class NlfpipeError(Exception):
    """Base of all errors that carry a message meant for a person."""


class InvalidInput(NlfpipeError):
    """A request parameter or input artifact is malformed or out of range (INVALID_ARGUMENT)."""


class ArtifactNotFound(NlfpipeError):
    """A referenced artifact does not exist in the store (NOT_FOUND)."""


class PreconditionFailed(NlfpipeError):
    """Inputs are well-formed but inconsistent with each other (FAILED_PRECONDITION)."""


class ModelNotReady(NlfpipeError):
    """The stage's model or body model is missing or still loading (UNAVAILABLE)."""


class Cancelled(NlfpipeError):
    """The caller cancelled the call or its deadline passed (CANCELLED)."""
