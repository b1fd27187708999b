"""Errors raised by lens_memory.

Every error a user can cause by bad input derives from :class:`LensMemoryError`, so the
command line can print it as one line (no traceback) and notebooks can catch it.
Messages always name the offending value.
"""


class LensMemoryError(Exception):
    """Base class of every user-facing error in lens_memory."""


class ModelUnavailableError(LensMemoryError):
    """The named model cannot be loaded (unknown name, no network, missing files)."""


class FactFormatError(LensMemoryError, ValueError):
    """A fact record is malformed; the message names the record and the field."""


class SubjectNotFoundError(LensMemoryError, ValueError):
    """The subject string does not occur in the prompt."""


class InputTooLongError(LensMemoryError, ValueError):
    """A prompt is longer than the model context."""


class LayerOutOfRangeError(LensMemoryError, ValueError):
    """A layer index is outside ``[0, n_layers)``."""


class NoKnownFactsError(LensMemoryError):
    """The model knows none of the facts it was asked to trace."""


class ArtifactMismatchError(LensMemoryError):
    """A saved artifact (result, cache, edit) does not match the model or config it is used with."""


class DeviceUnavailableError(LensMemoryError, ValueError):
    """The requested device (or dtype) does not exist on this machine or is not a valid name."""


class ParallelError(LensMemoryError):
    """A cluster could not run the work: Ray missing, a worker could not load the model, or workers kept dying."""
