"""The Ray Tune sweep backend: the same cells, run as Tune trials on a local or remote Ray cluster.

Optional: ``pip install -r requirements-cluster.txt`` (``ray[tune]``). Without an address, a local
Ray instance is started with as many CPUs as this machine has (``ray.init(num_cpus=...,
include_dashboard=False)``, ~5 s here) and shut down afterwards; ``KD_RAY_ADDRESS`` (e.g.
``ray://head:10001`` or ``auto``) points at an existing cluster instead.

Each trial runs :class:`kdengine.run.trainer.Trainer` on its node and reports its metric events with
every ``tune.report``; a driver-side Tune callback writes them into this machine's store as they
arrive, so the run rows a page watches fill in live, and the final report carries the summary and
the trained student's weights (a Ray run can then teach, like any other). Nodes need no shared disk.
"""
from __future__ import annotations

import base64
import io
import json
import os
from typing import Callable

from kdengine.core.config import RunConfig
from kdengine.core.store import Store


def available() -> bool:
    import importlib.util
    return importlib.util.find_spec("ray") is not None


def _trainable(config: dict) -> None:
    """A function trainable: one cell. Runs on a Ray worker."""
    train_and_report(RunConfig.from_dict(config["cell"]["config"]), "test_acc")


def train_and_report(cfg: RunConfig, metric: str) -> None:
    """Train one config on a Ray worker, reporting ``metric`` to Tune once per epoch (what ASHA
    compares; one report an epoch keeps Tune's overhead small) with the metric events since the
    last report, then the summary and the student's weights for the driver to store."""
    import torch
    from ray import tune
    from kdengine.run.monitors import standard_monitors
    from kdengine.run.trainer import Trainer
    torch.set_num_threads(1)
    pending: list = []

    def emit(ev: dict) -> None:
        if ev["type"] != "metrics":
            return
        pending.append([ev["step"], ev["epoch"], ev["values"]])
        if metric in ev["values"]:
            tune.report({metric: ev["values"][metric], "epoch": int(ev["epoch"]),
                         "events": json.dumps(pending)})
            pending.clear()

    trainer = Trainer(cfg, emit, monitors=standard_monitors())
    summary = trainer.run()
    buf = io.BytesIO()
    torch.save({"state_dict": {k: v.cpu() for k, v in trainer.student.state_dict().items()},
                "epoch": cfg.train.epochs, "config_hash": cfg.hash}, buf)
    tune.report({metric: summary.get(f"final_{metric}"), "epoch": cfg.train.epochs,
                 "events": json.dumps(pending), "summary": json.dumps(summary),
                 "weights": base64.b64encode(buf.getvalue()).decode()})


try:   # this module is imported only when the ray backend is used; without Ray it still imports
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover - exercised where ray is absent
    _TuneCallback = object


class StoreCallback(_TuneCallback):
    """Driver side: trial results -> the store (metrics live, summary + checkpoint at the end).

    Module level on purpose: cloudpickle copies a class defined inside a function by value, with
    the globals it touches (the hooks, which hold locks)."""

    def __init__(self, store: Store, token: str):
        self.store, self.token = store, token

    def __getstate__(self):
        # Tune pickles its run config; a store (thread-local SQLite connections) cannot travel.
        return {"root": str(self.store.root), "token": self.token}

    def __setstate__(self, state):
        self.store, self.token = Store(state["root"]), state["token"]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.store.set_status(trial.config["cell"]["run_id"], "running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rid = trial.config["cell"]["run_id"]
        for step, epoch, values in json.loads(result.get("events") or "[]"):
            self.store.add_metrics(rid, step, epoch, values)
        if result.get("summary"):
            self._finish(rid, result)
        hook = _HOOKS.get(self.token, (None, None))[1]
        if hook:
            hook()

    def _finish(self, rid: str, result: dict) -> None:
        import torch
        from kdengine.core.checkpoints import save_checkpoint
        state = torch.load(io.BytesIO(base64.b64decode(result["weights"])), map_location="cpu",
                           weights_only=True)
        save_checkpoint(self.store.checkpoint_path(rid), state)
        self.store.set_summary(rid, json.loads(result["summary"]))
        self.store.set_status(rid, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        rid = trial.config["cell"]["run_id"]
        err = getattr(trial, "error_file", None) or "the Ray trial raised an error"
        self.store.set_status(rid, "failed", f"ray: {err}")


# Driver-side hooks (a sweep's stop flag and refresh) by token: Tune pickles everything it is given,
# and a threading.Event or a sweep object cannot be pickled.
_HOOKS: dict[str, tuple[Callable[[], bool], Callable[[], None] | None]] = {}


class _Stopper:
    def __init__(self, token: str):
        self.token = token

    def __call__(self, trial_id, result) -> bool:
        return bool(_HOOKS.get(self.token, (lambda: False, None))[0]())


def run_cells(cells: list[tuple[RunConfig, str]], store: Store,
              should_stop: Callable[[], bool] | None = None,
              on_result: Callable[[], None] | None = None, num_cpus: int | None = None) -> None:
    """Run (config, run id) cells as one Tune grid; their store rows end done, failed or stopped."""
    if not available():
        raise RuntimeError("the ray backend needs Ray: pip install -r requirements-cluster.txt")
    import ray
    from ray import tune
    started = ensure_ray(num_cpus)
    should_stop = should_stop or (lambda: False)
    token = cells[0][1]
    _HOOKS[token] = (should_stop, on_result)
    try:
        trainable = tune.with_resources(_trainable, {"cpu": 1})
        space = {"cell": tune.grid_search([{"config": c.to_dict(), "run_id": rid}
                                           for c, rid in cells])}
        run_config = tune.RunConfig(
            name=f"kd-{cells[0][1]}", storage_path=str(store.root / "ray_results"), verbose=0,
            callbacks=[StoreCallback(store, token)], stop=_Stopper(token))
        tune.Tuner(trainable, param_space=space, run_config=run_config,
                   tune_config=tune.TuneConfig(max_concurrent_trials=kwargs_cpus())).fit()
    finally:
        _HOOKS.pop(token, None)
        for _, rid in cells:        # anything not finished (stop, crash) must not stay "running"
            row = store.get_run(rid)
            if row and row["status"] in ("queued", "running"):
                store.set_status(rid, "stopped" if should_stop() else "failed",
                                 "stopped by the user" if should_stop() else "ray trial did not finish")
        if started:
            ray.shutdown()


def ensure_ray(num_cpus: int | None = None) -> bool:
    """Connect to KD_RAY_ADDRESS, or start a local instance (KD_RAY_CPUS or every core) unless one
    is up; True when this call started it (the caller then shuts it down)."""
    import ray
    if ray.is_initialized():
        return False
    address = os.environ.get("KD_RAY_ADDRESS") or None
    cpus = num_cpus or int(os.environ.get("KD_RAY_CPUS", "0") or 0) or os.cpu_count() or 1
    kwargs = {} if address else {"num_cpus": cpus}
    ray.init(address=address, include_dashboard=False, log_to_driver=False, **kwargs)
    return True


def kwargs_cpus() -> int:
    import ray
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
