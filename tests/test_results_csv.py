"""karl.results_csv: the one resumable per-image results file (karl-eval and karl-complexity)."""

import csv

import pytest

from karl.results_csv import ResultsCSV, ResultsFileError

FIELDS = ["path", "epsilon", "kc_hat", "l1"]


def _file(path) -> ResultsCSV:
    return ResultsCSV(path, FIELDS, ("path", "epsilon"))


def _rows(*names, eps=0.05):
    return [{"path": n, "epsilon": eps, "kc_hat": 3, "l1": 0.125} for n in names]


def _lines(path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_append_then_resume_in_a_new_process_keeps_every_row_once(tmp_path):
    path = tmp_path / "out" / "rows.csv"
    first = _file(path)
    assert first.read() == [] and first.done() == set()
    assert first.append(_rows("a.png", "b.png")) == 2
    assert first.append(_rows("b.png", "c.png")) == 1  # b is there: dropped
    again = _file(path)  # a rerun
    assert again.done() == {("a.png", "0.05"), ("b.png", "0.05"), ("c.png", "0.05")}
    assert again.append(_rows("a.png", "c.png") + _rows("a.png", eps=0.1)) == 1  # only the new epsilon
    lines = _lines(path)
    assert lines[0] == FIELDS and len(lines) == 5  # one header, four rows, no duplicate
    assert [r["path"] for r in again.read()] == ["a.png", "b.png", "c.png", "a.png"]


@pytest.mark.parametrize("cut", [2, 6])  # inside the last column (l1 "0.1" of "0.125"), before it
def test_a_row_cut_short_by_a_crash_is_redone_not_glued_to_the_next(tmp_path, cut):
    path = tmp_path / "rows.csv"
    _file(path).append(_rows("a.png", "b.png"))
    data = path.read_bytes()
    path.write_bytes(data[:-cut])  # killed while writing b's row: no newline
    resumed = _file(path)
    assert [r["path"] for r in resumed.read()] == ["a.png"] and resumed.done() == {("a.png", "0.05")}
    assert resumed.append(_rows("b.png")) == 1
    assert _lines(path) == [FIELDS, ["a.png", "0.05", "3", "0.125"], ["b.png", "0.05", "3", "0.125"]]


def test_a_header_cut_short_is_rewritten(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("path,epsi")  # killed while writing the header
    out = _file(path)
    assert out.read() == [] and out.append(_rows("a.png")) == 1
    assert _lines(path) == [FIELDS, ["a.png", "0.05", "3", "0.125"]]


def test_other_columns_are_refused_with_one_clear_line(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("path,epsilon,tokens\nx.png,0.05,3\n")
    with pytest.raises(ResultsFileError, match=r"rows.csv has columns \['path', 'epsilon', 'tokens'\], not "
                                               r"\['path', 'epsilon', 'kc_hat', 'l1'\]: pass --overwrite"):
        _file(path).done()
    assert path.read_text() == "path,epsilon,tokens\nx.png,0.05,3\n"  # untouched


def test_rows_with_too_many_or_too_few_fields_are_not_results(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(",".join(FIELDS) + "\na.png,0.05,3,0.1\nb.png,0.05\nc.png,0.05,3,0.1,extra\n")
    assert [r["path"] for r in _file(path).read()] == ["a.png"]


def test_rewrite_is_atomic_and_deduplicated(tmp_path):
    path = tmp_path / "rows.csv"
    out = _file(path)
    out.append(_rows("a.png"))
    out.rewrite(_rows("b.png", "a.png", "b.png"))
    assert [r["path"] for r in out.read()] == ["b.png", "a.png"]
    assert not list(tmp_path.glob("*.tmp")) and out.append(_rows("a.png")) == 0
    out.rewrite([])
    assert _lines(path) == [FIELDS]


def test_key_must_be_columns():
    with pytest.raises(ValueError, match="key"):
        ResultsCSV("x.csv", FIELDS, ("image_id",))
