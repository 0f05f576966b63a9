"""Errors of the distill stage that a user can fix; each message is one line."""

from common.errors import UserError


class DistillError(UserError):
    """Bad input to the distill stage (checkpoint, dataset, configuration)."""


class CheckpointError(DistillError):
    """A file that is not a usable checkpoint, or one that does not fit the expected model."""


class TrainingCancelled(Exception):
    """Raised when the step callback asks training to stop; the last epoch checkpoint remains."""
