"""Errors of qsp's own. Every user-facing failure is one of these, with a message that
names the problem (the argument, config key, layer, file or board), so that the command
line tools can print it without a traceback."""


class QspError(Exception):
    """Base class of all qsp errors."""


class ConfigError(QspError, ValueError):
    """A bad configuration key or value (names the key)."""


class BundleError(QspError):
    """A bundle that is missing, malformed or of an unsupported schema version."""


class UnsupportedLayerError(QspError):
    """A layer type that a stage cannot handle (names the layer and its type)."""


class BoardError(QspError):
    """An unknown board, or a malformed board file (names the field)."""


class DataError(QspError):
    """A dataset that cannot be found or read (names the path)."""


class VerificationError(QspError):
    """Bit-exact verification failed (carries the per-layer report)."""

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


class MaskShapeError(QspError, ValueError):
    """An activation mask that cannot be applied to an input of another shape."""
