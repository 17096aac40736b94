"""Reading a device import: a CSV file (optionally gzip-compressed) into checked rows, or every row's errors.

Pure: it checks each row on its own and the file as a whole (duplicates, row count); what depends on the database
(ids already registered, groups that exist) is iot.services' to check. Nothing here writes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import zlib

from controlplane.errors import FieldError
from iot import validation

MAX_ROWS = 10_000
MAX_DECOMPRESSED_BYTES = 32 * 1024 * 1024
MAX_REPORTED_ERRORS = 1000
COLUMNS = ("device_id", "name", "product", "tags", "attributes", "groups", "enabled")
_TRUE = {"true", "1", "yes", ""}
_FALSE = {"false", "0", "no"}


@dataclasses.dataclass(frozen=True)
class ImportRow:
    line: int  # the row's line in the file; the header is line 1
    device_id: str
    name: str = ""
    product: str = ""
    tags: tuple[str, ...] = ()
    attributes: dict = dataclasses.field(default_factory=dict)
    groups: tuple[str, ...] = ()
    enabled: bool = True


class ImportInvalid(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(f"{len(errors)} error(s)")
        self.errors = errors


def row_error(line: int, column: str | None, message: str) -> FieldError:
    field = f"rows.{line}.{column}" if column else f"rows.{line}"
    where = f"line {line}" + (f", {column}" if column else "")
    return FieldError(field, f"{where}: {message}")


def decompress(raw: bytes, content_encoding: str) -> bytes:
    """The CSV bytes of an upload sent as is or with `Content-Encoding: gzip`, refusing a bomb."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding != "gzip":
        raise ImportInvalid([FieldError(None, f"Content-Encoding {content_encoding!r} is not supported; use gzip.")])
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = decompressor.decompress(raw, MAX_DECOMPRESSED_BYTES + 1)
    except zlib.error:
        raise ImportInvalid([FieldError(None, "The body is not valid gzip.")]) from None
    if len(data) > MAX_DECOMPRESSED_BYTES or decompressor.unconsumed_tail:
        raise ImportInvalid([FieldError(None, f"The CSV is over {MAX_DECOMPRESSED_BYTES} bytes uncompressed.")])
    return data


def parse(data: bytes) -> list[ImportRow]:
    """Every row of the CSV checked, or ImportInvalid listing each row's errors (nothing is half accepted)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportInvalid([FieldError(None, f"The CSV is not UTF-8 (byte {exc.start}).")]) from None
    if "\x00" in text:
        raise ImportInvalid([FieldError(None, "The CSV contains a NUL character.")])
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ImportInvalid([row_error(1, None, f"unreadable CSV: {exc}")]) from None
    if not header:
        raise ImportInvalid([FieldError(None, "The CSV is empty: its first line must name the columns.")])
    header = [name.strip() for name in header]
    errors: list[FieldError] = []
    unknown = [name for name in header if name not in COLUMNS]
    if unknown:
        errors.append(row_error(1, None, f"unknown column {unknown[0]!r}; the columns are {', '.join(COLUMNS)}"))
    if len(set(header)) != len(header):
        errors.append(row_error(1, None, "a column is named twice"))
    if "device_id" not in header:
        errors.append(row_error(1, None, "the device_id column is required"))
    if errors:
        raise ImportInvalid(errors)

    rows: list[ImportRow] = []
    first_line: dict[str, int] = {}
    total = 0
    while True:
        line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(row_error(line, None, f"unreadable CSV: {exc}"))
            break
        line = reader.line_num  # a quoted field may span lines: the row is reported where it ends
        if not record or all(not cell.strip() for cell in record):
            continue
        total += 1
        if total > MAX_ROWS:
            errors.append(FieldError(None, f"An import holds at most {MAX_ROWS} devices; split the file."))
            break
        if len(record) != len(header):
            errors.append(row_error(line, None, f"{len(record)} fields where the header names {len(header)}"))
            continue
        row, row_errors = _row(line, dict(zip(header, record)))
        if row is None or row_errors:
            errors.extend(row_errors)
            continue
        if row.device_id in first_line:
            errors.append(
                row_error(line, "device_id", f"{row.device_id!r} is already on line {first_line[row.device_id]}")
            )
            continue
        first_line[row.device_id] = line
        rows.append(row)
    if not rows and not errors:
        errors.append(FieldError(None, "The CSV names no device."))
    if errors:
        raise ImportInvalid(cap(errors))
    return rows


def cap(errors: list[FieldError]) -> list[FieldError]:
    if len(errors) <= MAX_REPORTED_ERRORS:
        return errors
    more = len(errors) - MAX_REPORTED_ERRORS
    return errors[:MAX_REPORTED_ERRORS] + [FieldError(None, f"…and {more} more error(s) not listed.")]


def _row(line: int, cells: dict[str, str]) -> tuple[ImportRow | None, list[FieldError]]:
    errors = []
    values: dict = {}

    def check(column, fn):
        try:
            values[column] = fn(cells.get(column, ""))
        except ValueError as exc:
            errors.append(row_error(line, column, str(exc)))

    check("device_id", lambda v: validation.device_id(v.strip()))
    check("name", lambda v: validation.text(v.strip(), max_length=128))
    check("product", lambda v: validation.text(v.strip(), max_length=64))
    check("tags", lambda v: tuple(validation.tags(_split(v))))
    check("groups", lambda v: tuple(validation.group_names(_split(v))))
    check("attributes", _attributes)
    check("enabled", _enabled)
    if errors:
        return None, errors
    return ImportRow(line=line, **values), []


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(";") if part.strip()]


def _attributes(value: str) -> dict:
    if not value.strip():
        return {}
    try:
        decoded = json.loads(value, parse_constant=_not_a_number)
    except (ValueError, RecursionError):
        raise ValueError('Must be a JSON object, e.g. {"firmware": "1.2"}.') from None
    return validation.attributes(decoded)


def _not_a_number(name: str):
    raise ValueError(f"{name} is not a JSON number.")


def _enabled(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("true or false (empty means true).")
