"""Money: dollars are ``Decimal``, never floats, and an unknown price is None ("unpriced"),
never 0. Adding up costs and showing an amount to people follow from that."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext

from flowgpt.errors import InputError

__all__ = ["format_spend", "format_usd", "sum_costs", "usd_limit"]


def usd_limit(value: Decimal | float | str | None, what: str = "max_cost_usd") -> Decimal | None:
    """A cost limit as Decimal dollars (None: no limit); InputError for anything that is
    not a finite amount of at least 0 (``nan`` would make every comparison fail)."""
    if value is None:
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite() or amount < 0:
        raise InputError(
            f"{what} must be an amount of dollars of at least 0, not {str(value)!r}",
            hint="give a number such as 0.50",
        )
    return amount


def sum_costs(costs: Iterable[Decimal | None]) -> Decimal | None:
    """The sum of some costs; None ("unpriced") as soon as one of them is unknown."""
    total = Decimal(0)
    for cost in costs:
        if cost is None:
            return None
        total += cost
    return total


def format_usd(amount: Decimal | None) -> str:
    """An amount for people to read; "unpriced" for None.

    Three significant digits below a dollar ("$0.000435"), cents from a dollar up
    ("$12.35"), and "$0" only for a real zero, such as a response-cache hit.
    """
    if amount is None:
        return "unpriced"
    if amount == 0:
        return "$0"
    sign = "-" if amount < 0 else ""
    value = abs(amount)
    with localcontext() as ctx:
        ctx.prec = 60  # quantize must never run out of digits, whatever the amount
        if value >= 1:
            text = f"{value.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):f}"
        else:
            # adjusted() is the leading digit's exponent (-4 for 0.000435): keep 3 digits
            places = max(2, -value.adjusted() + 2)
            rounded = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
            whole, _, frac = f"{rounded:f}".partition(".")
            text = f"{whole}.{frac.rstrip('0').ljust(2, '0')}"
    return f"{sign}${text}"


def format_spend(priced: Decimal, unpriced: bool) -> str:
    """What some calls spent, for people to read, when some of them may have no price:
    the dollars of the priced ones, with "+ unpriced" when others are not ("$0.50 +
    unpriced"), or just "unpriced" when nothing priced cost anything. Never a smaller,
    wrong amount: what has no price is said, not added in as $0."""
    if not unpriced:
        return format_usd(priced)
    return f"{format_usd(priced)} + unpriced" if priced else "unpriced"
