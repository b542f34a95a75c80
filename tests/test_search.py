"""Search mode: TPE over knob ranges taken from the knob metadata, pruning (of runs alone and of
stacked members), resume, bad ranges, a search stored with the retired ray backend."""
from __future__ import annotations

import math
import time

import pytest

from kdengine.core.checkpoints import read_run_checkpoint
from kdengine.core.knobs import ConfigError
from kdengine.core.store import Store
from kdengine.experiments.search import (SearchSpec, default_range, distributions, optimise,
                                         resume_search, start_search, study_of)
from kdengine.run.engine import Engine

EPOCHS = 6


def toy(params: dict, report) -> float:
    """A learning curve whose plateau peaks at T = 8 (on a log scale) and soft_weight = 0.7."""
    peak = math.exp(-3 * math.log(params["method.params.T"] / 8) ** 2
                    - 8 * (params["method.params.soft_weight"] - 0.7) ** 2)
    value = 0.0
    for epoch in range(1, EPOCHS + 1):
        value = peak * (1 - 0.5 ** epoch)
        toy.epochs += 1
        if report(epoch, value):
            break
    return value


def _toy_spec(tiny_cfg, **kw) -> SearchSpec:
    space = {"method.params.T": {"low": 1.0, "high": 64.0, "log": True},
             "method.params.soft_weight": {"low": 0.0, "high": 1.0}}
    return SearchSpec(base=tiny_cfg.to_dict(), space=space, **kw).validate()


def test_seeded_study_finds_the_toy_optimum_and_repeats_itself(tiny_cfg):
    runs = []
    for _ in range(2):
        toy.epochs = 0
        study = optimise(_toy_spec(tiny_cfg, n_trials=40, seed=3, pruner="none"), toy)
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1]                                    # the seed reproduces the study
    best = study.best_trial.params
    assert abs(math.log2(best["method.params.T"] / 8)) < 1.0     # within a factor 2 of T = 8
    assert abs(best["method.params.soft_weight"] - 0.7) < 0.15
    assert study.best_value > 0.85


@pytest.mark.parametrize("pruner", ["median", "asha"])
def test_pruning_stops_toy_trials_early(tiny_cfg, pruner):
    toy.epochs = 0
    study = optimise(_toy_spec(tiny_cfg, n_trials=30, seed=0, pruner=pruner), toy)
    states = [t.state.name for t in study.trials]
    assert "PRUNED" in states and "COMPLETE" in states
    assert toy.epochs < 0.8 * 30 * EPOCHS


def test_ranges_default_from_knob_metadata(tiny_cfg):
    assert default_range(tiny_cfg, "method.params.T") == {"low": 1.0, "high": 20.0, "log": True}
    assert default_range(tiny_cfg, "train.lr")["log"] is True
    width = default_range(tiny_cfg, "student.width")           # 16: a factor 4 either side
    assert width == {"low": 4, "high": 64, "log": False}
    assert default_range(tiny_cfg, "train.optimizer") == {"choices": ["adam", "adamw", "sgd"]}
    assert default_range(tiny_cfg, "train.baseline") == {"choices": [False, True]}
    d = distributions(tiny_cfg, {"student.width": width, "train.lr": default_range(tiny_cfg, "train.lr")})
    assert type(d["student.width"]).__name__ == "IntDistribution" and d["train.lr"].log


