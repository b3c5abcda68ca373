"""The project's exception tree.

Errors from lower layers (python-can, cantools, the AWS SDK, the file system) are re-raised as one
of these, ``from`` the original, so a caller handles one family and a user gets one clear line.
"""


class TelemetryError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(TelemetryError):
    """A vehicle configuration file is missing, unreadable or inconsistent."""


class DbcError(ConfigError):
    """A DBC file does not load. The message names the file and the problem."""


class SourceError(TelemetryError):
    """A frame source cannot be opened: a log that is missing or of an unknown format, a bus
    that does not come up."""


class LogFormatError(SourceError):
    """A CAN log cannot be read at all (unknown format, missing file)."""


class MessageError(TelemetryError):
    """A pub/sub message is not a valid, known version of one of our message kinds."""


class RecipeError(TelemetryError):
    """A component recipe is invalid, or the set of recipes is inconsistent."""


class TransportError(TelemetryError):
    """A transport failed to deliver a message."""


class RejectedError(TransportError):
    """The broker refused a message for good (not authorised, too large, invalid): retrying the
    same message cannot succeed."""


class DroppedError(TransportError):
    """The connection was lost with the message in flight. Once, that is a bad link; every time
    the same message is sent, it is a broker that hangs up on a message it refuses."""
