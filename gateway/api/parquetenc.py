"""The Parquet encoder of ``/api/export``: ``python -m gateway.api.parquetenc``.

A short-lived process per export, like the rollup worker and the cold reader, so that pyarrow
(about 83 MB just to import it) never lives in the gateway. Input on stdin: frames of a 4-byte
big-endian length and a msgpack document, one per page of readings, each the page's columns
``{"ts", "node_id", "metric", "value", "boot", "seq", "received", "flags"}`` (times in epoch
ms); end of input ends the file. Output on stdout: the Parquet file, one row group per page,
written as each page arrives so the HTTP response streams. The columns and types are the
dataset's (docs/parquet.md). A bad frame ends the process with a message on stderr and a
non-zero status; the file on stdout is then incomplete (no footer), which every reader refuses.
"""

from __future__ import annotations

import struct
import sys
from typing import IO, Any

import msgspec

__all__ = ["COLUMNS", "main"]

COLUMNS = ("ts", "node_id", "metric", "value", "boot", "seq", "received", "flags")


def _frames(stream: IO[bytes]) -> Any:
    while len(head := stream.read(4)) == 4:
        (n,) = struct.unpack(">I", head)
        body = stream.read(n)
        if len(body) != n:
            raise ValueError(f"truncated frame: {len(body)} of {n} bytes")
        yield msgspec.msgpack.decode(body)
    if head:
        raise ValueError("truncated frame header")


def main() -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("ts", pa.timestamp("ms", tz="UTC")),
            ("node_id", pa.dictionary(pa.int32(), pa.string())),
            ("metric", pa.dictionary(pa.int32(), pa.string())),
            ("value", pa.float64()),
            ("boot", pa.int32()),
            ("seq", pa.int64()),
            ("received", pa.timestamp("ms", tz="UTC")),
            ("flags", pa.int32()),
        ]
    )
    out = sys.stdout.buffer
    writer = pq.ParquetWriter(out, schema, compression="zstd")
    try:
        for page in _frames(sys.stdin.buffer):
            missing = [c for c in COLUMNS if c not in page]
            if missing:
                raise ValueError(f"page without columns {missing}")
            writer.write_table(pa.Table.from_pydict({c: page[c] for c in COLUMNS}, schema=schema))
            out.flush()
        writer.close()
        out.flush()
    except Exception as exc:
        print(f"parquet export failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