@pytest.mark.parametrize("path, rng, words", [
    ("method.params.T", {"low": 0.0, "high": 4.0}, "must be > 0"),          # the knob's own bound
    ("method.params.T", {"low": 4.0, "high": 2.0}, "low must be below high"),
    ("method.params.soft_weight", {"low": 0.0, "high": 1.0, "log": True}, "log scale needs low > 0"),
    ("student.width", {"low": 2.5, "high": 8}, "integer bounds"),
    ("train.optimizer", {"choices": ["adam", "rmsprop"]}, "must be one of"),
    ("method.params.Tee", {"low": 1.0, "high": 2.0}, "not a config field"),
    ("student.arch", {"choices": ["mlp", "cnn"]}, "needs image data"),        # only on moons below
])
def test_bad_ranges_name_the_knob(tiny_cfg, path, rng, words):
    base = tiny_cfg.with_overrides({"data.name": "moons"}) if path == "student.arch" else tiny_cfg
    with pytest.raises(ConfigError, match=words) as e:
        SearchSpec(base=base.to_dict(), space={path: rng}).validate()
    assert e.value.field.startswith(path if path != "student.arch" else "student")


def test_bad_budgets_and_pruner_name_the_field(tiny_cfg):
    space = {"method.params.T": {"low": 1.0, "high": 4.0}}
    for kw, name in (({"pruner": "hyper"}, "pruner"), ({"n_trials": 0}, "n_trials"),
                     ({"timeout_s": -1}, "timeout_s"), ({"metric": "acc"}, "metric"),
                     ({"backend": "slurm"}, "backend")):
        with pytest.raises(ConfigError) as e:
            SearchSpec(base=tiny_cfg.to_dict(), space=space, **kw).validate()
        assert e.value.field == name


# -- real training runs ---------------------------------------------------------------------------
@pytest.fixture
def engine(runs_dir):
    eng = Engine(Store(), max_workers=1)
    yield eng
    eng.shutdown()


def _run_spec(tiny_cfg, **kw) -> SearchSpec:
    base = tiny_cfg.with_overrides({"train.epochs": 4})
    space = {"train.lr": {"low": 1e-5, "high": 3e-2, "log": True},
             "method.params.T": {"low": 1.0, "high": 16.0, "log": True}}
    return SearchSpec(base=base.to_dict(), space=space, name="t", **kw)


def test_search_of_runs_prunes_and_stores_every_trial(engine, tiny_cfg):
    se = start_search(engine, _run_spec(tiny_cfg, n_trials=8, seed=0, pruner="asha"))
    assert se.wait(300) == "done", se.error
    rows, store = se.rows(), engine.store
    assert len(rows) == 8 and {r["state"] for r in rows} <= {"complete", "pruned"}
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert pruned, "ASHA pruned nothing"
    assert se.epochs_used() < 8 * 4                            # counted epochs, not configured
    for r in rows:
        run = store.get_run(r["run_id"])
        assert run["parent"] == se.id
        assert run["config"]["train"]["lr"] == r["train.lr"]
        assert run["config"]["data"]["val_fraction"] == 0.2   # the val split, added for val_acc
        assert len(store.series(r["run_id"])["val_acc"]) == r["epochs"]
        if r["state"] == "pruned":
            assert run["status"] == "stopped" and "pruned by search" in run["error"]
            assert r["epochs"] < 4
        else:
            assert run["status"] == "done" and r["value"] == run["summary"]["final_val_acc"]
    stored = store.get_sweep(se.id)
    assert stored["kind"] == "search" and stored["status"] == "done"
    assert stored["state"]["epochs_used"] == se.epochs_used()
    study = study_of(se.spec, rows)                            # Optuna's plots read this
    assert len(study.trials) == 8


