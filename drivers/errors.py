"""The errors every transport raises: a failed request is a ``TransportError`` whose
``kind`` names the device counter it is counted under."""

from __future__ import annotations


class DriverError(Exception):
    """A device could not be read or written (after the driver's retries)."""


class TransportError(DriverError):
    """One failed request; ``kind`` is the device counter it is counted under."""

    kind = "bad_frames"
    retryable = True


class ConnectError(TransportError):
    kind = "connect_errors"
