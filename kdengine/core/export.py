"""Export a stored run: config, summary and metrics as JSON, or its metrics as CSV."""
from __future__ import annotations

import csv
import io
import json


def export_run(store, run_id: str, fmt: str) -> str:
    """A run's config, summary and metrics as JSON, or its metrics as CSV (long format)."""
    row = store.get_run(run_id)
    metrics = store.metrics(run_id)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["run_id", "step", "epoch", "name", "value"])
        for m in metrics:
            w.writerow([run_id, m["step"], m["epoch"], m["name"], m["value"]])
        return buf.getvalue()
    return json.dumps({"run": {k: row[k] for k in ("id", "name", "status", "error", "config",
                                                   "summary", "versions", "created", "finished")},
                       "metrics": metrics}, indent=1, default=str)
