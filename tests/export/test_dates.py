"""The dates seq2seq learns: each format writes what docs/models.md shows, and every source
has exactly one reading, so no date is trained with two answers."""

from __future__ import annotations

import datetime
import random
import re

import pytest

from rnnserve.export import dates
from rnnserve.export.dates import FORMATS, DateFormat

NOV_22 = datetime.date(2026, 11, 22)
MAR_4 = datetime.date(1999, 3, 4)

# The examples docs/models.md gives (2026-11-22, and 1999-03-04 with and without zeros).
EXAMPLES = {
    "yyyy-mm-dd": ("2026-11-22", "1999-03-04", "1999-03-04"),
    "d month yyyy": ("22 november 2026", "04 march 1999", "4 march 1999"),
    "d mon yyyy": ("22 nov 2026", "04 mar 1999", "4 mar 1999"),
    "month d, yyyy": ("november 22, 2026", "march 04, 1999", "march 4, 1999"),
    "mon d, yyyy": ("nov 22, 2026", "mar 04, 1999", "mar 4, 1999"),
    "mon d yyyy": ("nov 22 2026", "mar 04 1999", "mar 4 1999"),
    "m/d/yyyy": ("11/22/2026", "03/04/1999", "3/4/1999"),
    "d/m/yyyy": ("22/11/2026", None, None),  # 4/3/1999 would be April 3
    "m/d/yy": ("11/22/26", "03/04/99", "3/4/99"),
    "d.m.yyyy": ("22.11.2026", "04.03.1999", "4.3.1999"),
}

# A reader of the grammar as the docs state it, written apart from the writers: a pattern
# per format, the fields it captures, and the dates the format covers.
MONTH = "|".join(dates.MONTHS)
MON = "|".join(name[:3] for name in dates.MONTHS)
D, YYYY = r"(?P<d>0?[1-9]|[12]\d|3[01])", r"(?P<y>(19|20)\d\d)"
M = r"(?P<m>0?[1-9]|1[0-2])"
READINGS = {
    "yyyy-mm-dd": rf"{YYYY}-(?P<m>0[1-9]|1[0-2])-(?P<d>0[1-9]|[12]\d|3[01])",
    "d month yyyy": rf"{D} (?P<month>{MONTH}) {YYYY}",
    "d mon yyyy": rf"{D} (?P<mon>{MON}) {YYYY}",
    "month d, yyyy": rf"(?P<month>{MONTH}) {D}, {YYYY}",
    "mon d, yyyy": rf"(?P<mon>{MON}) {D}, {YYYY}",
    "mon d yyyy": rf"(?P<mon>{MON}) {D} {YYYY}",
    "m/d/yyyy": rf"{M}/{D}/{YYYY}",
    "d/m/yyyy": rf"(?P<d>1[3-9]|2\d|3[01])/{M}/{YYYY}",  # a first number > 12 is a day
    "m/d/yy": rf"{M}/{D}/(?P<yy>\d\d)",
    "d.m.yyyy": rf"{D}\.{M}\.{YYYY}",
}


def readings(source: str) -> set[tuple[str, datetime.date]]:
    """Every (format, date) the grammar reads `source` as."""
    found = set()
    for name, pattern in READINGS.items():
        match = re.fullmatch(pattern, source)
        if match is None:
            continue
        parts = match.groupdict()
        if parts.get("yy") is not None:  # POSIX: 69-99 are 19yy, 00-68 20yy
            year = int(parts["yy"]) + (1900 if int(parts["yy"]) >= 69 else 2000)
        else:
            year = int(parts["y"])
        if parts.get("month") is not None:
            month = dates.MONTHS.index(parts["month"]) + 1
        elif parts.get("mon") is not None:
            month = [m[:3] for m in dates.MONTHS].index(parts["mon"]) + 1
        else:
            month = int(parts["m"])
        try:
            found.add((name, datetime.date(year, month, int(parts["d"]))))
        except ValueError:  # no such day (31 nov)
            continue
    return found


def _format(name: str) -> DateFormat:
    return next(form for form in FORMATS if form.name == name)


def test_the_formats_are_the_documented_ones() -> None:
    assert [form.name for form in FORMATS] == list(EXAMPLES)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_each_format_writes_the_documented_examples(name: str) -> None:
    form = _format(name)
    nov_22, mar_4_padded, mar_4 = EXAMPLES[name]
    assert form.write(NOV_22, padded=False) == form.write(NOV_22, padded=True) == nov_22
    if mar_4 is None:
        assert not form.admits(MAR_4)
    else:
        assert form.admits(MAR_4)
        assert (form.write(MAR_4, padded=True), form.write(MAR_4, padded=False)) == (
            mar_4_padded,
            mar_4,
        )


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_every_source_reads_back_as_its_date_and_nothing_else(name: str) -> None:
    rng = random.Random(name)
    pairs = dates.sample_pairs(rng, 3000, held_out=False, formats=[_format(name)])
    for source, target in pairs:
        found = readings(source)
        # "may" is its own abbreviation: "4 may 2026" is both `d month yyyy` and `d mon yyyy`.
        assert {date for _, date in found} == {datetime.date.fromisoformat(target)}, source
        assert name in {form for form, _ in found}


def test_slashes_read_month_first_unless_the_first_number_is_past_12() -> None:
    assert readings("3/4/2026") == {("m/d/yyyy", datetime.date(2026, 3, 4))}
    assert readings("13/4/2026") == {("d/m/yyyy", datetime.date(2026, 4, 13))}
    assert not _format("d/m/yyyy").admits(datetime.date(2026, 4, 3))


def test_two_digit_years_pivot_at_69() -> None:
    yy = _format("m/d/yy")
    assert [yy.admits(datetime.date(year, 1, 1)) for year in (1968, 1969, 2068, 2069)] == [
        False,
        True,
        True,
        False,
    ]
    assert yy.write(datetime.date(1969, 7, 20), padded=False) == "7/20/69"
    assert yy.write(datetime.date(2068, 7, 20), padded=False) == "7/20/68"


def test_dates_span_1900_to_2099_in_every_format() -> None:
    years = [
        int(target[:4])
        for target in (t for _, t in dates.sample_pairs(random.Random(0), 5000, held_out=False))
    ]
    assert min(years) == 1900 and max(years) == 2099


def test_held_out_dates_never_appear_in_training() -> None:
    training = dates.sample_pairs(random.Random(0), 5000, held_out=False)
    held_out = dates.sample_pairs(random.Random(1), 500, held_out=True)
    assert not {t for _, t in training} & {t for _, t in held_out}
    assert all(dates.is_held_out(datetime.date.fromisoformat(t)) for _, t in held_out)


def test_formats_are_drawn_evenly() -> None:
    pairs = dates.sample_pairs(random.Random(0), 10_000, held_out=False)
    counts = dict.fromkeys(EXAMPLES, 0)
    for source, _ in pairs:
        for name, _ in readings(source):  # "may" counts for full and abbreviated names
            counts[name] += 1
    assert all(850 <= count <= 1250 for count in counts.values()), counts
