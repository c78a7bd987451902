"""Numbers have provenance: each number a README table quotes in its result columns appears in
the results file that the row names (no training here: this reads files).

A table row names its file as `results/NAME.json`; every number in the columns after the first
(the first column describes the case) must match a number of that file, rounded to the digits
quoted, as a fraction or as a percentage (94.1 matches 0.9412), ignoring a leading ~ or x. A
row of the tables below that quotes numbers but names no results file fails the test. In docs/,
every table row that names a results file is checked the same way.
"""
import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# README sections whose tables hold measurements
MEASURED_SECTIONS = ("## Speed and benchmarks", "## Results")
NUMBER = re.compile(r"(?<![\w.])[~x]?(\d+(?:,\d{3})*(?:\.\d+)?)(?![\w.])")
RESULTS_REF = re.compile(r"results/[\w.\-/]+\.json")


def _sections(text: str) -> dict[str, list[str]]:
    out, current = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line.strip()
            out[current] = []
        elif current:
            out[current].append(line)
    return out


def measured_rows() -> list[tuple[str, str, list[str]]]:
    """(section, row text, cells) of the table rows of the measured sections."""
    rows = []
    for name, lines in _sections(README.read_text()).items():
        if not name.startswith(MEASURED_SECTIONS):
            continue
        for line in lines:
            if line.startswith("|") and not re.match(r"^\|[\s\-|:]+\|$", line):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                rows.append((name, line, cells))
    return [r for r in rows if not _is_header(r)]


def _is_header(row) -> bool:
    # the first row of each table (its header) quotes no numbers of its own
    return not any(NUMBER.search(_strip_refs(c)) for c in row[2][1:])


def _strip_refs(text: str) -> str:
    return RESULTS_REF.sub("", re.sub(r"`[^`]*`", lambda m: m.group(0) if "results/" in m.group(0) else "", text))


def _numbers(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)] if math.isfinite(obj) else []
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return []


def _matches(quoted: str, values: list[float]) -> bool:
    q = float(quoted.replace(",", ""))
    digits = len(quoted.split(".")[1]) if "." in quoted else 0
    tol = 0.5 * 10 ** (-digits) + 1e-9
    return any(abs(v - q) <= tol or abs(100 * v - q) <= tol for v in values)


def test_the_measured_sections_exist_and_hold_tables():
    assert len(measured_rows()) >= 5


@pytest.mark.parametrize("section,row,cells", measured_rows(), ids=lambda x: x[:60] if isinstance(x, str) else "")
def test_each_quoted_number_is_in_the_results_file_the_row_names(section, row, cells):
    refs = RESULTS_REF.findall(row)
    assert refs, f"a row of {section!r} quotes numbers but names no results file: {row}"
    values = []
    for ref in refs:
        path = ROOT / ref
        assert path.exists(), f"{ref} (named in README) does not exist"
        values += _numbers(json.loads(path.read_text()))
    missing = [m for c in cells[1:] for m in NUMBER.findall(_strip_refs(c)) if not _matches(m, values)]
    assert not missing, f"numbers not found in {', '.join(refs)}: {missing} (row: {row})"


def doc_rows() -> list[tuple[str, str, list[str]]]:
    """(doc file, row text, cells) of the table rows in docs/*.md that name a results file."""
    rows = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("|") and RESULTS_REF.search(line):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                rows.append((path.name, line, cells))
    return rows


def test_the_docs_name_results_files_in_their_tables():
    assert len(doc_rows()) >= 10


@pytest.mark.parametrize("doc,row,cells", doc_rows(), ids=lambda x: x[:60] if isinstance(x, str) else "")
def test_each_number_of_a_docs_row_is_in_the_results_file_it_names(doc, row, cells):
    test_each_quoted_number_is_in_the_results_file_the_row_names(doc, row, cells)


# Kept from before results files carried provenance, and described as such where the README names it.
LEGACY = ("gpu_check_h100.json",)


def test_every_results_file_records_its_provenance():
    """Each results file says where it came from: the commit, the command, torch, the threads and
    the seeds (not null: which seed each random part used)."""
    for path in sorted((ROOT / "results").glob("*.json")):
        if path.name in LEGACY:
            continue
        data = json.loads(path.read_text())
        missing = [k for k in ("commit", "command", "torch", "threads", "seeds") if data.get(k) in (None, "", [])]
        assert not missing, f"{path.name} lacks {missing}"
