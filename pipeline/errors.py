"""Named errors, so a caller can tell a bad config from a closed stream from a bug."""


class PipelineError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(PipelineError):
    """A graph or option is wrong; the message names the node and the key."""


class DeviceError(PipelineError):
    """A device was asked for that this machine cannot give, or a copy would be hidden."""


class SourceError(PipelineError):
    """A source cannot be opened or read."""


class SinkError(PipelineError):
    """A sink cannot be opened or written."""


def one_line(exc: BaseException) -> str:
    """What went wrong, as one short line for an error message.

    FFmpeg and OS errors carry the reason in `strerror`; their `str()` adds an errno and the
    file name, which the caller's message already names.
    """
    text = getattr(exc, "strerror", None) or str(exc)
    text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return text.split(": '", 1)[0]
