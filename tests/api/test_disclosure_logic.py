"""Secondary suppression, provisional status and revision causes: the pure rules."""

from __future__ import annotations

from dataclasses import replace
from itertools import product

from hypothesis import given
from hypothesis import strategies as st

from api.revisions import CellKey, by_columns, cause_of, revisions
from api.statistics import StatisticsCell, provisional, secondary_suppression

VALUES = (
    "mean",
    "min",
    "max",
    "total_consumption",
    "readings",
    "flagged",
    "readings_received",
    "completeness",
)


def cell(
    district: str | None = "_T",
    provenance: str | None = "_T",
    devices: int = 5,
    k: int = 3,
    period: str = "2024-01",
    total: float = 10.0,
) -> StatisticsCell:
    status = "O" if devices == 0 else ("Q" if devices < k else "A")
    hidden = status == "Q"
    return StatisticsCell(
        period=period,
        district=district,
        domain="_T",
        provenance=provenance,
        devices_reporting=devices,
        readings=None if hidden else devices * 10,
        mean=None if hidden or status == "O" else 1.0,
        min=None if hidden or status == "O" else 0.5,
        max=None if hidden or status == "O" else 2.0,
        total_consumption=None if hidden or status == "O" else total,
        flagged=None if hidden else 0,
        devices_expected=devices,
        readings_expected=devices * 10.0,
        readings_received=None if hidden else devices * 10,
        completeness=None if hidden else 1.0,
        devices_without_interval=0,
        obs_status=status,  # type: ignore[arg-type]
        suppressed=hidden,
        conf_status="C" if hidden else "F",
    )


def test_one_breakdown_protects_the_lone_suppressed_cell_with_the_smallest() -> None:
    cells = [cell("a", devices=9), cell("b", devices=2), cell("c", devices=4), cell("d", devices=4)]
    out = secondary_suppression(cells, ["district"])
    assert [(c.district, c.obs_status, c.conf_status) for c in out] == [
        ("a", "A", "F"),
        ("b", "Q", "C"),
        ("c", "Q", "D"),  # 4 devices like d: the lower key
        ("d", "A", "F"),
    ]
    hidden = out[2]
    assert all(getattr(hidden, name) is None for name in (*VALUES, "completeness"))
    assert (hidden.suppressed, hidden.devices_reporting, hidden.devices_expected) == (True, 4, 4)


def test_cells_without_data_protect_nothing_and_two_suppressed_need_nothing() -> None:
    zero = [cell("a", devices=0), cell("b", devices=1), cell("c", devices=7)]
    assert [c.conf_status for c in secondary_suppression(zero, ["district"])] == ["F", "C", "D"]
    two = [cell("a", devices=1), cell("b", devices=2), cell("c", devices=7)]
    assert secondary_suppression(two, ["district"]) == two
    alone = [cell("a", devices=1), cell("b", devices=0)]
    assert secondary_suppression(alone, ["district"]) == alone


def test_months_are_separate_tables_and_no_breakdown_is_left_alone() -> None:
    cells = [cell("a", devices=1), cell("b", devices=5), cell("a", devices=5, period="2024-02")]
    out = secondary_suppression(cells, ["district"])
    assert [c.obs_status for c in out] == ["Q", "Q", "A"]
    assert secondary_suppression([cell(devices=1)], []) == [cell(devices=1)]


def test_two_breakdowns_iterate_until_every_line_is_safe() -> None:
    """x/p is the only suppressed cell; its row and column each need a second, then those lines too."""
    devices = {("x", "p"): 1, ("x", "q"): 5, ("x", "r"): 6, ("y", "p"): 7, ("y", "q"): 8, ("y", "r"): 9}
    cells = [cell(d, p, devices=n) for (d, p), n in devices.items()]
    out = secondary_suppression(cells, ["district", "provenance"])
    assert {(c.district, c.provenance) for c in out if c.suppressed} == {
        ("x", "p"),
        ("x", "q"),  # row x: the smallest other
        ("y", "p"),  # column p: the only other
        ("y", "q"),  # then column q and row y each had one: y/q closes both
    }
    _assert_safe(out, ("district", "provenance"))