def test_resumed_search_continues_without_repeating_a_trial(engine, tiny_cfg):
    se = start_search(engine, _run_spec(tiny_cfg, n_trials=5, seed=1, pruner="none"))
    end = time.monotonic() + 120

    def mid_trial():
        return [r for r in se.rows() if r["state"] == "running" and r["epochs"] >= 1]
    while not (se.finished() >= 2 and mid_trial()) and time.monotonic() < end:
        time.sleep(0.005)
    cut = mid_trial()[0]["run_id"]
    se.stop()                                                  # the interruption, mid-trial
    assert se.wait(60) == "stopped"
    assert engine.store.get_run(cut)["status"] == "stopped"
    first = {r["trial"]: r["run_id"] for r in se.rows() if r["state"] == "complete"}
    assert 2 <= len(first) < 5
    again = resume_search(engine, se.id)
    assert again.id == se.id and again.wait(300) == "done", again.error
    rows = again.rows()
    done = [r for r in rows if r["state"] == "complete"]
    assert len(done) == 5                                      # the budget counts the old trials
    for number, rid in first.items():                          # kept, not trained again
        assert next(r for r in done if r["trial"] == number)["run_id"] == rid
    knobs = [(r["train.lr"], r["method.params.T"]) for r in done]
    assert len(set(knobs)) == 5                                # no trial repeated
    assert cut in {r["run_id"] for r in done}                  # continued under its run id
    runs = [r for r in engine.store.list_runs() if r["parent"] == se.id]
    assert len({r["config_hash"] for r in runs}) == len(runs)  # one run per config
    assert {r["status"] for r in runs} == {"done"}             # the cut-off run was continued


STACK_SPACE = {"method.params.T": {"low": 1.0, "high": 16.0, "log": True},
               "method.params.soft_weight": {"low": 0.0, "high": 1.0}}


def test_vectorised_search_trains_a_batch_of_suggestions_as_stacked_students(engine, tiny_cfg):
    spec = SearchSpec(base=tiny_cfg.to_dict(), space=dict(STACK_SPACE), n_trials=10, seed=0,
                      pruner="none", backend="vectorised")
    se = start_search(engine, spec)
    assert se.wait(300) == "done", se.error
    rows = se.rows()
    assert len(rows) == 10 and {r["state"] for r in rows} == {"complete"}
    stacked = [engine.store.get_run(r["run_id"])["summary"].get("stacked") for r in rows]
    assert stacked == [8] * 8 + [2] * 2                          # a batch of 8, then the last 2
    assert len({(r["method.params.T"], r["method.params.soft_weight"]) for r in rows}) == 10
    for r in rows:
        assert r["value"] == engine.store.get_run(r["run_id"])["summary"]["final_val_acc"]
        assert len(engine.store.series(r["run_id"])["val_acc"]) == tiny_cfg.train.epochs


def test_a_stacked_search_prunes_members_while_the_others_train_on(engine, tiny_cfg):
    """One group of 8 stacked trials under ASHA: a pruned member is stopped and leaves the pass
    after the epoch it was judged on; the others finish in the same pass."""
    base = tiny_cfg.with_overrides({"train.epochs": 4})
    se = start_search(engine, SearchSpec(base=base.to_dict(), space=dict(STACK_SPACE), n_trials=8,
                                         seed=0, pruner="asha", backend="vectorised", name="t"))
    assert se.wait(300) == "done", se.error
    rows, store = se.rows(), engine.store
    pruned = [r for r in rows if r["state"] == "pruned"]
    complete = [r for r in rows if r["state"] == "complete"]
    assert len(pruned) + len(complete) == 8 and pruned and complete
    assert se.epochs_used() < 8 * 4
    for r in rows:
        run = store.get_run(r["run_id"])
        assert run["parent"] == se.id and run["summary"]["stacked"] == 8     # all in one pass
        assert len(store.series(r["run_id"])["val_acc"]) == r["epochs"]
        if r in pruned:
            assert run["status"] == "stopped" and "pruned by search" in run["error"]
            assert r["epochs"] < 4 and r["value"] == r["curve"][r["epochs"]]
            # its checkpoint is the epoch it was measured on: it left before another step
            assert read_run_checkpoint(store.checkpoint_path(r["run_id"])).epoch == r["epochs"]
        else:
            assert run["status"] == "done" and r["epochs"] == 4
            assert r["value"] == run["summary"]["final_val_acc"]


