"""The TA-gap experiment (Mirzadeh et al. 2019, "Improved Knowledge Distillation via Teacher
Assistant", arXiv 1902.03393).

Given a size ladder of one model family (small -> large, from :func:`kdengine.models.families.ladder`):

1. every size is trained from scratch (cross-entropy), once per seed;
2. the student (the smallest size, by default) is distilled from each larger size directly, and
3. via a teacher assistant: the TA is trained by KD from the teacher, then teaches the student. The
   TA is the paper's rule of thumb — the intermediate size whose own (scratch) accuracy is closest to
   the mean of teacher and student accuracy — or a size the user picks;
4. all over several seeds; the curves report mean and spread.

Every run is an ordinary engine run (tagged with the experiment id as ``parent``) and every link is
found by config hash before it is trained, so a restarted experiment — or another one sharing sizes
— reuses what is already there. Paper, CIFAR-10 plain CNN, 2-layer student from a 10-layer teacher:
no KD 70.16, KD 72.57, TA 73.51. At CPU sizes this ordering need not reproduce; the page shows what
happens.
"""
from __future__ import annotations

import statistics
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from kdengine.core.config import ModelConfig, RunConfig
from kdengine.core.roles import Caller
from kdengine.core.knobs import ConfigError
from kdengine.experiments.base import Experiment, Spec
from kdengine.experiments.chains import ChainError, ensure_run, run_chain, run_teacher, scratch_config
from kdengine.models.families import build_model, count_params, ladder, model_label

# The workshop preset: a large capacity gap on the hierarchy data (100 classes in 20 superclasses),
# where a 1x8 MLP student is far below a 2x512 teacher (on digits every student sat near the
# student alone and nothing showed). Three seeds, so the bands are an honest spread; 33 runs.
PRESET = {
    "name": "TA gap: hierarchy (100 classes), MLP 1x8 student up to a 2x512 teacher",
    "family": "mlp",
    "sizes": [{"arch": "mlp", "depth": d, "width": w, "dropout": 0.0}
              for d, w in ((1, 8), (1, 32), (1, 128), (2, 512))],
    "student": 0,
    "seeds": [0, 1, 2],
    "ta": "rule",
    "base": {"data": {"name": "hierarchy", "n_samples": 6000, "noise": 1.0, "hier_classes": 100,
                      "hier_superclasses": 20},
             "method": {"name": "hinton", "params": {"T": 4.0, "soft_weight": 0.9, "hard_weight": 0.1}},
             "train": {"epochs": 10, "batch_size": 64, "lr": 0.003, "log_every": 10}},
}


@dataclass
class TAGapSpec(Spec):
    base: dict                                   # data, method (a KD method) and training settings
    sizes: list[dict]                            # ModelConfig dicts, small -> large
    student: int = 0                             # index of the student in ``sizes``
    seeds: list[int] = field(default_factory=lambda: [0])
    ta: Any = "rule"                             # "rule" or the index of a fixed TA size
    family: str = "mlp"
    name: str = ""

    @classmethod
    def from_family(cls, family: str, base: dict, depth_or_width: ModelConfig | None = None,
                    **kw) -> "TAGapSpec":
        return cls(base=base, sizes=[asdict(m) for m in ladder(family, depth_or_width)],
                   family=family, **kw)

    def models(self) -> list[ModelConfig]:
        return [ModelConfig(**m) for m in self.sizes]

    def validate(self) -> "TAGapSpec":
        if len(self.sizes) < 2:
            raise ConfigError("sizes", "a ladder needs at least two sizes")
        if not 0 <= self.student < len(self.sizes) - 1:
            raise ConfigError("student", "the student must be a ladder size with larger sizes above")
        if self.ta != "rule" and not (isinstance(self.ta, int) and self.student < self.ta < len(self.sizes)):
            raise ConfigError("ta", "a fixed TA must be a ladder index above the student")
        if not self.seeds:
            raise ConfigError("seeds", "give at least one seed")
        base = RunConfig.from_dict(self.base)
        for m in self.models():                      # every size must be valid for the data set
            scratch_config(base, m)
        return self


