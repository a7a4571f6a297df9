"""Tables in asset metadata, with a ``TableSchema``: the UI shows typed, sortable columns."""

from collections.abc import Iterable, Mapping, Sequence

import dagster as dg

Cell = str | int | float | bool | None


def metadata_table(columns: Mapping[str, str], rows: Iterable[Sequence[Cell]]) -> dg.TableMetadataValue:
    """``columns``: each column's name and type (``string``, ``int``, ``float``, ``bool``), as in each row."""
    names = list(columns)
    return dg.MetadataValue.table(
        records=[dg.TableRecord(dict(zip(names, row, strict=True))) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns.items()]),
    )
