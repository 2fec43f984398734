"""A few typed errors, whatever the transport (the kopf model)."""

from __future__ import annotations


class ApiError(Exception):
    """An API call the server answered with a failure status."""

    status: int = 500
    reason: str = "InternalError"

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if reason is not None:
            self.reason = reason

    def as_status(self) -> dict:
        """The metav1.Status body a Kubernetes API server would send."""
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.status,
        }


class NotFound(ApiError):
    status = 404
    reason = "NotFound"


class Conflict(ApiError):
    """409: the object changed since it was read (stale resourceVersion)."""

    status = 409
    reason = "Conflict"


class AlreadyExists(Conflict):
    reason = "AlreadyExists"


class Gone(ApiError):
    """410: the requested resourceVersion is too old to watch from; relist."""

    status = 410
    reason = "Expired"


class Invalid(ApiError):
    status = 422
    reason = "Invalid"


class Forbidden(ApiError):
    status = 403
    reason = "Forbidden"


class Unreachable(ApiError):
    """The cluster could not be reached at all (connection refused, reset, timeout)."""

    status = 503
    reason = "ServiceUnavailable"


_BY_STATUS: dict[int, type[ApiError]] = {
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
    403: Forbidden,
}


def from_status(code: int, body: dict | None) -> ApiError:
    """Map an HTTP status and its metav1.Status body to a typed error."""
    body = body or {}
    reason = body.get("reason") or ""
    message = body.get("message") or f"HTTP {code}"
    if code == 409 and reason == "AlreadyExists":
        return AlreadyExists(message)
    if code in (502, 503, 504):  # a proxy or the API server itself is not there
        return Unreachable(message, status=code, reason=reason or None)
    cls = _BY_STATUS.get(code)
    if cls is None:
        return ApiError(message, status=code, reason=reason or "Unknown")
    return cls(message, reason=reason or None)