@given(st.lists(st.integers(0, 6), min_size=9, max_size=9))
def test_no_line_is_left_with_a_single_suppressed_cell(counts: list[int]) -> None:
    keys = list(product("abc", ["p", "q", "r"]))
    cells = [cell(d, p, devices=n) for (d, p), n in zip(keys, counts, strict=True)]
    out = secondary_suppression(cells, ["district", "provenance"])
    _assert_safe(out, ("district", "provenance"))
    # Only ever adds suppression, and never to a cell without data.
    for before, after in zip(cells, out, strict=True):
        assert after == before or (after.conf_status == "D" and before.obs_status == "A")


def _assert_safe(cells: list[StatisticsCell], dims: tuple[str, str]) -> None:
    for free, fixed in (dims, dims[::-1]):
        lines: dict[object, list[StatisticsCell]] = {}
        for c in cells:
            lines.setdefault((c.period, getattr(c, fixed)), []).append(c)
        for line in lines.values():
            hidden = [c for c in line if c.suppressed]
            others = [c for c in line if not c.suppressed and c.obs_status != "O"]
            assert len(hidden) != 1 or not others, (free, line)


def test_provisional_marks_only_normal_cells() -> None:
    assert provisional(cell(devices=5)).obs_status == "P"
    assert provisional(cell(devices=1)).obs_status == "Q"
    assert provisional(cell(devices=0)).obs_status == "O"


def test_by_columns_is_canonical() -> None:
    assert by_columns(["provenance", "district"]) == "district,provenance"
    assert by_columns([]) == ""


def test_causes() -> None:
    old = cell("a", devices=5)
    assert cause_of(old, replace(old, devices_expected=6, readings_expected=60.0)) == "registry"
    assert cause_of(old, replace(old, devices_without_interval=1)) == "registry"
    assert cause_of(old, replace(old, readings=51, mean=1.1)) == "late_readings"
    assert cause_of(old, replace(old, devices_reporting=6, devices_without_interval=1)) == "late_readings"
    assert cause_of(old, replace(old, total_consumption=11.0)) == "correction"
    secondary = secondary_suppression([old, cell("b", devices=1)], ["district"])[0]
    assert cause_of(old, secondary) == "disclosure"
    silent = replace(cell("n", devices=0), devices_expected=1, readings_expected=31.0)
    assert cause_of(None, silent) == "registry"  # a newly expected device that never reported
    assert cause_of(None, replace(cell("n", devices=1), devices_expected=0, readings_expected=0.0)) == (
        "late_readings"
    )


def test_revisions_list_each_changed_published_field() -> None:
    old: dict[CellKey, StatisticsCell] = {("district", "2024-01", "a", "_T", "_T"): cell("a", devices=5)}
    new_a = replace(cell("a", devices=5), readings=55, mean=1.25, readings_expected=50.0000000000001)
    new: dict[CellKey, StatisticsCell] = {
        ("district", "2024-01", "a", "_T", "_T"): new_a,
        ("district", "2024-01", None, "_T", "_T"): cell(None, devices=1),
    }
    revs = revisions(old, new)
    # The unknown district (null key) sorts first; float noise in readings_expected is no revision.
    assert [(r.district, r.field, r.old, r.new, r.cause) for r in revs] == [
        (None, "devices_reporting", None, 1, "registry"),
        (None, "devices_expected", None, 1, "registry"),
        (None, "readings_expected", None, 10.0, "registry"),
        (None, "devices_without_interval", None, 0, "registry"),
        (None, "obs_status", None, "Q", "registry"),
        (None, "conf_status", None, "C", "registry"),
        ("a", "readings", 50, 55, "late_readings"),
        ("a", "mean", 1.0, 1.25, "late_readings"),
    ]
    assert revisions(old, old) == []
