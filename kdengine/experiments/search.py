"""Search: Optuna's TPE sampler over any knobs, with pruning fed by the per-epoch metric.

The third sweep mode beside grid and random. A :class:`SearchSpec` names the knobs and their ranges
(defaults and bounds come from the knobs' ``param()`` metadata, see :func:`default_range`), a trial
budget and a time budget, a pruner and the metric. Each trial is an ordinary run in the store
(``parent`` = the search id), so it shows on the Runs page like a sweep cell.

* Objective: ``val_acc`` by default, measured on ``data.val_fraction`` of the training set that
  neither teacher nor student trains on, so picking knobs never looks at the test set. An optional
  second objective (seconds per epoch, minimised) turns the study into a Pareto search; Optuna
  cannot prune multi-objective trials, so pruning is off then.
* Warnings (:func:`search_warnings`), kept with the search and shown by the page and the CLI: an
  objective read on the test set (``test_acc``, ``agreement``, ``kl_test``), and a teacher that may
  have trained on the validation split (a shipped, checkpoint or run teacher that cannot be shown
  to have held it out: ``kdengine.teachers.sources.validation_overlap``).
* Pruning: every epoch's metric is reported to the trial from the engine's event stream (in the
  worker thread, so a pruned run stops before its next step); ``median`` or ``asha``
  (successive halving).
* Resume: every trial (knobs, state, value, per-epoch curve) is kept in the store's ``sweeps`` row,
  and a search started again under its id rebuilds its Optuna study from them (sampler and pruner
  see the whole history); a trial cut off mid-way is asked again with the same knobs and its run
  continues from its checkpoint. Optuna's own SQLite storage was measured at ~0.1 s per pruning
  report and ~0.4 s per ask here, a third of a 16-trial search, so the study itself stays in memory.
* Reproducible: with a seed the sampler is seeded and trials run one at a time; without one, as many
  run at once as the engine has workers.
* A suggested config already trained to the end (same config hash, any parent) is reused, not trained.
* ``backend="vectorised"``: batches of suggestions that differ only in per-student knobs are
  submitted as one group (``Engine.submit_group``) and train as stacked students in one pass; each
  member reports its own epochs to its trial, and a pruned member is stopped and leaves the pass
  while the others train on.

Whatever the backend, the search asks and tells in this process and trains nothing itself: its
trials are engine runs, so they run wherever the engine runs them (threads, worker processes, a Ray
cluster through ``KD_RAY_ADDRESS``).
"""
from __future__ import annotations

import math
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from kdengine.core.config import RunConfig
from kdengine.core.events import Metrics
from kdengine.core.roles import Caller
from kdengine.core.knobs import ConfigError, check_field
from kdengine.core.store import ACTIVE, FINAL
from kdengine.experiments.base import Experiment, Spec

PRUNERS = ("median", "asha", "none")
METRICS = {"val_acc": "maximize", "test_acc": "maximize", "agreement": "maximize",
           "kl_test": "minimize"}
SECOND = {"": None, "epoch_s": "minimize"}
TEST_METRICS = ("test_acc", "agreement", "kl_test")      # read on the test set
SEARCH_BACKENDS = ("local", "vectorised")
VECTOR_BATCH = 8         # suggestions trained together as stacked students (backend vectorised)
# Ranges a user most often wants, where the knob's own bounds are far too wide (T <= 100).
DEFAULT_SPACE = {"method.params.T": {"low": 1.0, "high": 20.0, "log": True},
                 "method.params.soft_weight": {"low": 0.0, "high": 1.0},
                 "method.params.hard_weight": {"low": 0.0, "high": 1.0},
                 "train.lr": {"low": 1e-4, "high": 1e-1, "log": True}}
LOG_NAMES = ("lr", "learning_rate", "weight_decay", "eps")


def is_log_knob(path: str) -> bool:
    """Knobs searched on a log scale unless the user says otherwise (rates span decades)."""
    name = path.rsplit(".", 1)[-1]
    return name in LOG_NAMES or name.endswith("_lr")


# -- the space ------------------------------------------------------------------------------------
def knob_meta(cfg: RunConfig, path: str) -> dict:
    """The knob's ``param()`` spec with ``kind`` = float | int | bool | str; ConfigError naming the
    path when it is no config field."""
    import typing
    from kdengine.teaching.lessons import knob_spec
    spec = knob_spec(cfg, path)
    tp = spec["type"]
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    base = args[0]
    kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(base)
    if kind is None:
        raise ConfigError(path, f"a {base} knob cannot be searched (numbers, booleans, choices)")
    return {**spec, "kind": kind}


