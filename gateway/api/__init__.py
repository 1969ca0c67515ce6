"""The HTTP side of the gateway: REST under ``/api``, the live WebSocket, metrics, the dashboard.

It only reads the store (its own read-only connections) and hears about new data from the store
writer's commit listener; the one thing it writes, a command record, goes through the writer.

Modules, one concept each:

- ``params``: query-parameter parsing (times, durations, lists) with errors naming the parameter;
- ``reads``: a small pool of read-only SQLite connections on their own threads;
- ``query``: series and raw readings over a ``Source`` (SQLite now; Parquet plugs in beside it);
- ``views``: nodes, stats, quarantine as plain data;
- ``live``: the hub that fans commits out to WebSocket clients through bounded queues;
- ``auth``: the admin token and the guards;
- ``metrics``: ``/metrics`` in Prometheus text format;
- ``routes``: the handlers; ``app``: the Litestar app; ``server``: uvicorn in the gateway's loop.
"""
