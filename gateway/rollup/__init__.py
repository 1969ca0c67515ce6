"""Hourly Parquet rollup, retention and the disk budget (docs/parquet.md).

Data flows one way: the store's ``messages``/``readings`` -> ``worker`` (a short-lived process
that imports pyarrow and writes one file per closed UTC hour) -> the catalog (``parquet_hours``)
-> ``retention`` (hot rows leave SQLite once rolled and delivered; old Parquet leaves by age or
size) and ``budget`` (drops delivered Parquet, then holds ingest commits while over budget).

Modules that the long-running gateway imports never import pyarrow (it costs ~83 MB of RSS):
``hours``, ``catalog``, ``retention``, ``budget`` and ``scheduler``. ``parquet``, ``worker``,
``verify`` and ``export`` do, and run in the worker process or the CLI only.
"""