def default_range(cfg: RunConfig, path: str) -> dict:
    """A sensible starting range for one knob: the table above, else the knob's choices, else a
    factor of 4 around its current value clipped to the knob's bounds."""
    meta = knob_meta(cfg, path)
    if meta["choices"]:
        return {"choices": list(meta["choices"])}
    if meta["kind"] == "bool":
        return {"choices": [False, True]}
    if meta["kind"] == "str":
        raise ConfigError(path, "a text knob without choices cannot be searched")
    if path in DEFAULT_SPACE:
        return {"log": False, **DEFAULT_SPACE[path]}
    current = _get(cfg.to_dict(), path)
    current = meta["default"] if current is None else current
    lo, hi = meta["min"], meta["max"]
    log = is_log_knob(path)
    if current and current > 0:
        low, high = current / 4, current * 4
    else:
        low, high = (lo or 0.0), (lo or 0.0) + 1.0
    if lo is not None:
        low = max(low, lo if not meta["min_exclusive"] else lo + (high - lo) * 1e-3)
    if hi is not None:
        high = min(high, hi)
    if meta["kind"] == "int":
        low, high = int(math.floor(low)), int(math.ceil(high))
        low = max(low, int(lo) + (1 if meta["min_exclusive"] else 0)) if lo is not None else low
        if hi is not None:
            high = min(high, int(hi))
    return {"low": low, "high": high, "log": log and low > 0}


def _get(d: dict, path: str):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def parse_range(cfg: RunConfig, path: str, text: str) -> dict:
    """CLI / text form of a range: 'LOW:HIGH', 'LOW:HIGH:log', 'A,B,C' (choices), '' (default)."""
    text = (text or "").strip()
    if not text:
        return default_range(cfg, path)
    if ":" in text:
        parts = [p.strip() for p in text.split(":")]
        try:
            low, high = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise ConfigError(path, f"a range is LOW:HIGH[:log], got {text!r}") from None
        if knob_meta(cfg, path)["kind"] == "int" and low.is_integer() and high.is_integer():
            low, high = int(low), int(high)
        return {"low": low, "high": high, "log": "log" in parts[2:]}
    from kdengine.experiments.sweeps import parse_values
    return {"choices": parse_values(text)}


