"""The dates seq2seq learns to read: dates from 1900-01-01 to 2099-12-31 written in the
formats people write, each read as one ISO date (yyyy-mm-dd).

A format's name is its pattern, as docs/models.md and the build report name it: `d` and `m`
are a day and a month number with or without a leading zero (one choice for both: "3/4" or
"03/04"), `dd` and `mm` always two digits, `yyyy` the year, `yy` its last two digits,
`month` the month's name ("march"), `mon` its first three letters ("mar"). Sources are lower
case: the server folds a request's upper case to lower (ModelSpec.fold_case).

No source is written for two dates: where day and month cannot be told apart the format
is trained with one reading, and the docs say which.

- Slashes are month first (US), the reading of every slash date whose first number is 12 or
  less ("3/4/2026" is March 4); `d/m/yyyy` writes only the days after the 12th, whose
  first number cannot be a month ("22/11/2026").
- Dots are day first ("22.11.2026"): nobody writes dotted dates month first.
- Two-digit years follow POSIX (Python's %y): 69-99 are 1969-1999, 00-68 are 2000-2068, so
  `m/d/yy` writes only the dates of those years.

Held out: dates whose proleptic ordinal is a multiple of 10 are never trained on, in any
format; they are the test set.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from dataclasses import dataclass

FIRST_DAY = datetime.date(1900, 1, 1)
LAST_DAY = datetime.date(2099, 12, 31)
MONTHS = [
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
]  # fmt: skip
# The first year a two-digit year names: yy >= PIVOT % 100 is 19yy, below it 20yy.
PIVOT = 1969


def any_date(date: datetime.date) -> bool:
    return True


def day_after_12th(date: datetime.date) -> bool:
    """A day number that cannot be a month: the only reading of a day-first slash date."""
    return date.day > 12


def two_digit_year(date: datetime.date) -> bool:
    """A year a two-digit year names (PIVOT to PIVOT + 99)."""
    return PIVOT <= date.year < PIVOT + 100


@dataclass(frozen=True)
class DateFormat:
    name: str  # the pattern
    template: str  # str.format over the fields `fields` gives
    admits: Callable[[datetime.date], bool] = any_date  # the dates written this way

    def write(self, date: datetime.date, padded: bool) -> str:
        """The date in this format; `padded` gives `d` and `m` a leading zero below 10."""
        return self.template.format(**fields(date, padded))


def fields(date: datetime.date, padded: bool) -> dict[str, str]:
    number = "{:02d}" if padded else "{}"
    month = MONTHS[date.month - 1]
    return {
        "d": number.format(date.day),
        "m": number.format(date.month),
        "dd": f"{date.day:02d}",
        "mm": f"{date.month:02d}",
        "yyyy": f"{date.year:04d}",
        "yy": f"{date.year % 100:02d}",
        "month": month,
        "mon": month[:3],
    }


FORMATS = [
    DateFormat("yyyy-mm-dd", "{yyyy}-{mm}-{dd}"),
    DateFormat("d month yyyy", "{d} {month} {yyyy}"),
    DateFormat("d mon yyyy", "{d} {mon} {yyyy}"),
    DateFormat("month d, yyyy", "{month} {d}, {yyyy}"),
    DateFormat("mon d, yyyy", "{mon} {d}, {yyyy}"),
    DateFormat("mon d yyyy", "{mon} {d} {yyyy}"),
    DateFormat("m/d/yyyy", "{m}/{d}/{yyyy}"),
    DateFormat("d/m/yyyy", "{d}/{m}/{yyyy}", day_after_12th),
    DateFormat("m/d/yy", "{m}/{d}/{yy}", two_digit_year),
    DateFormat("d.m.yyyy", "{d}.{m}.{yyyy}"),
]


def is_held_out(date: datetime.date) -> bool:
    return date.toordinal() % 10 == 0


def sample_pairs(
    rng: random.Random, count: int, held_out: bool, formats: list[DateFormat] = FORMATS
) -> list[tuple[str, str]]:
    """`count` (source, ISO date) pairs: a format drawn evenly from `formats`, then a date
    it writes drawn evenly from the training dates (or the held-out ones)."""
    pairs = []
    for _ in range(count):
        form = rng.choice(formats)
        date = draw_date(rng, form, held_out)
        pairs.append((form.write(date, padded=rng.random() < 0.5), date.isoformat()))
    return pairs


def draw_date(rng: random.Random, form: DateFormat, held_out: bool) -> datetime.date:
    while True:
        date = datetime.date.fromordinal(rng.randint(FIRST_DAY.toordinal(), LAST_DAY.toordinal()))
        if is_held_out(date) == held_out and form.admits(date):
            return date
