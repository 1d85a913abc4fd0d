"""What the command line tells its user: one-line errors.

A leaf module: it imports nothing from the rest of skdccm.
"""

from __future__ import annotations


class CommandError(Exception):
    """A user error the command reports in one line (no traceback)."""
