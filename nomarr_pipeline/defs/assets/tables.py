"""Tables in asset metadata: ``MetadataValue.table`` with a ``TableSchema``, so the UI shows
typed, sortable columns."""

from collections.abc import Iterable, Mapping, Sequence

import dagster as dg

Cell = str | int | float | bool | None


def metadata_table(columns: Mapping[str, str], rows: Iterable[Sequence[Cell]]) -> dg.TableMetadataValue:
    """``columns`` maps each column's name to its type (``string``, ``int``, ``float``,
    ``bool``); every row lists its cells in that order."""
    names = list(columns)
    return dg.MetadataValue.table(
        records=[dg.TableRecord(dict(zip(names, row, strict=True))) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns.items()]),
    )
