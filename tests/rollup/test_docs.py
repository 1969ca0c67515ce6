"""The DuckDB and pandas snippets of docs/parquet.md run against a real rolled dataset."""

from __future__ import annotations

import re
from pathlib import Path

from tests.rollup.conftest import HOUR, Store, fleet

DOC = Path(__file__).resolve().parents[2] / "docs" / "parquet.md"


def snippets() -> dict[str, object]:
    env: dict[str, object] = {}
    for code in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S):
        exec(code, env)
    return env


async def test_doc_snippets(store: Store) -> None:
    await store.add(fleet(HOUR, 3, 12))
    await store.rollup.run_once()
    env = snippets()
    means = env["hourly_means"](store.data_dir)  # type: ignore[operator]
    want = [(f"node-{n:03d}", "temp_c", 12) for n in range(3)]
    assert [(r[0], r[1], r[4]) for r in means] == want
    frame = env["node_frame"](store.data_dir, "node-001")  # type: ignore[operator]
    assert list(frame.columns) == ["pressure_hpa", "rh_pct", "temp_c"]
    assert len(frame) == 12 and (frame["rh_pct"] == 45.1).all()
