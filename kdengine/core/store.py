"""Run store: SQLite (WAL) for runs and metrics, files for checkpoints, all under the data root.

Each thread gets its own connection (sqlite3 objects must not cross threads). A run whose owning
process died without finishing (status queued/running/paused and its pid gone) is marked
``interrupted`` when a store is opened, so a killed server never leaves a run "running" forever.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from kdengine.core.paths import data_root

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    config_json TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    method TEXT NOT NULL DEFAULT '',
    seed INTEGER NOT NULL DEFAULT 0,
    versions_json TEXT NOT NULL DEFAULT '{}',
    summary_json TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    pid INTEGER,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    updated REAL NOT NULL,
    parent TEXT,
    lesson TEXT,
    archive TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    epoch REAL NOT NULL,
    name TEXT NOT NULL,
    value REAL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id, name, step);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS artifacts_run ON artifacts(run_id, name, step);
CREATE INDEX IF NOT EXISTS runs_hash ON runs(config_hash, status);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    state_json TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
"""

# Columns added after the first release, with their type: a store made before gets them on open.
ADDED_COLUMNS = {"runs": {"lesson": "TEXT", "archive": "TEXT"}}

ACTIVE = ("queued", "running", "paused")
FINAL = ("done", "failed", "stopped", "interrupted")


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root).resolve() if root else data_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "runs.sqlite"
        self._local = threading.local()
        with self._conn() as c:
            c.executescript(SCHEMA)
        self._add_columns()
        self.recover()

    def _add_columns(self) -> None:
        for table, cols in ADDED_COLUMNS.items():
            have = {r["name"] for r in self._tx(f"PRAGMA table_info({table})").fetchall()}
            for col, kind in cols.items():
                if col not in have:
                    try:
                        self._tx(f"ALTER TABLE {table} ADD COLUMN {col} {kind}")
                    except sqlite3.OperationalError as e:   # another process added it first
                        if "duplicate column" not in str(e):
                            raise

    # -- connections -----------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _tx(self, sql: str, args: Iterable = ()) -> sqlite3.Cursor:
        return self._conn().execute(sql, tuple(args))

    # -- runs ------------------------------------------------------------------------------------
    def create_run(self, config: dict, config_hash: str, owner: str = "", name: str = "",
                   versions: dict | None = None, parent: str | None = None,
                   status: str = "queued", lesson: str | None = None) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        now = time.time()
        self._tx("INSERT INTO runs (id, name, owner, status, config_json, config_hash, method, seed, "
                 "versions_json, pid, created, updated, parent, lesson) "
                 "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (run_id, name, owner, status, json.dumps(config, sort_keys=True), config_hash,
                  config.get("method", {}).get("name", ""), config.get("train", {}).get("seed", 0),
                  json.dumps(versions or {}), os.getpid(), now, now, parent, lesson))
        return run_id

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        now = time.time()
        extra = ""
        if status == "running":
            extra = ", started = COALESCE(started, ?)"
        elif status in FINAL:
            extra = ", finished = ?"
        args: list[Any] = [status, error, now, os.getpid()]
        if extra:
            args.append(now)
        self._tx(f"UPDATE runs SET status = ?, error = ?, updated = ?, pid = ?{extra} WHERE id = ?",
                 (*args, run_id))

    def set_summary(self, run_id: str, summary: dict) -> None:
        self._tx("UPDATE runs SET summary_json = ?, updated = ? WHERE id = ?",
                 (json.dumps(summary, default=_jsonable), time.time(), run_id))

    def get_run(self, run_id: str) -> dict | None:
        row = self._tx("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _row(row) if row else None

    def find_run(self, prefix: str) -> dict | None:
        """A run by id or unique id prefix (for the CLI)."""
        rows = self._tx("SELECT * FROM runs WHERE id LIKE ? ORDER BY created DESC LIMIT 2",
                        (prefix.replace("%", "") + "%",)).fetchall()
        return _row(rows[0]) if len(rows) == 1 else None

    def list_runs(self, owner: str | None = None, status: str | None = None,
                  limit: int = 500, archived: bool | None = None) -> list[dict]:
        """Newest first; ``archived``: only the runs of closed classes (True) or of this one (False)."""
        sql, args = "SELECT * FROM runs", []
        conds = []
        if owner is not None:
            conds.append("owner = ?")
            args.append(owner)
        if status is not None:
            conds.append("status = ?")
            args.append(status)
        if archived is not None:
            conds.append("archive IS NOT NULL" if archived else "archive IS NULL")
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        sql += " ORDER BY created DESC LIMIT ?"
        args.append(limit)
        return [_row(r) for r in self._tx(sql, args).fetchall()]

    def runs_by_hash(self, config_hash: str, statuses: Iterable[str] | None = None) -> list[dict]:
        """Runs with this config hash, newest first (sweep resume and TA reuse find them here)."""
        sql, args = "SELECT * FROM runs WHERE config_hash = ?", [config_hash]
        if statuses is not None:
            sql, args = _and_in(sql, args, "status", statuses)
        return [_row(r) for r in self._tx(sql + " ORDER BY created DESC", args).fetchall()]

    # -- sweeps (grids, TA-gap experiments): spec plus a JSON state the driver keeps current -----
    def save_sweep(self, sweep_id: str, kind: str, spec: dict, state: dict, status: str,
                   name: str = "", owner: str = "") -> None:
        now = time.time()
        self._tx("INSERT INTO sweeps (id, kind, name, owner, status, spec_json, state_json, created, "
                 "updated) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET status = "
                 "excluded.status, state_json = excluded.state_json, updated = excluded.updated",
                 (sweep_id, kind, name, owner, status, json.dumps(spec, default=_jsonable),
                  json.dumps(state, default=_jsonable), now, now))

    def get_sweep(self, sweep_id: str) -> dict | None:
        row = self._tx("SELECT * FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        return _sweep_row(row) if row else None

    def list_sweeps(self, kind: str | None = None, owner: str | None = None,
                    limit: int = 100) -> list[dict]:
        sql, conds, args = "SELECT * FROM sweeps", [], []
        for col, val in (("kind", kind), ("owner", owner)):
            if val is not None:
                conds.append(f"{col} = ?")
                args.append(val)
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        rows = self._tx(sql + " ORDER BY created DESC LIMIT ?", (*args, limit)).fetchall()
        return [_sweep_row(r) for r in rows]

    def delete_run(self, run_id: str) -> None:
        for table, col in (("metrics", "run_id"), ("artifacts", "run_id"), ("runs", "id")):
            self._tx(f"DELETE FROM {table} WHERE {col} = ?", (run_id,))
        ck = self.checkpoint_path(run_id)
        ck.unlink(missing_ok=True)

    def prune(self, keep: int = 100, statuses: tuple = FINAL, owner: str | None = None,
              spare: Iterable[str] = ()) -> int:
        """Delete all but the ``keep`` newest finished runs (of ``owner``, when given), never a run
        in ``spare``; returns how many went."""
        marks = ",".join("?" * len(statuses))
        sql, args = f"SELECT id FROM runs WHERE status IN ({marks})", list(statuses)
        if owner is not None:
            sql, args = sql + " AND owner = ?", args + [owner]
        rows = self._tx(sql + " ORDER BY created DESC LIMIT -1 OFFSET ?", (*args, keep)).fetchall()
        spare = set(spare)
        gone = [r["id"] for r in rows if r["id"] not in spare]
        for rid in gone:
            self.delete_run(rid)
        return len(gone)

    def set_owner(self, old: str, new: str) -> int:
        """Give every run and sweep of ``old`` to ``new`` (two identities of one student merged);
        returns how many runs moved."""
        n = self._tx("UPDATE runs SET owner = ? WHERE owner = ?", (new, old)).rowcount
        self._tx("UPDATE sweeps SET owner = ? WHERE owner = ?", (new, old))
        return n

    def archive_runs(self, label: str) -> list[str]:
        """Tag every run of the current class with ``label`` (a closed class); returns their ids."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")       # no run created between the read and the update
        ids = [r["id"] for r in conn.execute("SELECT id FROM runs WHERE archive IS NULL")]
        conn.execute("UPDATE runs SET archive = ? WHERE archive IS NULL", (label,))
        conn.execute("COMMIT")
        return ids

    def recover(self) -> list[str]:
        """Mark runs whose process is gone as interrupted."""
        rows = self._tx(f"SELECT id, pid FROM runs WHERE status IN ({','.join('?' * len(ACTIVE))})",
                        ACTIVE).fetchall()
        lost = [r["id"] for r in rows if r["pid"] != os.getpid() and not _pid_alive(r["pid"])]
        for rid in lost:
            self.set_status(rid, "interrupted", "the process running this run ended before it "
                                                "finished; resume continues from the last checkpoint")
        return lost

    # -- metrics ---------------------------------------------------------------------------------
    def add_metrics(self, run_id: str, points: Iterable[tuple[int, float, dict[str, float]]]) -> None:
        """A run's points, each ``(step, epoch, {name: value})``, in one transaction."""
        rows = [(run_id, step, epoch, k, _num(v)) for step, epoch, values in points
                for k, v in values.items()]
        conn = self._conn()
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO metrics VALUES (?,?,?,?,?)", rows)
        conn.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time(), run_id))
        conn.execute("COMMIT")

    def metrics(self, run_id: str, names: Iterable[str] | None = None) -> list[dict]:
        sql, args = "SELECT step, epoch, name, value FROM metrics WHERE run_id = ?", [run_id]
        if names is not None:
            sql, args = _and_in(sql, args, "name", names)
        sql += " ORDER BY step, rowid"
        return [dict(r) for r in self._tx(sql, args).fetchall()]

    def series(self, run_id: str) -> dict[str, list[tuple[int, float, float]]]:
        """name -> [(step, epoch, value), ...]."""
        out: dict[str, list] = {}
        for m in self.metrics(run_id):
            out.setdefault(m["name"], []).append((m["step"], m["epoch"], m["value"]))
        return out

    def truncate_metrics(self, run_id: str, after_step: int) -> None:
        self._tx("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, after_step))

    # -- artifacts (plain JSON, e.g. boundary samples, grid snapshots) ----------------------------
    def add_artifact(self, run_id: str, step: int, name: str, data: Any) -> None:
        self._tx("INSERT INTO artifacts VALUES (?,?,?,?)",
                 (run_id, step, name, json.dumps(data, default=_jsonable)))

    def artifact_names(self, run_id: str) -> list[str]:
        rows = self._tx("SELECT DISTINCT name FROM artifacts WHERE run_id = ?", (run_id,)).fetchall()
        return [r["name"] for r in rows]

    def artifacts(self, run_id: str, name: str) -> list[tuple[int, Any]]:
        rows = self._tx("SELECT step, json FROM artifacts WHERE run_id = ? AND name = ? ORDER BY step",
                        (run_id, name)).fetchall()
        return [(r["step"], json.loads(r["json"])) for r in rows]

    # -- files -----------------------------------------------------------------------------------
    def checkpoint_path(self, run_id: str) -> Path:
        return self.root / "checkpoints" / f"{run_id}.pt"

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _and_in(sql: str, args: list, column: str, values: Iterable) -> tuple[str, list]:
    """``sql`` narrowed to rows whose ``column`` is one of ``values`` (one placeholder each)."""
    values = list(values)
    return f"{sql} AND {column} IN ({','.join('?' * len(values))})", args + values


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _sweep_row(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["spec"] = json.loads(d.pop("spec_json"))
    d["state"] = json.loads(d.pop("state_json") or "{}")
    return d


def _row(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["config"] = json.loads(d.pop("config_json"))
    d["versions"] = json.loads(d.pop("versions_json") or "{}")
    d["summary"] = json.loads(d.pop("summary_json") or "{}")
    return d
