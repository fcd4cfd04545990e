"""The main job's report (``report.md`` with tables and figures, ``report.json``): :func:`write_report`."""

from rayrec.report.writer import write_report

__all__ = ["write_report"]
