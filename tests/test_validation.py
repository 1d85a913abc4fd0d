"""The shared integer checks: which values pass and what the message says."""

import numpy as np
import pytest

from skdccm.validation import check_int, is_int


@pytest.mark.parametrize("value", [0, 3, np.int64(3), np.uint8(2)])
def test_is_int_accepts_python_and_numpy_integers(value):
    assert is_int(value)


@pytest.mark.parametrize("value", [True, np.bool_(True), 3.0, "3", None])
def test_is_int_rejects_bools_floats_and_strings(value):
    assert not is_int(value)


@pytest.mark.parametrize("value", [1, 7, np.int32(2)])
def test_check_int_passes_positive_ints(value):
    check_int(value, "n_runs", "Owner")


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "auto", None])
def test_check_int_names_owner_key_and_value(value):
    with pytest.raises(ValueError, match=rf"Owner: n_runs={value!r} must be a positive int"):
        check_int(value, "n_runs", "Owner")


def test_check_int_minimum_zero_allows_zero_and_says_so():
    check_int(0, "pretrain_epochs", "Owner", minimum=0)
    with pytest.raises(ValueError, match=r"pretrain_epochs=-1 must be an int >= 0"):
        check_int(-1, "pretrain_epochs", "Owner", minimum=0)


def test_check_int_auto_allowed_only_when_asked():
    check_int("auto", "min_steps", "Owner", minimum=0, auto=True)
    with pytest.raises(ValueError, match=r"min_steps='fast' must be 'auto' or an int >= 0"):
        check_int("fast", "min_steps", "Owner", minimum=0, auto=True)
    with pytest.raises(ValueError, match=r"must be an int >= 0"):
        check_int("auto", "min_steps", "Owner", minimum=0)