def pick_ta(acc: dict[int, float], student: int, teacher: int) -> int | None:
    """Mirzadeh et al.'s rule: the intermediate size whose accuracy is nearest the mean of teacher
    and student accuracy (None when no size lies strictly between them)."""
    middle = [i for i in range(student + 1, teacher) if i in acc]
    if not middle:
        return None
    target = (acc[teacher] + acc[student]) / 2
    return min(middle, key=lambda i: (abs(acc[i] - target), i))


def mean_sd(values: list[float]) -> tuple[float | None, float | None, int]:
    v = [x for x in values if x is not None]
    if not v:
        return None, None, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


class TAGapExperiment(Experiment):
    """Runs the experiment in a driver thread; ``results()`` is safe to call at any time."""

    kind, label, id_prefix, spec_cls = "ta_gap", "TA-gap experiment", "ta", TAGapSpec

    def __init__(self, engine, spec: TAGapSpec, owner: str = "", exp_id: str | None = None):
        super().__init__(engine, spec, owner, exp_id)
        self.base = RunConfig.from_dict(self.spec.base)
        self.models = self.spec.models()
        self.records: list[dict] = []     # role, seed, size/teacher/ta indices, run_id, status
        self.picks: dict[int, int | None] = {}
        self.params = self._param_counts()

    def _param_counts(self) -> list[int]:
        from kdengine.data.datasets import load_data
        data = load_data(self.base.data)
        return [count_params(build_model(m, data.input_shape, data.n_classes)) for m in self.models]

    # -- driver ----------------------------------------------------------------------------------
    def _record(self, **rec) -> dict:
        with self._lock:
            rec.setdefault("status", "running")
            self.records.append(rec)
        return rec

    def _drive(self) -> str:
        s, n = self.spec.student, len(self.models)
        self._pool(self._scratch, [(seed, i) for seed in self.spec.seeds for i in range(n)])
        acc = {i: self.scratch_mean(i) for i in range(n)}
        for j in range(s + 1, n):
            self.picks[j] = (pick_ta(acc, s, j) if self.spec.ta == "rule"
                             else (self.spec.ta if self.spec.ta < j else None))
        self._save()
        tasks = [(seed, j, False) for seed in self.spec.seeds for j in range(s + 1, n)]
        tasks += [(seed, j, True) for seed in self.spec.seeds for j in range(s + 1, n)
                  if self.picks[j] is not None]
        self._pool(self._distil, tasks)
        return "done"

    def _pool(self, fn, tasks) -> None:
        """Run tasks on as many threads as the engine has workers (each thread waits on its runs).

        Daemon threads, not a ThreadPoolExecutor: the interpreter joins executor threads at exit,
        so stopping the server would hang until the whole experiment had finished."""
        todo = list(tasks)
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker():
            while not errors:
                with lock:
                    if not todo:
                        return
                    task = todo.pop(0)
                try:
                    fn(*task)
                except BaseException as e:  # re-raised in the driver thread below
                    errors.append(e)
        threads = [threading.Thread(target=worker, daemon=True)
                   for _ in range(max(1, self.engine.max_workers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def _scratch(self, seed: int, i: int) -> None:
        if self._stop.is_set():
            return
        cfg = scratch_config(self._seeded(seed), self.models[i])
        rec = self._record(role="scratch", seed=seed, size=i, run_id=None)
        rid, reused = ensure_run(self.engine, cfg, owner=self.owner, parent=self.id,
                                 name=f"ta-gap scratch {model_label(self.models[i])} seed {seed}",
                                 should_stop=self._stop.is_set)
        rec.update(run_id=rid, reused=reused, status="done", acc=self._acc(rid))

    def _distil(self, seed: int, j: int, via_ta: bool) -> None:
        if self._stop.is_set():
            return
        s = self.spec.student
        teacher_rid = self._scratch_run(seed, j)
        teacher = run_teacher(teacher_rid, self.models[j])
        chain = [self.models[self.picks[j]], self.models[s]] if via_ta else [self.models[s]]
        rec = self._record(role="via_ta" if via_ta else "direct", seed=seed, teacher=j,
                           ta=self.picks[j] if via_ta else None, run_id=None)
        try:
            links = run_chain(self.engine, self._seeded(seed), chain, teacher=teacher, owner=self.owner,
                              parent=self.id, name=f"ta-gap seed {seed}", should_stop=self._stop.is_set)
        except ChainError as e:
            rec.update(status="failed", error=str(e))
            if self._stop.is_set():
                return
            raise
        rec.update(run_id=links[-1].run_id, status="done", acc=self._acc(links[-1].run_id),
                   ta_run=links[0].run_id if via_ta else None, reused=links[-1].reused)

    def _seeded(self, seed: int) -> RunConfig:
        cfg = self.base.copy()
        cfg.train.seed = seed
        return cfg

    def _scratch_run(self, seed: int, i: int) -> str:
        with self._lock:
            return next(r["run_id"] for r in self.records
                        if r["role"] == "scratch" and r["seed"] == seed and r["size"] == i)

    def _acc(self, rid: str) -> float | None:
        row = self.store.get_run(rid)
        return (row or {}).get("summary", {}).get("final_test_acc")

    def _state(self) -> dict:
        with self._lock:
            return {"records": [dict(r) for r in self.records], "picks": self.picks,
                    "params": self.params, "error": self.error}

    # -- results ---------------------------------------------------------------------------------
    def scratch_mean(self, i: int) -> float | None:
        with self._lock:
            vals = [r.get("acc") for r in self.records if r["role"] == "scratch" and r["size"] == i]
        return mean_sd(vals)[0]

    def results(self) -> dict:
        """Plain data for the page: the ladder table and the three curves (mean, sd, n)."""
        return summarise(self.spec, self.params, [dict(r) for r in list(self.records)], self.picks)


def summarise(spec: TAGapSpec, params: list[int], records: list[dict], picks: dict) -> dict:
    models = spec.models()
    s = spec.student
    picks = {int(k): v for k, v in picks.items()}

    def accs(**match):
        return [r.get("acc") for r in records
                if r.get("status") == "done" and all(r.get(k) == v for k, v in match.items())]

    ladder_rows = []
    for i, m in enumerate(models):
        mu, sd, n = mean_sd(accs(role="scratch", size=i))
        ladder_rows.append({"size": model_label(m), "params": params[i], "scratch_acc": mu,
                            "scratch_sd": sd, "n": n, "role": "student" if i == s else
                            ("TA pick" if i in picks.values() else "")})
    alone = mean_sd(accs(role="scratch", size=s))
    curves = []
    for j in range(s + 1, len(models)):
        d = mean_sd(accs(role="direct", teacher=j))
        t = mean_sd(accs(role="via_ta", teacher=j))
        ta = picks.get(j)
        curves.append({"teacher": model_label(models[j]), "teacher_params": params[j],
                       "teacher_acc": mean_sd(accs(role="scratch", size=j))[0],
                       "direct": d[0], "direct_sd": d[1], "direct_n": d[2],
                       "via_ta": t[0], "via_ta_sd": t[1], "via_ta_n": t[2],
                       "ta": model_label(models[ta]) if ta is not None else None,
                       "alone": alone[0], "alone_sd": alone[1]})
    n_ta = sum(p is not None for p in picks.values()) if picks else max(0, len(models) - s - 2)
    total = len(spec.seeds) * (len(models) + (len(models) - s - 1) + n_ta)
    done = sum(r.get("status") == "done" for r in records)
    return {"ladder": ladder_rows, "curves": curves, "picks": picks,
            "student": model_label(models[s]), "progress": min(1.0, done / max(1, total))}


def start_experiment(engine, spec: TAGapSpec | dict, owner: str = "") -> TAGapExperiment:
    return TAGapExperiment.launch(engine, spec, owner)


def get_experiment(exp_id: str) -> TAGapExperiment | None:
    """A TA-gap experiment driven by this process (pages find theirs again after a rerun)."""
    return TAGapExperiment.live(exp_id)


def resume_experiment(engine, exp_id: str, caller: Caller | None = None) -> TAGapExperiment:
    """Run a stored experiment again under its id; every finished run is found by config hash,
    so only what is missing is trained."""
    return TAGapExperiment.resume(engine, exp_id, caller)


def stored_results(store, exp_id: str) -> dict | None:
    """Results of a stored experiment that this process is not running (e.g. after a restart)."""
    row = store.get_sweep(exp_id)
    if row is None or row["kind"] != "ta_gap":
        return None
    st = row["state"]
    return summarise(TAGapSpec.from_dict(row["spec"]), st.get("params", []), st.get("records", []),
                     st.get("picks", {}))
