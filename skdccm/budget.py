"""The time budget of a fit (``max_time``): one clock, and the epochs that fit in what is left.

A fit with a budget plans its runs to end inside it, so that a short budget trains a short
schedule instead of stopping a long one part way. After each epoch the training loop
estimates the seconds an epoch takes, counts the whole epochs the rest of the budget
affords, and a *plan* turns that count into the number of epochs of the current run; the
cosine learning-rate schedule spans the planned epochs. A run whose plan is reached before
its ``max_epochs`` ends there, cut short by the budget.

A fit may train several runs in turn (CRLC's pre-training, then clustering; DCCM's
``n_init`` trials, then the kept one continued). Each run's plan leaves the later runs their
share of the epochs.

What comes after the last run counts too: the passes over the training data that end a fit
(BatchNorm statistics, the labels, CRLC's choice of sub-head, the features that graph
refinement clusters) take as long as an epoch's forward passes, minutes on 60,000 colour
images on a CPU. Each run ends with one such pass, timed; later runs plan their epochs to
leave the fit's ``final_passes`` of that duration.

The clock is read once when ``fit`` starts, once when each run starts, once at the end of
each epoch and, under a finite budget, on both sides of the pass that ends each run; nothing
else reads it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


def clock() -> float:
    """Seconds on the monotonic clock that every budget reads."""
    return time.perf_counter()


@dataclass
class TimeBudget:
    """The seconds a fit may spend, counted from ``start``.

    Parameters
    ----------
    seconds : float or None, default=None
        The budget; None or infinity for none (the clock still gives ``elapsed``).
    start : float, optional
        The clock's reading when the fit started; now by default.
    final_passes : int, default=0
        Passes over the training data that follow the last run, for which the plan leaves
        time once one pass has been timed.

    Attributes
    ----------
    cut_short : bool
        Set by the training loop when the budget ended a run before its ``max_epochs``
        (or when a method skipped a run for lack of time).
    pass_seconds : float
        Seconds of the last timed pass over the training data (0 before the first).
    """

    seconds: float | None = None
    start: float = field(default_factory=lambda: clock())
    final_passes: int = 0
    cut_short: bool = False
    pass_seconds: float = 0.0

    @property
    def limited(self) -> bool:
        """Whether there is a finite budget to plan for."""
        return self.seconds is not None and math.isfinite(self.seconds)

    def elapsed(self) -> float:
        """Seconds since the fit started."""
        return clock() - self.start

    def available(self, elapsed: float) -> float:
        """Seconds left for training after ``elapsed``: the budget less the time its final
        passes will take."""
        return self.seconds - elapsed - self.final_passes * self.pass_seconds


def affordable_epochs(remaining: float, seconds_per_epoch: float) -> int:
    """Whole epochs of ``seconds_per_epoch`` that fit in ``remaining`` seconds (>= 0)."""
    if remaining <= 0:
        return 0
    # A clock too coarse to see an epoch pass: every epoch fits (the caller caps the plan).
    return math.floor(remaining / max(seconds_per_epoch, 1e-9))


def seconds_per_epoch(run_start: float, epoch_ends: list[float]) -> float:
    """Estimated seconds of one more epoch, from the clock readings of this run.

    The first epoch of a run carries its warm-up (memory allocation, kernel selection,
    ``torch.compile``), so once two epochs have ended only the later ones are averaged.

    Parameters
    ----------
    run_start : float
        Elapsed seconds of the fit when the run started.
    epoch_ends : list of float
        Elapsed seconds of the fit at the end of each epoch of the run so far (at least one).

    Returns
    -------
    float
        Seconds per epoch.
    """
    if len(epoch_ends) == 1:
        return epoch_ends[0] - run_start
    return (epoch_ends[-1] - epoch_ends[0]) / (len(epoch_ends) - 1)


# ----------------------------------------------------------------------------------------
# plans: epochs the rest of the fit affords (counted from this run's start, its epochs so
# far included) -> epochs this run plans
# ----------------------------------------------------------------------------------------


def whole(affordable: int) -> int:
    """The last run of a fit (or its only one) takes every epoch left."""
    return affordable


@dataclass(frozen=True)
class StageShare:
    """The first of two consecutive stages, which takes ``share`` of the epochs.

    CRLC's pre-training plans ``pretrain_epochs / (pretrain_epochs + max_iter)`` of what
    the budget affords, so that a budget shortens both stages in proportion.
    """

    share: float

    def __call__(self, affordable: int) -> int:
        return math.floor(affordable * self.share)


@dataclass(frozen=True)
class TrialShare:
    """One of several screening trials of ``trial_epochs`` epochs (DCCM's ``n_init``),
    ``later_trials`` of which still follow before the kept trial continues.

    A run of P planned epochs then needs ``P + later_trials * trial_epochs`` epochs of the
    fit; when even P = ``trial_epochs`` does not fit, every remaining trial becomes a whole
    run of an equal share.
    """

    later_trials: int
    trial_epochs: int

    def __call__(self, affordable: int) -> int:
        continued = affordable - self.later_trials * self.trial_epochs
        if continued >= self.trial_epochs:
            return continued
        return affordable // (self.later_trials + 1)
