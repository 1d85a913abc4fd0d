"""The time budget ``max_time`` (skdccm/budget.py and its use by the loop and the estimators).

No test reads the wall clock: ``skdccm.budget.clock`` is replaced by a fake that moves on by
``TICK`` seconds at every reading. The budget reads it once when ``fit`` starts, once when
each run starts and once at the end of each epoch, so a fit's k-th reading is at
``(k - 1) * TICK`` seconds, and each epoch (and each run's start) costs one tick.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from sklearn.base import clone

import skdccm.budget as budget_module
from skdccm import CRLCClustering, DCCMClustering
from skdccm.budget import (
    StageShare,
    TimeBudget,
    TrialShare,
    affordable_epochs,
    seconds_per_epoch,
)
from skdccm.data import infer_layout
from skdccm.training import CHECKPOINT_NAME, learning_rate_at, steps_per_epoch

TICK = 10.0
ESTIMATORS = (DCCMClustering, CRLCClustering)


class TickingClock:
    """Fake clock: 0, then TICK more at each reading."""

    def __init__(self) -> None:
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return (self.readings - 1) * TICK


@pytest.fixture
def ticking(monkeypatch):
    clock = TickingClock()
    monkeypatch.setattr(budget_module, "clock", clock)
    return clock


@pytest.fixture
def X(digit_images):
    return digit_images[:48]


def tiny(cls, **params):
    """Tiny CPU estimators (three steps per epoch) with the cosine schedule, in one stage
    unless ``pretrain_epochs`` is given (CRLC's default warm-starts grey images)."""
    extra = {"target_batch_size": 16, "ablation": "M3"} if cls is DCCMClustering else {
        "n_heads": 2, "hidden_dim": 16}
    return cls(**{"n_clusters": 4, "max_iter": 6, "batch_size": 16, "device": "cpu",
                  "random_state": 0, "lr_schedule": "cosine", "pretrain_epochs": 0,
                  **extra, **params})


def train_spec(est, X):
    """The fitted estimator's TrainSpec and its optimiser steps per epoch."""
    layout = infer_layout(X.shape, X.dtype, image_shape=None, channels=None, owner="test")
    spec = est._train_spec(est.preset_params_, len(X), layout)
    return spec, steps_per_epoch(len(X), spec)


def planned(est, stage=None):
    return [r["planned_epochs"] for r in est.history_ if stage in (None, r.get("stage"))]


# ---------------------------------------------------------------------------------------
# the pure helpers
# ---------------------------------------------------------------------------------------


def test_affordable_epochs_counts_whole_epochs_only():
    assert affordable_epochs(25.0, 10.0) == 2
    assert affordable_epochs(9.9, 10.0) == 0
    assert affordable_epochs(0.0, 10.0) == affordable_epochs(-5.0, 10.0) == 0
    assert affordable_epochs(1.0, 0.0) > 10**6   # a clock that saw no time pass


def test_seconds_per_epoch_leaves_the_first_epoch_out_once_there_are_more():
    assert seconds_per_epoch(5.0, [35.0]) == 30.0               # warm-up included: all we have
    assert seconds_per_epoch(5.0, [35.0, 45.0, 55.0]) == 10.0   # later epochs only


def test_stage_share_plans_the_first_stage_in_proportion():
    plan = StageShare(30 / (30 + 60))
    assert [plan(n) for n in (0, 2, 3, 9, 90)] == [0, 0, 1, 3, 30]


def test_trial_share_reserves_the_later_trials():
    plan = TrialShare(later_trials=2, trial_epochs=3)
    assert plan(20) == 14   # the kept trial: 14 epochs, the other two trials 3 each
    assert plan(9) == 3     # just enough for three trials of 3
    assert plan(8) == 2     # not enough: three whole runs of 2
    assert TrialShare(0, 3)(5) == 5


def test_budget_reads_the_clock_and_knows_whether_it_limits(ticking):
    budget = TimeBudget(25.0)
    assert budget.start == 0.0 and budget.elapsed() == TICK and budget.limited
    assert not TimeBudget(None).limited and not TimeBudget(math.inf).limited


# ---------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_max_time_is_a_plain_parameter(cls):
    assert cls().max_time is None
    est = cls(max_time=90)
    assert est.get_params()["max_time"] == 90
    copy = clone(est)
    assert copy.max_time == 90 and copy is not est
    assert pickle.loads(pickle.dumps(est)).get_params() == est.get_params()


@pytest.mark.parametrize("cls", ESTIMATORS)
@pytest.mark.parametrize(("value", "error", "message"), [
    (0, ValueError, r"max_time=0 must be > 0 seconds, or None"),
    (-1.5, ValueError, r"max_time=-1.5 must be > 0"),
    (float("nan"), ValueError, r"max_time=nan must be > 0"),
    ("60", TypeError, r"max_time='60' must be a number of seconds or None"),
    (True, TypeError, r"max_time=True must be a number"),
])
def test_invalid_max_time_is_rejected_in_fit(cls, X, value, error, message):
    est = tiny(cls, max_time=value)   # __init__ stores it as given
    with pytest.raises(error, match=f"{cls.__name__}: {message}"):
        est.fit(X)


# ---------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_without_a_budget_history_records_elapsed_and_the_full_plan(cls, X, ticking):
    est = tiny(cls, max_iter=2).fit(X)
    assert est.n_iter_ == 2 and not est.stopped_by_time_
    assert planned(est) == [2, 2]
    # Readings: fit start 0, run start 10, then one per epoch.
    assert [r["elapsed"] for r in est.history_] == [2 * TICK, 3 * TICK]


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_infinite_budget_is_no_budget(cls, X, ticking):
    est = tiny(cls, max_iter=2, max_time=math.inf).fit(X)
    assert est.n_iter_ == 2 and not est.stopped_by_time_ and planned(est) == [2, 2]


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_budget_shorter_than_one_epoch_stops_after_one_epoch(cls, X, ticking):
    est = tiny(cls, max_time=TICK / 2).fit(X)
    assert est.n_iter_ == 1 and len(est.history_) == 1
    assert est.stopped_by_time_
    assert planned(est) == [1]
    assert est.labels_.shape == (len(X),)   # a usable model


def test_the_schedule_is_planned_for_the_shortened_run(X, ticking):
    # Epochs end at 20, 30, 40 s: after the first, 10 s per epoch and 25 s left plan 3.
    est = tiny(DCCMClustering, max_time=45.0).fit(X)
    assert est.n_iter_ == 3 and est.stopped_by_time_
    assert planned(est) == [3, 3, 3]
    spec, per_epoch = train_spec(est, X)
    # Epoch 1 ran under the preset's 6 epochs; epochs 2 and 3 under the plan of 3, so the
    # cosine reaches (almost) zero at the end of epoch 3 instead of half way down.
    assert est.history_[0]["lr"] == pytest.approx(
        learning_rate_at(per_epoch - 1, 6 * per_epoch, spec))
    assert est.history_[2]["lr"] == pytest.approx(
        learning_rate_at(3 * per_epoch - 1, 3 * per_epoch, spec))
    assert est.history_[2]["lr"] < 0.05 * spec.learning_rate


def test_plan_grows_back_when_the_first_epoch_was_slow(X, monkeypatch):
    # The first epoch costs 40 s (warm-up), later ones 10 s: the plan after epoch 1 is
    # short, and grows once the second epoch shows the real pace.
    readings = iter([0.0, 0.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0])
    monkeypatch.setattr(budget_module, "clock", lambda: next(readings))
    est = tiny(DCCMClustering, max_time=85.0).fit(X)
    assert planned(est)[:2] == [2, 5]
    assert est.n_iter_ == 5 and est.stopped_by_time_


def test_a_budget_the_run_fits_in_changes_nothing(X, ticking):
    est = tiny(DCCMClustering, max_iter=3, max_time=1000.0).fit(X)
    assert est.n_iter_ == 3 and not est.stopped_by_time_ and planned(est) == [3, 3, 3]
    reference = tiny(DCCMClustering, max_iter=3).fit(X)
    assert [r["loss"] for r in est.history_] == [r["loss"] for r in reference.history_]


def test_verbose_says_that_the_budget_stopped_training(X, ticking, capsys):
    tiny(DCCMClustering, max_time=45.0, verbose=2).fit(X)
    out = capsys.readouterr().out
    assert "epoch 3/3" in out
    assert "max_time=45 s: training stopped after 3 of 6 epochs, 40.0 s into the fit" in out


def test_tol_that_stops_in_the_budgets_last_epoch_is_the_reason(X, ticking):
    # The plan is 2 epochs, and tol=1 is met in epoch 2 (every label_change is <= 1).
    est = tiny(DCCMClustering, max_time=35.0, tol=1.0).fit(X)
    assert est.n_iter_ == 2 and planned(est) == [2, 2]
    assert not est.stopped_by_time_


# ---------------------------------------------------------------------------------------
# several runs in one fit
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_warm_start_takes_its_share_of_the_budget(cls, X, ticking, monkeypatch):
    # One mechanism for both estimators; no final passes to leave time for here (below).
    monkeypatch.setattr(cls, "_final_passes", 0)
    # pretrain 2 + cluster 4 epochs: pre-training plans a third of what is affordable.
    # Pre-training: starts at 10, epoch 1 ends at 20, 50 s left: 1 + 5 epochs affordable,
    # a third is 2; epoch 2 ends at 30 (40 s left: a third of 2 + 4 is 2). Its closing pass
    # is timed from 40 to 50. Clustering: starts at 60, epochs end at 70, 80, 90: plan 3.
    est = tiny(cls, pretrain_epochs=2, max_iter=4, max_time=90.0).fit(X)
    assert planned(est, "pretrain") == [2, 2]
    assert planned(est, "cluster") == [3, 3, 3]
    assert est.n_iter_ == 5 and est.stopped_by_time_


@pytest.mark.parametrize("cls, expected", [(DCCMClustering, [2, 2]), (CRLCClustering, [1])])
def test_later_runs_leave_time_for_the_final_passes(cls, X, ticking, expected):
    # As above, with the estimators' own final passes (DCCM: BatchNorm statistics and
    # labels, 2; CRLC: also the sub-head choice on two views, 3), each as long as the
    # warm start's timed closing pass (10 s, from 40 to 50). Clustering's epoch 1 ends at
    # 70: 30 s are left, less 20 s (DCCM) or 30 s (CRLC) for the final passes: one more
    # epoch or none. Without the reservation the plan would be 4, ending at the budget
    # with the passes still to come.
    est = tiny(cls, pretrain_epochs=2, max_iter=4, max_time=100.0).fit(X)
    assert planned(est, "pretrain") == [2, 2]
    assert planned(est, "cluster") == expected
    assert est.stopped_by_time_


@pytest.mark.parametrize("cls, expected", [(DCCMClustering, [2, 2]), (CRLCClustering, [1])])
def test_a_refined_fit_also_leaves_time_for_the_refinement_pass(cls, X, ticking, expected):
    # As above, with one more pass to leave time for: the refinement's pass over the
    # training data. Clustering's epoch 1 ends at 70 and 40 s are left, less 30 s (DCCM) or
    # 40 s (CRLC) for the final passes: one more epoch or none (unrefined: two, or one).
    est = tiny(cls, pretrain_epochs=2, max_iter=4, max_time=110.0, refine="spectral").fit(X)
    assert est.refine_
    assert planned(est, "cluster") == expected
    assert est.stopped_by_time_


def test_crlc_clustering_stage_trains_even_when_pretraining_used_the_budget(X, ticking):
    est = tiny(CRLCClustering, pretrain_epochs=3, max_iter=3, max_time=TICK / 2).fit(X)
    assert [r["stage"] for r in est.history_] == ["pretrain", "cluster"]
    assert est.stopped_by_time_ and est.labels_.shape == (len(X),)


def test_dccm_trials_share_the_budget_with_the_kept_run(X, ticking):
    # Trial 1 starts at 10 and its epochs end at 20 and 30: 7 epochs affordable, 2 kept for
    # trial 2, so it plans 5. Trial 2 starts at 40, its epochs end at 50 and 60: 4
    # affordable, all its own. The kept trial continues at 70; its epoch 3 ends at 80, the
    # budget's end.
    est = tiny(DCCMClustering, n_init=2, init_iter=2, max_iter=8, max_time=80.0).fit(X)
    assert len(est.init_losses_) == 2
    assert est.n_iter_ == 3 and est.stopped_by_time_
    kept = est.best_init_
    assert [r["elapsed"] for r in est.history_] == [20.0 + 30.0 * kept, 30.0 + 30.0 * kept,
                                                     80.0]
    assert planned(est) == ([5, 5, 3] if kept == 0 else [4, 4, 3])
    # The continued run's first epoch follows the schedule its trial planned.
    spec, per_epoch = train_spec(est, X)
    assert est.history_[2]["lr"] == pytest.approx(learning_rate_at(
        3 * per_epoch - 1, planned(est)[1] * per_epoch, spec))


def test_dccm_trials_without_time_left_are_skipped(X, ticking):
    est = tiny(DCCMClustering, n_init=3, init_iter=2, max_time=15.0).fit(X)
    assert len(est.init_losses_) == 1 and est.best_init_ == 0
    assert est.n_iter_ == 1 and est.stopped_by_time_


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------


def test_budget_stopped_run_resumes_to_the_full_run(X, ticking, tmp_path):
    stopped = tiny(DCCMClustering, max_iter=3, max_time=TICK / 2,
                   checkpoint_dir=str(tmp_path)).fit(X)
    assert stopped.n_iter_ == 1 and (tmp_path / CHECKPOINT_NAME).exists()
    resumed = tiny(DCCMClustering, max_iter=3, checkpoint_dir=str(tmp_path),
                   resume=True).fit(X)
    full = tiny(DCCMClustering, max_iter=3).fit(X)
    assert resumed.n_iter_ == 3 and not resumed.stopped_by_time_
    assert resumed.history_[:1] == stopped.history_
    # Epoch 1 ran under the full plan, and a resumed run plans afresh: the same run.
    assert [r["loss"] for r in resumed.history_] == [r["loss"] for r in full.history_]
    np.testing.assert_array_equal(resumed.labels_, full.labels_)


def test_resuming_with_no_time_left_keeps_the_checkpoint(X, ticking, tmp_path):
    tiny(DCCMClustering, max_iter=3, checkpoint_dir=str(tmp_path)).fit(X)
    # The run's start is read at 10 s, past the budget: no epoch is trained.
    resumed = tiny(DCCMClustering, max_iter=6, max_time=TICK / 2,
                   checkpoint_dir=str(tmp_path), resume=True).fit(X)
    assert resumed.n_iter_ == 3 and resumed.stopped_by_time_
    assert resumed.labels_.shape == (len(X),)