def test_a_search_stored_with_the_ray_backend_resumes_on_local_and_says_so(engine, tiny_cfg):
    spec = _run_spec(tiny_cfg, n_trials=2, seed=0, pruner="none").__dict__ | {"backend": "ray"}
    engine.store.save_sweep("se-old-ray", "search", spec, {"trials": []}, "interrupted", name="t")
    se = resume_search(engine, "se-old-ray")
    assert se.spec.backend == "local" and "ray backend, which is gone" in se.notices[0]
    assert se.wait(300) == "done", se.error
    assert [r["state"] for r in se.rows()] == ["complete", "complete"]
    assert engine.store.get_sweep(se.id)["state"]["notices"] == se.notices


def test_cli_search_prints_progress_trials_and_best(runs_dir):
    import os
    import subprocess
    import sys
    from pathlib import Path
    args = ["sweep", "--mode", "search", "--config", "digits-quick", "--set", "train.epochs=2",
            "--set", "teacher.epochs=2", "--axis", "method.params.T=1:16:log", "--axis",
            "method.params.soft_weight", "--trials", "4", "--pruner", "median", "--seed", "2"]
    p = subprocess.run([sys.executable, "-m", "kdengine", *args],
                       cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                       env={**os.environ, "KD_RUNS_DIR": str(runs_dir)}, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "4 trials of method.params.T, method.params.soft_weight" in p.stdout
    assert "4/4 trials" in p.stdout                           # the progress line
    assert p.stdout.count(" complete ") + p.stdout.count(" pruned ") == 4
    assert "best: trial #" in p.stdout
    bad = subprocess.run([sys.executable, "-m", "kdengine", *args[:-8], "--axis",
                          "method.params.T=0:4"], cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True,
                         env={**os.environ, "KD_RUNS_DIR": str(runs_dir)}, timeout=300)
    assert bad.returncode == 2 and "method.params.T" in bad.stderr


# ---- warnings stored with a search: the test set, and teachers that may have seen the val split --
SPACE_T = {"method.params.T": {"low": 1.0, "high": 8.0, "log": True}}


@pytest.mark.parametrize("metric", ["test_acc", "agreement", "kl_test"])
def test_a_search_on_a_test_set_metric_warns_and_keeps_the_warning(engine, tiny_cfg, metric):
    from kdengine.experiments.search import Search
    se = Search(engine, SearchSpec(base=tiny_cfg.to_dict(), space=dict(SPACE_T), metric=metric))
    assert any("test set" in n for n in se.notices), se.notices
    se._save()
    assert se.notices == engine.store.get_sweep(se.id)["state"]["notices"]
    honest = Search(engine, SearchSpec(base=tiny_cfg.to_dict(), space=dict(SPACE_T)))
    assert honest.notices == []       # val_acc, with a teacher trained here without the val split


def test_a_search_warns_when_the_teacher_may_have_trained_on_the_validation_split(engine,
                                                                                  tiny_cfg):
    from kdengine.experiments.search import Search

    def notices(teacher: dict) -> list[str]:
        cfg = tiny_cfg.with_overrides({f"teacher.{k}": v for k, v in teacher.items()})
        return Search(engine, SearchSpec(base=cfg.to_dict(), space=dict(SPACE_T))).notices
    shipped = notices({"source": "shipped", "checkpoint": "digits-mlp-2x256",
                       "model": {"arch": "mlp", "depth": 2, "width": 256}})
    assert any("validation" in n for n in shipped), shipped
    assert any("validation" in n for n in notices({"source": "checkpoint",
                                                   "checkpoint": "teachers/mine.pt"}))
    # a run teacher: disjoint when that run held out the same validation split, else a warning
    same = tiny_cfg.with_overrides({"data.val_fraction": 0.2})
    other = tiny_cfg.with_overrides({"data.val_fraction": 0.0})
    ok = engine.store.create_run(same.to_dict(), same.hash, status="done")
    leaky = engine.store.create_run(other.to_dict(), other.hash, status="done")
    assert notices({"source": "run", "checkpoint": ok}) == []
    assert any("validation" in n for n in notices({"source": "run", "checkpoint": leaky}))
