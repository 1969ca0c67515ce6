"""The deduplication snippets in docs/sync.md work as written."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

DOC = (Path(__file__).resolve().parents[2] / "docs" / "sync.md").read_text()


def block(lang: str) -> str:
    (code,) = [b for b in re.findall(rf"```{lang}\n(.*?)```", DOC, re.S) if "deduplicate" in b
               or "ON CONFLICT" in b]
    return code


def test_python_deduplication() -> None:
    scope: dict[str, object] = {}
    exec(block("python"), scope)
    records = [{"node_id": n, "boot": b, "seq": s, "v": i} for i, (n, b, s) in enumerate(
        [("a", 1, 0), ("a", 1, 1), ("b", 1, 0), ("a", 1, 1), ("a", 2, 0), ("b", 1, 0)])]
    out = list(scope["deduplicate"](records))  # type: ignore[operator]
    assert [r["v"] for r in out] == [0, 1, 2, 4]


def test_sql_deduplication() -> None:
    conn = sqlite3.connect(":memory:")
    sql = block("sql")
    conn.executescript(sql)
    insert = sql[sql.index("INSERT"):]
    conn.executescript(insert)  # the same record again: a duplicate, ignored
    assert conn.execute("SELECT count(*) FROM readings").fetchone() == (1,)


def test_lowest_delivered_is_the_retention_floor(tmp_path: Path) -> None:
    from gateway.store import schema
    from gateway.sync.runner import lowest_delivered

    conn = schema.connect(str(tmp_path / "s.db"))
    schema.migrate(conn)
    assert lowest_delivered(conn, []) is None
    conn.execute("INSERT INTO sink_cursors (name, type, cursor) VALUES ('a', 'mqtt', 50)")
    conn.execute("INSERT INTO sink_cursors (name, type, cursor) VALUES ('b', 'kafka', 20)")
    assert lowest_delivered(conn, ["a"]) == 50
    assert lowest_delivered(conn, ["a", "b"]) == 20
    assert lowest_delivered(conn, ["a", "new"]) == 0  # a new sink starts from the beginning
