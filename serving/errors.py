"""Errors of the model server, and the one table that maps them to gRPC and HTTP status codes.

Code that serves a request raises these; only the API layer (``grpc_server``, later REST) turns them into a
status, through :func:`status_of`. Anything that is not a :class:`ServingError` maps to ``INTERNAL``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import grpc


class ServingError(Exception):
    """Root of model-server errors. The message is safe to return to the caller."""


class ModelNotFoundError(ServingError):
    """No such model, version or version label is loaded (or the base path holds no version)."""

    def __init__(self, model: str, version: int | None = None, *, detail: str = "") -> None:
        what = f"model {model!r}" if version is None else f"version {version} of model {model!r}"
        super().__init__(f"Servable not found: {what}" + (f" ({detail})" if detail else ""))
        self.model = model
        self.version = version


class SignatureNotFoundError(ServingError):
    """The model has no signature of that name (TF Serving answers FAILED_PRECONDITION for this)."""

    def __init__(self, model: str, signature: str, available: list[str]) -> None:
        super().__init__(
            f'Serving signature key "{signature}" not found in model {model!r}; '
            f"signatures: {', '.join(sorted(available))}"
        )
        self.model = model
        self.signature = signature


class InvalidRequestError(ServingError):
    """The request is malformed; the caller must change it."""


class InvalidInputError(InvalidRequestError):
    """An input tensor is missing, unexpected, undecodable, or of the wrong dtype or shape."""

    def __init__(self, input_name: str, reason: str) -> None:
        super().__init__(f"input {input_name!r}: {reason}")
        self.input_name = input_name
        self.reason = reason


class InvalidOutputFilterError(InvalidRequestError):
    """``output_filter`` names an output the signature does not have, or names one twice."""

    def __init__(self, output_name: str, reason: str) -> None:
        super().__init__(f"output {output_name!r}: {reason}")
        self.output_name = output_name


class OverloadedError(ServingError):
    """The server sheds load (queue full); the caller may retry later."""


class ModelLoadError(ServingError):
    """A version directory exists but is not a loadable SavedModel."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot load SavedModel at {path}: {reason}")
        self.path = path


class ModelExecutionError(ServingError):
    """The model's signature failed on inputs that passed validation."""


class ServerStartError(ServingError):
    """The server could not bind its address, or was started twice."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot serve on {address}: {reason}")
        self.address = address


@dataclass(frozen=True)
class Status:
    grpc: grpc.StatusCode
    http: int


_INTERNAL: Final = Status(grpc.StatusCode.INTERNAL, 500)

# The one mapping of error → status. Lookup walks the exception's MRO, so the most specific entry wins.
STATUS_TABLE: Final[dict[type[BaseException], Status]] = {
    ModelNotFoundError: Status(grpc.StatusCode.NOT_FOUND, 404),
    SignatureNotFoundError: Status(grpc.StatusCode.FAILED_PRECONDITION, 400),
    InvalidRequestError: Status(grpc.StatusCode.INVALID_ARGUMENT, 400),
    OverloadedError: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    ModelLoadError: _INTERNAL,
    ModelExecutionError: _INTERNAL,
    ServingError: _INTERNAL,
}


def status_of(exc: BaseException) -> Status:
    """The status to answer with for ``exc``; ``INTERNAL``/500 for anything not in the table."""
    for cls in type(exc).__mro__:
        status = STATUS_TABLE.get(cls)
        if status is not None:
            return status
    return _INTERNAL


def grpc_code_number(code: grpc.StatusCode) -> int:
    """The numeric gRPC code (``InferenceEvent.status_code``), e.g. 5 for NOT_FOUND."""
    number: int = code.value[0]
    return number