def distributions(cfg: RunConfig, space: dict[str, dict]) -> dict:
    """Optuna distributions for the space, every range checked against its knob (ConfigError
    naming the knob's path: a range below the knob's minimum, low >= high, log with low <= 0)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    if not space:
        raise ConfigError("space", "a search needs at least one knob")
    out = {}
    for path, rng in space.items():
        meta = knob_meta(cfg, path)
        if not isinstance(rng, dict):
            raise ConfigError(path, f"a range is a mapping of low/high/log or choices, got {rng!r}")
        if "choices" in rng:
            choices = list(rng["choices"] or [])
            if not choices:
                raise ConfigError(path, "needs at least one choice")
            for c in choices:
                check_field(path, c, meta)
            out[path] = CategoricalDistribution(choices)
            continue
        if meta["kind"] in ("bool", "str"):
            raise ConfigError(path, "a bool or text knob is searched over choices, not a range")
        low, high = rng.get("low"), rng.get("high")
        if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) \
                or isinstance(low, bool) or isinstance(high, bool):
            raise ConfigError(path, f"a range needs numbers low and high, got {low!r}..{high!r}")
        if not low < high:
            raise ConfigError(path, f"range {low}..{high}: low must be below high")
        check_field(path, low, meta)         # the knob's own bounds: 'must be > 0, got 0'
        check_field(path, high, meta)
        log, step = bool(rng.get("log", False)), rng.get("step")
        if log and low <= 0:
            raise ConfigError(path, f"a log scale needs low > 0, got {low}")
        if log and step:
            raise ConfigError(path, "a log scale takes no step")
        if meta["kind"] == "int":
            if low != int(low) or high != int(high):
                raise ConfigError(path, f"an integer knob needs integer bounds, got {low}..{high}")
            out[path] = IntDistribution(int(low), int(high), log=log, step=int(step or 1))
        else:
            out[path] = FloatDistribution(float(low), float(high), log=log,
                                          step=float(step) if step else None)
    return out


# -- the spec -------------------------------------------------------------------------------------
@dataclass
class SearchSpec(Spec):
    base: dict                                   # a RunConfig as a dict
    space: dict[str, dict]                       # dotted knob -> {low, high, log, step} | {choices}
    n_trials: int = 16                           # trial budget of the whole study
    timeout_s: float | None = None               # time budget of one session (no new trial after)
    pruner: str = "median"
    metric: str = "val_acc"
    second: str = ""                             # "" or "epoch_s": a Pareto search
    val_fraction: float = 0.2                    # used when the metric is val_* and base has none
    seed: int | None = 0                         # sampler seed; trials one at a time when set
    backend: str = "local"
    name: str = ""
    mode: str = "search"                         # tells a stored search from a stored grid

    def base_config(self) -> RunConfig:
        """The base config a trial starts from: with a validation split when the metric needs one."""
        cfg = RunConfig.from_dict(self.base)
        if self.metric.startswith("val_") and not cfg.data.val_fraction:
            cfg = cfg.with_overrides({"data.val_fraction": self.val_fraction})
        return cfg

    @property
    def directions(self) -> list[str]:
        return [METRICS[self.metric]] + ([SECOND[self.second]] if self.second else [])

    @property
    def prunes(self) -> bool:
        return self.pruner != "none" and not self.second

    def validate(self) -> "SearchSpec":
        if self.backend not in SEARCH_BACKENDS:
            raise ConfigError("backend", f"a search runs on {' or '.join(SEARCH_BACKENDS)}; "
                                         f"got {self.backend!r}")
        if self.pruner not in PRUNERS:
            raise ConfigError("pruner", f"must be one of {', '.join(PRUNERS)}; got {self.pruner!r}")
        if self.metric not in METRICS:
            raise ConfigError("metric", f"must be one of {', '.join(METRICS)}; got {self.metric!r}")
        if self.second not in SECOND:
            raise ConfigError("second", f"must be '' or epoch_s; got {self.second!r}")
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ConfigError("n_trials", f"must be an integer >= 1, got {self.n_trials!r}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError("timeout_s", f"must be > 0 seconds, got {self.timeout_s}")
        if not 0.0 < self.val_fraction <= 0.5:
            raise ConfigError("val_fraction", f"must be in (0, 0.5], got {self.val_fraction}")
        cfg = self.base_config()
        if self.metric == "val_acc" and cfg.data.name == "text":
            raise ConfigError("metric", "the text task has no validation split: use test_acc")
        dists = distributions(cfg, self.space)
        for path, d in dists.items():         # the ends must also pass the config's cross-checks
            ends = d.choices if hasattr(d, "choices") else (d.low, d.high)
            for v in ends:
                cfg.with_overrides({path: v})
        return self


def search_warnings(spec: SearchSpec, store=None) -> list[str]:
    """Why a search's best value may flatter its knobs, one line each: an objective measured on the
    test set, or a teacher that may have trained on the validation split the trials are judged on."""
    out = []
    if spec.metric in TEST_METRICS:
        out.append(f"Trials are judged on {spec.metric}, which is measured on the test set: the best "
                   f"trial is chosen on those very samples, so its test figures are optimistic. "
                   f"val_acc judges them on a validation split that teacher and student never "
                   f"train on, and keeps the test set unseen.")
    if spec.metric.startswith("val_"):
        from kdengine.teachers.sources import validation_overlap
        why = validation_overlap(spec.base_config(), store)
        if why:
            out.append(why)
    return out


def suggest(trial, name: str, dist):
    """trial.suggest_* for one of :func:`distributions`' entries."""
    from optuna.distributions import IntDistribution
    if hasattr(dist, "choices"):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def make_sampler(spec: SearchSpec, offset: int = 0):
    """TPE (NSGA-II for two objectives); ``offset`` moves a resumed study's seed on. Constant liar:
    trials asked before the running ones report (parallel or stacked) are kept apart."""
    import optuna
    seed = None if spec.seed is None else spec.seed + 7919 * offset
    if spec.second:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    # multivariate: T and the weights interact (the soft term scales with T^2)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5,
                                      constant_liar=True)


def make_pruner(spec: SearchSpec):
    import optuna
    if not spec.prunes:
        return optuna.pruners.NopPruner()
    if spec.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)


