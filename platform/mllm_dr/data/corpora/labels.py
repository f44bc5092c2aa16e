"""Label tables of the released corpora and of manifests: small CSVs read on the driver during discovery.

Column names differ between releases only in case and punctuation (``PHQ8_NoInterest`` in DAIC-WOZ,
``PHQ_8NoInterest`` in E-DAIC, ``participant_ID`` in one test split), so every header is *normalised*:
lower case, letters and digits only (both of those become ``phq8nointerest``).
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass

from mllm_dr.errors import UserError
from mllm_dr.questionnaires import PHQ8, Questionnaire
from mllm_dr.storage import Location

# PHQ-8 item columns of E-DAIC / DAIC-WOZ (normalised), keyed by the questionnaire's own item keys; the
# column list is then taken in the questionnaire's item order, whatever the column order of the file.
_PHQ8_COLUMN_BY_ITEM = {
    "interest": "phq8nointerest",
    "mood": "phq8depressed",
    "sleep": "phq8sleep",
    "energy": "phq8tired",
    "appetite": "phq8appetite",
    "self_worth": "phq8failure",
    "concentration": "phq8concentrating",
    "psychomotor": "phq8moving",
}
PHQ8_ITEM_COLUMNS = [_PHQ8_COLUMN_BY_ITEM[item.key] for item in PHQ8.items]
BLANKS = {"", "na", "n/a", "nan", "none", "null", "-"}


def normalize_header(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.strip().lower())


def read_table(location: Location) -> list[dict[str, str]]:
    """Rows of a small CSV/TSV with normalised headers and stripped values.

    The delimiter is the one of ``,`` / tab / ``;`` the header line holds most of (headers never contain
    one), which is steadier than sniffing values that may themselves hold commas.
    """
    text = location.read_text().lstrip("\ufeff")
    if not text.strip():
        raise UserError(f"{location.uri}: empty table")
    header_line = text.lstrip().splitlines()[0]
    delimiter = max(",\t;", key=header_line.count)
    reader = csv.reader(io.StringIO(text.lstrip()), delimiter=delimiter)
    header = [normalize_header(h) for h in next(reader)]
    rows = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        rows.append({name: value.strip() for name, value in zip(header, values) if name})
    return rows


def parse_int(value: object, what: str) -> int | None:
    """``"3"``, ``"3.0"``, ``3`` -> 3; blank / NA -> ``None``; anything else raises a one-line :class:`UserError`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str) and value.strip().lower() in BLANKS:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what}: {value!r} is not a number") from None
    if not number.is_integer():
        raise UserError(f"{what}: {value!r} is not a whole number")
    return int(number)


@dataclass
class Labels:
    split: str | None = None
    item_scores: list[int] | None = None
    total_score: int | None = None
    source: str = ""  # the label file it came from, for messages


def item_scores(row: dict[str, str], columns: list[str], questionnaire: Questionnaire, what: str) -> list[int] | None:
    """The item scores of one label row in questionnaire order; ``None`` when any of them is blank.

    A partial set of items is no use as an item-level target, so it is dropped (the total may still be set).
    """
    values = [parse_int(row.get(column), f"{what}: {column}") for column in columns]
    if any(v is None for v in values):
        return None
    questionnaire.validate_scores(values)
    return values


def total_score(row: dict[str, str], columns: tuple[str, ...], questionnaire: Questionnaire, what: str) -> int | None:
    """The first non-blank of the candidate total columns, range-checked."""
    for column in columns:
        value = parse_int(row.get(column), f"{what}: {column}")
        if value is not None:
            if not 0 <= value <= questionnaire.max_total:
                raise UserError(f"{what}: {column}={value} is outside 0-{questionnaire.max_total}")
            return value
    return None
