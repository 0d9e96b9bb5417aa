"""Errors a user can act on. The CLI prints their message (no traceback) and exits with status 2."""


class ClipsepError(Exception):
    """Base class: the message names the problem and, where possible, the fix."""


class BadInputError(ClipsepError, ValueError):
    """An input file or value that cannot be used (corrupt, silent, NaN, empty query, ...).

    ``arguments`` names the parameters at fault (e.g. ``("query",)``): the message speaks of the
    library's arguments, and each edge (CLI, app) can add the name of its own control for them.
    """

    def __init__(self, message: str, arguments: tuple[str, ...] = ()):
        super().__init__(message)
        self.arguments = arguments


class ValidationFailed(ClipsepError):
    """The data gate rejected the dataset; the message lists the failing expectations."""


class MissingWeightsError(ClipsepError):
    """A model or encoder weight file is not available offline; the message says how to get it."""


class PartialFailure(ClipsepError):
    """Some items of a batch failed (each reported as it happened); ``result`` is the summary of
    the batch, what succeeded included."""

    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result


# a stage stopped from outside, not failed: Ctrl-C; SIGTERM, raised as SystemExit 143;
# GeneratorExit, what rank 0 of a `torchrun` reported after Ctrl-C in a new-user trial
INTERRUPTS = (KeyboardInterrupt, SystemExit, GeneratorExit)
