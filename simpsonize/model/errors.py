"""Errors with sentences a user can act on. Callers show ``str(error)`` as is."""


class SimpsonizeError(Exception):
    """Base class: every error the core raises on purpose."""


class NoFaceFound(SimpsonizeError):
    def __init__(
        self, message: str = "No face found in the photo. Try a well-lit photo with your face clearly visible."
    ) -> None:
        super().__init__(message)


class UnreadableImage(SimpsonizeError):
    pass


class WeightsError(SimpsonizeError):
    """Weights file missing, corrupt, or not a generator we can build."""


class MissingWeights(WeightsError):
    pass
