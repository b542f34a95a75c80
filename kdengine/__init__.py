"""kdengine: the knowledge-distillation training engine behind KD Playground. Never imports Streamlit.

This module is the public API: the pages, the CLI, the benches and the tests import the names below
from ``kdengine`` itself. They are plain imports that an editor and a type checker follow; at run
time each loads on first use (the imports are read from this file's ``if TYPE_CHECKING:`` block), so
``import kdengine`` stays cheap and the web app's first page renders before torch is loaded.

The packages, from the bottom up (each imports only those before it):

    core        config and knobs, events, paths, store, checkpoints, presets, export, roles
                (who may change a run) and the class state (the lesson lock)
    losses      pure functional losses (kd_loss, dkd_loss, dkd_terms, ...)
    data        data sets, transfer sets, the generated text task
    models      model families with a size knob, the transformer, Hugging Face wrappers
    teachers    teacher sources (train/cache/shipped/checkpoint/run/HF), the student alone
    analysis    soft targets, dark knowledge, decision boundaries
    methods     one module per distillation method behind one contract (methods/base.py)
    run         the engine: queue, executors, trainer, recorder, snapshots, stored runs
    teaching    lessons, pitfall linter, the class (roster, board), a run as a notebook to take home
    experiments sweeps, search, teacher-assistant chains and the TA gap, the phenomena suite
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from kdengine.core.config import (DATASETS, TOY_DATASETS, DataConfig, MethodConfig, ModelConfig,
                                      RunConfig, TeacherConfig, TrainConfig, config_hash, flatten)
    from kdengine.core.knobs import ConfigError, field_specs, param
    from kdengine.core.paths import assets_dir, data_root
    from kdengine.core.store import ACTIVE, Store
    from kdengine.core.roles import Caller, NotAllowed
    from kdengine.core.class_state import ClassLock, ClassState
    from kdengine.core.checkpoints import CheckpointError, safe_load
    from kdengine.core.presets import list_presets, load_preset, preset_path
    from kdengine.core.export import export_run
    from kdengine.core.code import method_source, term_names
    from kdengine.core.events import Artifacts, Checkpoint, Ended, Metrics, Notice, Phase, Status
    from kdengine.losses import dkd_loss, dkd_terms, kd_loss
    from kdengine.data import DataBundle, DataUnavailable, fallback_config, load_data
    from kdengine.data.archives import ArchiveRefused, import_files
    from kdengine.models import build_model, count_params, ladder, logits_of, model_label
    from kdengine.teachers.sources import get_teacher, shipped_teachers
    from kdengine.core.registry import get_method_class, method_names, register
    from kdengine.methods import Method, temperature_of
    from kdengine.run.engine import Engine, check_resources, train
    from kdengine.run.snapshot import RunSnapshot
    from kdengine.run.trainer import Trainer
    from kdengine.run.evaluation import evaluate
    from kdengine.run.stored import (RunModels, TeacherNotCached, checkpoint_state, load_run_models,
                                     teacher_is_cached)
    from kdengine.teaching.pitfalls import lint
    from kdengine.teaching.bundle import NotExportable
    from kdengine.teaching.notebook import (build_notebook, export_notebook, notebook_problem,
                                            write_notebook)
    from kdengine.teaching.class_server import public_url
    from kdengine.teaching.lessons import (apply_locks, class_lock, free_knobs, knob_spec,
                                           lesson_link, lesson_lock, link_for_student, load_lessons,
                                           lock_state, locks_line, parse_link)
    from kdengine.teaching.classroom import NameTaken, Roster, merge_students, new_class
    from kdengine.teaching.board import by_lesson, class_csv, lesson_board, who_is_where
    from kdengine.experiments.sweeps import (DEFAULT_AXES as DEFAULT_SWEEP_AXES,
                                             DEFAULT_PRESET as DEFAULT_SWEEP_PRESET,
                                             BACKENDS as SWEEP_BACKENDS, Sweep, SweepSpec, get_sweep,
                                             parse_values, resume_sweep, start_sweep,
                                             stored_cells)
    from kdengine.experiments.ta_gap import (PRESET as TA_GAP_PRESET, TAGapExperiment, TAGapSpec,
                                             get_experiment, resume_experiment, start_experiment,
                                             stored_results)
    from kdengine.experiments.search import (DEFAULT_SPACE as DEFAULT_SEARCH_SPACE,
                                             METRICS as SEARCH_METRICS, PRUNERS, SEARCH_BACKENDS,
                                             Search, SearchSpec, best_config, best_trial,
                                             default_range, get_search, knob_meta, optimise,
                                             resume_search, search_warnings, start_search,
                                             stored_trials, study_of)
    from kdengine.experiments.base import is_running, shown_status
    from kdengine.cli import load_config


def _public_names() -> dict[str, tuple[str, str]]:
    """public name -> (module, name there), read from the ``if TYPE_CHECKING:`` block above."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If) and
                 isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING")
    return {a.asname or a.name: (imp.module, a.name)
            for imp in block.body if isinstance(imp, ast.ImportFrom) for a in imp.names}


_API = _public_names()
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'kdengine' has no attribute {name!r}")
    mod, attr = _API[name]
    value = getattr(importlib.import_module(mod), attr)
    globals()[name] = value       # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
