"""How route answers are shaped: pages of rows, data frames as JSON records, and a query or
form value that cannot be used, answered like any other validation error (422 naming it)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi.exceptions import RequestValidationError

if TYPE_CHECKING:
    import pandas as pd

# The most rows one page of any listing holds.
MAX_PAGE = 200


def invalid(where: str, field: str, problem: str) -> RequestValidationError:
    """A 422 naming `field` (`where`: query, body, path or form), as FastAPI's own are."""
    return RequestValidationError(
        [{"loc": (where, field), "msg": problem, "type": "value_error", "input": None}]
    )


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame's rows as dicts whose missing values are None (JSON has no NaN)."""
    out = frame.astype(object).to_dict(orient="records")
    for row in out:
        for key, value in row.items():
            if _missing(value):
                row[key] = None
    return out


def _missing(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ == "NaTType"  # pandas' missing time


def page(items: Sequence[Any], total: int, offset: int, limit: int) -> dict[str, Any]:
    return {"items": list(items), "total": int(total), "offset": offset, "limit": limit}
