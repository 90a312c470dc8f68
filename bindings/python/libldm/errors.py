"""Exceptions: one LdmError subclass per ldm_status, each carrying the library's message.

Where a Python built-in exception means the same thing the class derives from it too, so
``except ValueError`` catches a bad argument and ``except MemoryError`` an allocation failure.
"""
from . import _api


class LdmError(Exception):
    """A libldm call failed.

    Attributes: ``status`` (the ldm_status number), ``status_name`` (ldm_status_string),
    ``function`` (the C function that failed) and ``message`` (ldm_last_error() at the time)."""

    def __init__(self, status, message, function=None):
        self.status = status
        self.status_name = _api.lib.ldm_status_string(status).decode("utf-8", "replace")
        self.function = function
        self.message = message
        where = "%s: " % function if function else ""
        super().__init__("%s%s (%s)" % (where, message or self.status_name, self.status_name))


class InvalidArgumentError(LdmError, ValueError):
    """LDM_ERR_INVALID_ARGUMENT: a bad parameter value or a wrong tensor shape."""


class FileError(LdmError, OSError):
    """LDM_ERR_IO: a file could not be opened, read or written."""


class FormatError(LdmError):
    """LDM_ERR_FORMAT: a file is truncated, corrupt or not what it claims to be."""


class UnsupportedError(LdmError, NotImplementedError):
    """LDM_ERR_UNSUPPORTED: valid input that this version cannot handle."""


class NotFoundError(LdmError, LookupError):
    """LDM_ERR_NOT_FOUND: a tensor, key, component or vocabulary that is needed is missing."""


class OutOfMemoryError(LdmError, MemoryError):
    """LDM_ERR_OUT_OF_MEMORY."""


class LimitError(LdmError):
    """LDM_ERR_LIMIT: a size limit was exceeded (see max_alloc_bytes)."""


class SecurityError(LdmError):
    """LDM_ERR_SECURITY: a checkpoint asked for something forbidden (a pickle global)."""


class NumericError(LdmError, ArithmeticError):
    """LDM_ERR_NUMERIC: NaN or Inf in weights, inputs or results."""


class Cancelled(LdmError):
    """LDM_CANCELLED: stopped by Model.interrupt() or by a progress callback returning True."""


class InternalError(LdmError):
    """LDM_ERR_INTERNAL."""


_BY_STATUS = {1: InvalidArgumentError, 2: FileError, 3: FormatError, 4: UnsupportedError,
              5: NotFoundError, 6: OutOfMemoryError, 7: LimitError, 8: SecurityError,
              9: NumericError, 10: Cancelled, 11: InternalError}


def error_for(status, function=None):
    """The exception for a failed call, with this thread's ldm_last_error() message (read right
    away: it is thread-local and overwritten by the next failing call)."""
    raw = _api.lib.ldm_last_error()
    message = raw.decode("utf-8", "replace") if raw else ""
    return _BY_STATUS.get(status, LdmError)(status, message, function)


def check(status, function=None):
    """Raises the matching LdmError subclass unless status is LDM_OK."""
    if status != _api.LDM_OK:
        raise error_for(status, function)
