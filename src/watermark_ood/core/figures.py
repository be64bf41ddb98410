"""How figures are printed in every table and report: rates as percentages with two decimals.

    >>> percent(0.12345), percent(None), percent(float("nan"))
    ('12.35', '-', '-')
"""

from __future__ import annotations

import math


def percent(value: float | None) -> str:
    """A rate in [0, 1] as a percentage; a missing or undefined rate as '-'."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"
