"""Checks of integer parameters, shared by the estimators and the consensus.

Every estimator validates counts the same way (an ``int`` or NumPy integer, never a
``bool``; some also accept ``"auto"``) and says so in the same words, so the checks live
here once.
"""

from __future__ import annotations

import numbers
from typing import Any


def is_int(value: Any) -> bool:
    """Whether ``value`` is a Python or NumPy integer other than a ``bool``.

    Parameters
    ----------
    value : object
        The value to test.

    Returns
    -------
    bool
        False for ``True``/``False``: ``bool`` subclasses ``int`` but is never a count.
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: Any, key: str, owner: str, *, minimum: int = 1,
              auto: bool = False) -> None:
    """Raise a ``ValueError`` naming ``owner`` and ``key`` unless ``value`` is an int of at
    least ``minimum`` (or the string ``"auto"`` where ``auto`` is True).

    Parameters
    ----------
    value : object
        The parameter's value.
    key : str
        The parameter's name, for the message.
    owner : str
        The estimator's class name, for the message.
    minimum : int, default=1
        The smallest value allowed.
    auto : bool, default=False
        Whether ``"auto"`` is allowed as well.

    Examples
    --------
    >>> from skdccm.validation import check_int
    >>> check_int(5, "n_runs", "ConsensusClustering")
    >>> check_int(True, "n_runs", "ConsensusClustering")
    Traceback (most recent call last):
    ...
    ValueError: ConsensusClustering: n_runs=True must be a positive int
    """
    if auto and isinstance(value, str) and value == "auto":
        return
    if is_int(value) and value >= minimum:
        return
    wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    if auto:
        wanted = f"'auto' or {wanted}"
    raise ValueError(f"{owner}: {key}={value!r} must be {wanted}")
