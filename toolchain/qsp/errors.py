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


class ToolError(QspError):
    """An external tool is missing or failed (g++ not on PATH, the C++ build failed)."""


#: exit statuses of every qsp command (README "Exit status"; each command's --help epilog)
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TOOL = 0, 1, 2, 3

#: the bad-input errors: the user's config, bundle, board or data (an unsupported layer is
#: the command's ``other``: qsp-train cannot train the model, qsp-compile cannot take the bundle)
BAD_INPUT = (ConfigError, BundleError, BoardError, DataError, MaskShapeError)


def exit_code(e: QspError, other: int = EXIT_BAD_INPUT) -> int:
    """The exit status for ``e``: 3 a tool failed, 1 verification failed, 2 bad input;
    ``other`` for the remaining qsp errors (2 where they concern the input, 1 for qsp-train,
    where they mean the training failed)."""
    if isinstance(e, ToolError):
        return EXIT_TOOL
    if isinstance(e, VerificationError):
        return EXIT_FAILED
    if isinstance(e, BAD_INPUT):
        return EXIT_BAD_INPUT
    return other
