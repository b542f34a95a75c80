"""A search on Ray Tune: Tune's OptunaSearch (the same TPE sampler, on the study rebuilt from the
search's stored trials) asks for the knobs, the ASHA scheduler stops bad trials at epochs 1, 3, 9, ...

Each trial trains on a Ray worker (:func:`_trial`) and reports its metric once per epoch; a
driver-side callback turns the trials into ordinary store rows (parent = the search id) as they
start, writes their metrics as they arrive and the summary and weights at the end, and keeps the
search's trial rows current, so the Sweeps page draws a Ray search like a local one. Optional:
``pip install -r requirements-cluster.txt``.
"""
from __future__ import annotations

import base64
import io
import json

from kdengine.core.config import RunConfig
from kdengine.experiments.ray_backend import _TuneCallback, available, ensure_ray, train_and_report


def _trial(config: dict, base: dict, metric: str) -> None:
    """One trial on a Ray worker: the base config with the suggested knobs."""
    train_and_report(RunConfig.from_dict(base).with_overrides(config), metric)


class SearchCallback(_TuneCallback):
    """Driver side: Tune trials -> store rows and the search's trial rows (by search id, see _LIVE)."""

    def __init__(self, search_id: str):
        self.search_id = search_id
        self.rows: dict[str, object] = {}        # Tune trial id -> TrialRow

    def _search(self):
        return _LIVE.get(self.search_id)

    def on_trial_start(self, iteration, trials, trial, **info):
        from kdengine.run.trainer import versions
        se = self._search()
        cfg = se.base.with_overrides(trial.config)
        cfg.name = f"{se.spec.name or 'search'} #{len(se.trials)} (ray)"
        rid = se.store.create_run(cfg.to_dict(), cfg.hash, owner=se.owner, name=cfg.name,
                                  versions=versions(), parent=se.id, status="running")
        row = se.new_row(trial.config, rid)
        self.rows[trial.trial_id] = row
        se._save()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        se, row = self._search(), self.rows.get(trial.trial_id)
        if row is None:
            return
        for step, epoch, values in json.loads(result.get("events") or "[]"):
            se.store.add_metrics(row.run_id, step, epoch, values)
        value = result.get(se.spec.metric)
        if "summary" not in result and value is not None:
            with se._lock:
                row.curve[int(result["epoch"])] = value
                row.epochs += 1
        if result.get("summary"):
            self._finish(se, row, result)

    def _finish(self, se, row, result: dict) -> None:
        import torch
        from kdengine.core.checkpoints import save_checkpoint
        state = torch.load(io.BytesIO(base64.b64decode(result["weights"])), map_location="cpu",
                           weights_only=True)
        save_checkpoint(se.store.checkpoint_path(row.run_id), state)
        summary = json.loads(result["summary"])
        se.store.set_summary(row.run_id, summary)
        se.store.set_status(row.run_id, "done")
        se.record_done(row, summary)

    def on_trial_complete(self, iteration, trials, trial, **info):
        se, row = self._search(), self.rows.get(trial.trial_id)
        if row is None or row.state == "complete":
            return
        last = max(row.curve) if row.curve else 0
        if se.stop_requested:
            se.store.set_status(row.run_id, "stopped", "stopped by the user")
            row.state = "stopped"
        else:                       # ended before its last epoch: the scheduler stopped it
            se.store.set_status(row.run_id, "stopped", f"pruned by ASHA (search {se.id}) after "
                                                       f"epoch {last}")
            row.state, row.value = "pruned", row.curve.get(last)
        se._save()

    def on_trial_error(self, iteration, trials, trial, **info):
        se, row = self._search(), self.rows.get(trial.trial_id)
        if row is not None:
            se.store.set_status(row.run_id, "failed", "ray: the trial raised an error")
            row.state = "failed"
            se._save()


class _Stopper:
    def __init__(self, search_id: str):
        self.search_id = search_id

    def __call__(self, trial_id, result) -> bool:
        se = _LIVE.get(self.search_id)
        return se is None or se.stop_requested


# The searches running on Ray, by id: Tune pickles its callbacks and stopper, which therefore hold
# only the id (a search, with its threads and locks, cannot be pickled).
_LIVE: dict[str, object] = {}


def run_on_ray(se) -> None:
    """Run the search's remaining trial budget as Tune trials; blocks until they end."""
    if not available():
        raise RuntimeError("the ray backend needs Ray: pip install -r requirements-cluster.txt")
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch
    spec = se.spec
    study = se.open_study()     # cut-off trials are asked again (from the start: Tune's own runs)
    left = spec.n_trials - se.finished()
    if left <= 0:
        return
    modes = ["max" if d == "maximize" else "min" for d in spec.directions]
    searcher = OptunaSearch(space=se.dists, metric=spec.metric, mode=modes[0], sampler=study.sampler,
                            study_name=study.study_name, storage=study._storage)
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=se.base.train.epochs, grace_period=1,
                               reduction_factor=3) if spec.prunes else FIFOScheduler())
    started = ensure_ray()
    _LIVE[se.id] = se
    try:
        trainable = tune.with_resources(
            tune.with_parameters(_trial, base=se.base.to_dict(), metric=spec.metric), {"cpu": 1})
        cpus = 1 if spec.seed is not None else None     # seeded: one trial at a time
        tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, metric=spec.metric,
                                        mode=modes[0], num_samples=left,
                                        time_budget_s=spec.timeout_s,
                                        max_concurrent_trials=cpus),
            run_config=tune.RunConfig(name=f"kd-{se.id}", storage_path=str(se.store.root / "ray_results"),
                                      verbose=0, callbacks=[SearchCallback(se.id)],
                                      stop=_Stopper(se.id)),
        ).fit()
    finally:
        for row in se.trials:       # nothing may stay "running" after a crash or a stop
            run = se.store.get_run(row.run_id) if row.run_id else None
            if run and run["status"] in ("queued", "running"):
                se.store.set_status(row.run_id, "stopped" if se.stop_requested else "failed",
                                    "stopped by the user" if se.stop_requested else
                                    "ray trial did not finish")
                row.state = "stopped" if se.stop_requested else "failed"
        se._save()
        _LIVE.pop(se.id, None)
        if started:
            import ray
            ray.shutdown()
