"""Labels from a CSV file (``ingest --labels FILE.csv``), for sources whose folders do not say the class.

Hospital exports arrive as folders of studies, series and extension-less files named by
number, with the diagnosis in a spreadsheet. The file maps each image to its class, by the
file's path in its source (column ``path``, as the source lists it: for an archive, the member
name) or by the DICOM SOPInstanceUID (column ``sop_instance_uid``), and may give a patient key
(column ``patient``) that groups images for the splits. A row may fill either key column;
a file is matched by path first. Header names are fixed, so a typo is an error and never a
silently ignored column.

Nothing of a row is ever written as is: labels become class names, patient keys are hashed
(:mod:`.patients`), and problems are reported by line number, because a UID or patient key in a
log line or manifest would be personal data.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from entropy_ft import storage
from entropy_ft.errors import UserError

PATH, SOP, LABEL, PATIENT = "path", "sop_instance_uid", "label", "patient"
COLUMNS = (PATH, SOP, LABEL, PATIENT)
UNMATCHED_LINES_LISTED = 20  # the manifest lists this many unmatched lines; the count covers them all


@dataclass(frozen=True)
class Row:
    line: int  # in the file, counting the header as line 1
    label: str
    patient: str | None  # raw, hashed before it goes anywhere


@dataclass(frozen=True)
class LabelFile:
    uri: str
    rows: int
    by_path: dict[str, Row]
    by_sop: dict[str, Row]

    def match(self, path: str, sop_instance_uid: str | None) -> tuple[Row, str] | None:
        """The row for a file, and which column matched it (path first); None when no row names it."""
        if (row := self.by_path.get(normalise_path(path))) is not None:
            return row, PATH
        if sop_instance_uid and (row := self.by_sop.get(sop_instance_uid)) is not None:
            return row, SOP
        return None


def normalise_path(path: str) -> str:
    """A path as sources list members: forward slashes, no ``./`` or doubled slashes."""
    return posixpath.normpath(path.strip().replace("\\", "/"))


def read(uri: str) -> LabelFile:
    """Read and check a label file (local or ``s3://``); every problem is a UserError naming the file."""
    try:
        data = storage.read_bytes(uri)
    except UserError as exc:  # "<uri>: no such file", said of the flag
        raise UserError(f"--labels {exc}") from exc
    try:
        text = data.decode("utf-8-sig")  # Excel writes a byte-order mark
    except UnicodeDecodeError as exc:
        raise UserError(f"--labels {uri}: not UTF-8 text (save the sheet as CSV UTF-8)") from exc
    return parse(text, uri)


def parse(text: str, uri: str) -> LabelFile:
    """The label file's rows by path and by SOPInstanceUID, after checking its columns and every row."""
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    where = f"--labels {uri}"
    if not any(header):
        raise UserError(f"{where}: empty; expected a header row with {LABEL} and {PATH} or {SOP}")
    for name in header:
        if name not in COLUMNS:
            raise UserError(f"{where}: unknown column {name!r}; the columns are {', '.join(COLUMNS)} "
                            f"({LABEL} and {PATH} or {SOP} required)")
        if header.count(name) > 1:
            raise UserError(f"{where}: column {name!r} appears twice")
    if LABEL not in header:
        raise UserError(f"{where}: no {LABEL!r} column (the class of each image)")
    if PATH not in header and SOP not in header:
        raise UserError(f"{where}: needs a {PATH!r} or a {SOP!r} column to say which image each row labels")
    by_key: dict[str, dict[str, Row]] = {PATH: {}, SOP: {}}
    rows = 0
    for line, values in _rows(reader, len(header), where):
        rows += 1
        cell = dict(zip(header, (v.strip() for v in values)))
        if not cell[LABEL]:
            raise UserError(f"{where}, line {line}: empty {LABEL}")
        keys = {PATH: normalise_path(cell[PATH]) if cell.get(PATH) else "", SOP: cell.get(SOP, "")}
        if not any(keys.values()):
            raise UserError(f"{where}, line {line}: neither {PATH} nor {SOP} is given")
        row = Row(line, cell[LABEL], cell.get(PATIENT) or None)
        for column, key in keys.items():
            if not key:
                continue
            earlier = by_key[column].setdefault(key, row)
            if earlier is not row and (earlier.label, earlier.patient) != (row.label, row.patient):
                raise UserError(f"{where}, line {line}: the same {column} as line {earlier.line} "
                                "with another label or patient")
    return LabelFile(uri, rows, by_key[PATH], by_key[SOP])


def _rows(reader, width: int, where: str) -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank row, each with exactly ``width`` fields."""
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        if len(values) != width:
            raise UserError(f"{where}, line {reader.line_num}: {len(values)} fields, the header has {width}")
        yield reader.line_num, values


def report(labels: LabelFile, matched_lines: set[int], matched_by: dict[str, int], unlabelled: int) -> dict:
    """The manifest's ``labels`` section: what matched, what did not (by line number only)."""
    lines = sorted({row.line for table in (labels.by_path, labels.by_sop) for row in table.values()})
    unmatched = [line for line in lines if line not in matched_lines]
    return {
        "file": labels.uri,
        "rows": labels.rows,
        "matched_rows": len(lines) - len(unmatched),
        "unmatched_rows": len(unmatched),
        "unmatched_lines": unmatched[:UNMATCHED_LINES_LISTED],
        "files_matched_by": {column: matched_by.get(column, 0) for column in (PATH, SOP)},
        "unlabelled_files": unlabelled,
    }