def open_study(spec: SearchSpec, study_name: str, rows: list[dict] = ()):
    """An in-memory study with the sampler and pruner of ``spec``, holding the finished trials of
    ``rows`` (``trial_record`` rows) when a search resumes."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # a fresh sampler with the same seed would draw the first trials' knobs again: move it on
    study = optuna.create_study(study_name=study_name, sampler=make_sampler(spec, offset=len(rows)),
                                pruner=make_pruner(spec), directions=spec.directions)
    add_rows(study, spec, distributions(spec.base_config(), spec.space), rows)
    return study


def add_rows(study, spec: SearchSpec, dists: dict, rows: list[dict]) -> None:
    """Finished trial rows into ``study``, with their per-epoch curves (the pruner compares them)."""
    from optuna.trial import TrialState, create_trial
    states = {"complete": TrialState.COMPLETE, "reused": TrialState.COMPLETE,
              "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
    for r in rows:
        state = states.get(r["state"])
        if state is None or any(k not in r for k in dists):
            continue
        values = None
        if state == TrialState.COMPLETE:
            values = [r["value"]] + ([r.get("epoch_s")] if spec.second else [])
            if any(v is None for v in values):
                continue
        curve = {int(k): v for k, v in (r.get("curve") or {}).items() if v is not None}
        if state == TrialState.PRUNED and not curve:
            continue
        study.add_trial(create_trial(state=state, values=values, params={k: r[k] for k in dists},
                                     distributions=dists, intermediate_values=curve))


def optimise(spec: SearchSpec, objective: Callable[[dict, Callable[[int, float], bool]], float],
             study_name: str | None = None):
    """Run the study on a plain function ``objective(params, report) -> value`` in this thread, where
    ``report(epoch, value)`` returns True when the trial should stop (pruned). Same space, sampler
    and pruner as a search of training runs; for toy objectives and notebooks."""
    import optuna
    dists = distributions(spec.base_config(), spec.space)
    study = open_study(spec, study_name or uuid.uuid4().hex)

    def run(trial):
        params = {k: suggest(trial, k, d) for k, d in dists.items()}
        pruned = []     # asked once: successive halving answers a second should_prune() with False

        def report(epoch: int, value: float) -> bool:
            if not spec.prunes:
                return False
            trial.report(value, epoch)
            if trial.should_prune():
                pruned.append(epoch)
            return bool(pruned)
        value = objective(params, report)
        if pruned:
            raise optuna.TrialPruned()
        return value
    study.optimize(run, n_trials=spec.n_trials, timeout=spec.timeout_s)
    return study


# -- one search of training runs ------------------------------------------------------------------
@dataclass
class TrialRow:
    number: int
    params: dict
    state: str = "running"          # running | complete | pruned | failed | reused | stopped
    run_id: str | None = None
    value: float | None = None
    epoch_s: float | None = None
    epochs: int = 0                 # epochs trained by this trial in this study (0 when reused)
    curve: dict = field(default_factory=dict)    # epoch -> metric, as reported to the pruner


class Search(Experiment):
    """One study and the driver thread that fills it in (start, stop, resume and the registry are
    :class:`kdengine.experiments.base.Experiment`'s). Started again under its id, it reads its
    trials back from its stored row."""

    kind, label, id_prefix, spec_cls = "search", "search", "se", SearchSpec

    def __init__(self, engine, spec: SearchSpec, owner: str = "", exp_id: str | None = None):
        super().__init__(engine, spec, owner, exp_id)
        self._lock = threading.RLock()          # optuna calls and self.trials (re-entered)
        self.base = spec.base_config()
        self.dists = distributions(self.base, spec.space)
        self.trials: list[TrialRow] = stored_rows(self.store, exp_id) if exp_id else []
        self.started = 0.0
        self.notices += search_warnings(spec, self.store)     # stored with the search's state

    def stop(self, caller: Caller | None = None) -> None:
        super().stop(caller)
        for t in list(self.trials):
            if t.state == "running" and t.run_id:
                try:
                    self.engine.stop(t.run_id)
                except KeyError:         # another process's run: not this engine's to stop
                    pass

    # -- reading ---------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        with self._lock:
            return [trial_record(t) for t in self.trials]

    def finished(self) -> int:
        return sum(t.state not in ("running", "stopped") for t in self.trials)

    def progress(self) -> float:
        return min(1.0, self.finished() / max(1, self.spec.n_trials))

    def epochs_used(self) -> int:
        return sum(t.epochs for t in self.trials)

    # -- driver ----------------------------------------------------------------------------------
    def _drive(self) -> str:
        self.started = time.monotonic()
        if self.spec.backend == "vectorised":
            self._run_vectorised()
        else:
            self._run_local()
        return "done"

    def budget_left(self) -> bool:
        if self._stop.is_set():
            return False
        if self.spec.timeout_s is not None and time.monotonic() - self.started > self.spec.timeout_s:
            return False
        return self.finished() + self._running() < self.spec.n_trials

    def _running(self) -> int:
        return sum(t.state == "running" for t in self.trials)

    def _run_local(self) -> None:
        self.study = self.open_study()
        parallel = 1 if self.spec.seed is not None else max(1, self.engine.max_workers)
        live: list[tuple[Any, TrialRow]] = []      # (optuna Trial, its row)
        while True:
            while self.budget_left() and len(live) < parallel:
                started = self._launch()
                if started is not None:
                    live.append(started)
            if not live:
                return
            live = [(trial, row) for trial, row in live if not self._settle(trial, row)]
            time.sleep(0.05)

    def _run_vectorised(self) -> None:
        """Batches of suggestions (asked together, TPE's constant liar keeping them apart): those
        that differ only in per-student knobs go to the engine as one group and train as stacked
        students in one pass, the rest as single runs. Every trial reports its epochs and may be
        pruned, stacked or not: a pruned member leaves the pass, the others train on. The next
        batch is asked when this one has ended. Seeded, the units of a batch train one after
        another, so that pruning sees the same reports in the same order every time."""
        from kdengine.run.stacked import group_key
        from kdengine.experiments.sweeps import can_vectorise
        self.study = self.open_study()
        while self.budget_left():
            asked = []
            while self.budget_left() and len(asked) < VECTOR_BATCH:
                a = self._ask()
                if a is not None:
                    asked.append(a)
            groups: dict[str | None, list] = {}
            for a in asked:
                ok = can_vectorise(a[2]) and a[0].user_attrs.get("resume_run") is None
                groups.setdefault(group_key(a[2]) if ok else None, []).append(a)
            units = [m for key, m in groups.items() if key is not None and len(m) > 1]
            units += [[a] for key, m in groups.items() if key is None or len(m) == 1 for a in m]
            live: list[tuple[Any, TrialRow]] = []
            for unit in units:
                if len(unit) > 1:
                    live += self._launch_group(unit)
                else:
                    started = self._launch(unit[0])
                    live += [started] if started is not None else []
                if self.spec.seed is not None:
                    self._wait(live)
            self._wait(live)

    def _wait(self, live: list) -> None:
        """Wait until every trial of ``live`` (trial, row) has ended and been told."""
        while live:
            live = [(trial, row) for trial, row in live if not self._settle(trial, row)]
            if live:
                time.sleep(0.05)

    def open_study(self):
        """The study rebuilt from the finished trials; trials cut off by a stop or a crash are
        taken out and asked again first, with the same knobs, continuing their runs."""
        with self._lock:
            cut = [t for t in self.trials if t.state in ("running", "pruning", "stopped")]
            self.trials = [t for t in self.trials if t not in cut]
            study = open_study(self.spec, self.id, [trial_record(t) for t in self.trials])
            for t in cut:
                study.enqueue_trial(t.params, user_attrs={"resume_run": t.run_id} if t.run_id else {})
        return study

    def _ask(self):
        """Ask for the next knobs: (trial, row, config) to train, or None when the trial ended at
        once (a combination the config refuses, or a config already trained: reused)."""
        from optuna.trial import TrialState
        with self._lock:
            trial = self.study.ask(self.dists)
            row = TrialRow(len(self.trials), dict(trial.params))
            self.trials.append(row)
        try:
            cfg = self.base.with_overrides(row.params)
        except ConfigError as e:         # e.g. a cross-check only some values hit
            self._end(trial, row, "failed", state=TrialState.FAIL, error=str(e))
            return None
        cfg.name = (self.spec.name or "search") + f" #{row.number} " + ", ".join(
            f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in row.params.items())
        done = self.store.runs_by_hash(cfg.hash, ("done",))
        if done:                          # the same config was trained to the end before
            row.run_id = done[0]["id"]
            self._finish(trial, row, done[0]["summary"], reused=True)
            return None
        return trial, row, cfg

    def _launch(self, asked=None):
        """Submit the next trial's run to the engine (``asked``: one from :meth:`_ask`); returns
        (trial, row), or None when nothing was started."""
        asked = asked or self._ask()
        if asked is None:
            return None
        trial, row, cfg = asked
        if self._stop.is_set():
            row.state = "stopped"         # asked, never started: a resume asks it again
            return None
        resume = trial.user_attrs.get("resume_run")
        rid = None
        if resume and (self.store.get_run(resume) or {}).get("status") in FINAL:
            rid = self.engine.resume_run(resume)
            for epoch, v in self._stored_curve(rid).items():   # epochs before the checkpoint
                self._report(trial, row, epoch, v)
        try:
            rid = rid or self.engine.submit(cfg, owner=self.owner, name=cfg.name, parent=self.id)
        except ConfigError as e:          # e.g. a suggested size too big for this machine
            from optuna.trial import TrialState
            self._end(trial, row, "failed", state=TrialState.FAIL, error=str(e))
            return None
        return self._follow(trial, row, rid)

    def _launch_group(self, asked: list) -> list:
        """Submit trials that stack as one group: stacked students in one pass, each its own run."""
        if self._stop.is_set():
            for _, row, _ in asked:
                row.state = "stopped"
            return []
        cfgs = [cfg for _, _, cfg in asked]
        try:
            rids = self.engine.submit_group(cfgs, owner=self.owner, names=[c.name for c in cfgs],
                                            parent=self.id)
        except ConfigError as e:          # e.g. too big as a stack for this machine
            from optuna.trial import TrialState
            for trial, row, _ in asked:
                self._end(trial, row, "failed", state=TrialState.FAIL, error=str(e))
            return []
        return [self._follow(trial, row, rid) for (trial, row, _), rid in zip(asked, rids)]

    def _follow(self, trial, row: TrialRow, rid: str):
        """Tie a trial to its run: its per-epoch metric goes to the pruner as the run reports it."""
        row.run_id = rid
        trial.set_user_attr("run_id", rid)
        self.engine.subscribe(rid, lambda ev: self._on_event(trial, row, ev))
        snap = self.engine.snapshot(rid)      # events emitted before the subscription
        for step, epoch, v in snap.series.get(self.spec.metric, []):
            self._on_event(trial, row, Metrics(step, epoch, {self.spec.metric: v}))
        self._save()
        return trial, row

    def _stored_curve(self, rid: str) -> dict[int, float]:
        return {int(e): v for _, e, v in self.store.series(rid).get(self.spec.metric, [])}

    def _on_event(self, trial, row: TrialRow, ev: dict) -> None:
        """In the worker thread, at each epoch end: report to the pruner; stop the run when pruned
        (before its next step, so a pruned trial's epochs are the ones it was measured on)."""
        if not isinstance(ev, Metrics) or self.spec.metric not in ev.values:
            return
        epoch = int(ev.epoch)
        with self._lock:                 # the catch-up after subscribing may see it too
            if epoch in row.curve:
                return
            row.epochs += 1
        if self._report(trial, row, epoch, ev.values[self.spec.metric]):
            try:
                self.engine.stop(row.run_id, f"pruned by search {self.id} after epoch {epoch}")
            except KeyError:
                pass

    def _report(self, trial, row: TrialRow, epoch: int, value: float) -> bool:
        with self._lock:
            row.curve[epoch] = value
            if not self.spec.prunes or value is None or not math.isfinite(value):
                return False
            trial.report(value, epoch)
            if trial.should_prune():
                row.state = "pruning"
                return True
        return False

    def _settle(self, trial, row: TrialRow) -> bool:
        """Tell the study how a trial's run ended; True once it has ended."""
        from optuna.trial import TrialState
        if row.state not in ("running", "pruning"):
            return True                   # told already (e.g. its run could not be submitted)
        if self.engine.status(row.run_id) in ACTIVE:
            return False
        snap = self.engine.snapshot(row.run_id)
        if snap.status == "done":
            self._finish(trial, row, snap.summary)
        elif row.state == "pruning":      # its run was stopped by the pruner (see _on_event)
            row.value = row.curve.get(max(row.curve)) if row.curve else None
            self._end(trial, row, "pruned", state=TrialState.PRUNED)
        elif snap.status == "stopped" and self._stop.is_set():
            row.state = "stopped"         # a resume asks it again and continues its run
            self._save()
        else:
            self._end(trial, row, "failed", state=TrialState.FAIL, error=snap.error)
        return True

    def _finish(self, trial, row: TrialRow, summary: dict, reused: bool = False) -> None:
        from optuna.trial import TrialState
        value = summary.get(f"final_{self.spec.metric}")
        if value is None or not math.isfinite(value):
            self._end(trial, row, "failed", state=TrialState.FAIL,
                      error=f"the run reported no {self.spec.metric}")
            return
        row.value = float(value)
        row.epoch_s = epoch_seconds(self.store, row.run_id, summary)
        values = [row.value] + ([row.epoch_s] if self.spec.second else [])
        self._end(trial, row, "reused" if reused else "complete", values=values)

    def _end(self, trial, row: TrialRow, shown: str, values=None, state=None, error=None) -> None:
        """Close the trial in the study (``state`` for Optuna) and show it as ``shown``."""
        with self._lock:
            row.state = shown
            if error:
                trial.set_user_attr("error", str(error)[:500])
            self.study.tell(trial, values, state=state)
        self._save()

    def _state(self) -> dict:
        with self._lock:
            return {"trials": [asdict(t) for t in self.trials], "error": self.error,
                    "epochs_used": self.epochs_used(), "notices": self.notices}


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def epoch_seconds(store, run_id: str, summary: dict) -> float | None:
    """Seconds per student epoch: the run's last ``elapsed_s`` point (the training loop's clock)
    over its epochs; None when the run has no such point."""
    series = store.series(run_id)
    pts = series.get("elapsed_s") or []
    epochs = max((e for _, e, _ in series.get("test_acc", [])), default=0)
    if not pts or not epochs:
        return None
    return pts[-1][2] / epochs


def trial_record(t: TrialRow | dict) -> dict:
    """One flat row per trial for tables and charts: number, state, value, run id, the knobs."""
    d = asdict(t) if isinstance(t, TrialRow) else dict(t)
    state = "pruned" if d["state"] == "pruning" else d["state"]
    return {"trial": d["number"], "state": state, "value": d.get("value"),
            "epoch_s": d.get("epoch_s"), "epochs": d.get("epochs", 0), "run_id": d.get("run_id"),
            **d["params"], "curve": d.get("curve", {})}


def best_trial(rows: list[dict], spec: SearchSpec) -> dict | None:
    """The finished trial with the best metric (complete or reused)."""
    ok = [r for r in rows if r["state"] in ("complete", "reused") and r["value"] is not None]
    if not ok:
        return None
    sign = 1 if METRICS[spec.metric] == "maximize" else -1
    return max(ok, key=lambda r: sign * r["value"])


def best_config(spec: SearchSpec, row: dict) -> RunConfig:
    return spec.base_config().with_overrides({k: row[k] for k in spec.space})


# -- start, find and resume (the Experiment base's, under search names) -----------------------------
def start_search(engine, spec: SearchSpec | dict, owner: str = "") -> Search:
    return Search.launch(engine, spec, owner)


def get_search(search_id: str) -> Search | None:
    return Search.live(search_id)


def resume_search(engine, search_id: str, n_trials: int | None = None,
                  caller: Caller | None = None) -> Search:
    """Continue a stored search under its id: its study is rebuilt from the stored trials;
    ``n_trials`` may raise the trial budget."""
    return Search.resume(engine, search_id, caller, n_trials=n_trials)


def stored_rows(store, search_id: str) -> list[TrialRow]:
    """A stored search's trials (none for a new id)."""
    row = store.get_sweep(search_id)
    trials = [TrialRow(**t) for t in (row["state"].get("trials", []) if row else [])]
    for t in trials:
        t.curve = {int(k): v for k, v in t.curve.items()}   # JSON made the epochs strings
    return trials


def stored_trials(store, search_id: str) -> list[dict]:
    row = store.get_sweep(search_id)
    if row is None:
        return []
    return [trial_record(t) for t in row["state"].get("trials", [])]


def study_of(spec: SearchSpec, rows: list[dict]):
    """An in-memory Optuna study rebuilt from trial rows (for Optuna's plots, whatever the backend
    and whether or not this process ran the search)."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=spec.directions)
    add_rows(study, spec, distributions(spec.base_config(), spec.space),
             [r for r in rows if r["state"] != "failed"])
    return study
