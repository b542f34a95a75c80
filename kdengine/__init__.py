"""kdengine: the knowledge-distillation training engine behind KD Playground.

This module is the public API: the pages, the CLI, the benches and the tests import these names
from ``kdengine`` itself. They are loaded on first use, so ``import kdengine`` is cheap (the web
app's first page renders before torch has finished importing). Never imports Streamlit.

The packages, from the bottom up (each imports only those before it):

    core        config and knobs, paths, store, checkpoints, presets, export
    losses      pure functional losses (kd_loss, dkd_loss, dkd_terms, ...)
    data        data sets, transfer sets, the generated text task
    models      model families with a size knob, the transformer, Hugging Face wrappers
    teachers    teacher sources (train/cache/shipped/checkpoint/run/HF), baselines
    analysis    soft targets, dark knowledge, decision boundaries
    methods     one module per distillation method behind one contract (methods/base.py)
    run         trainer, engine, evaluation, per-epoch monitors, resources, stored runs
    teaching    lessons, pitfall linter
    experiments sweeps, vectorised students, Ray, teacher-assistant chains and the TA gap

``load_config`` (a config file or preset name plus ``--set`` style overrides) comes from the CLI,
which sits above every package.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# public name -> (module that defines it, its name there); "PUBLIC=name" renames a name that would
# be unclear on its own (a sweep's BACKENDS, the TA gap's PRESET)
_API: dict[str, tuple[str, str]] = {}
for _mod, _names in {
    "kdengine.core.config": "RunConfig DataConfig ModelConfig TeacherConfig MethodConfig "
                            "TrainConfig DATASETS TOY_DATASETS flatten config_hash",
    "kdengine.core.knobs": "ConfigError field_specs param",
    "kdengine.core.paths": "data_root assets_dir",
    "kdengine.core.store": "Store ACTIVE",
    "kdengine.core.checkpoints": "CheckpointError safe_load",
    "kdengine.core.presets": "list_presets load_preset preset_path",
    "kdengine.core.export": "export_run",
    "kdengine.losses": "kd_loss dkd_loss dkd_terms",
    "kdengine.data": "load_data fallback_config DataUnavailable DataBundle",
    "kdengine.models": "build_model model_label ladder logits_of count_params",
    "kdengine.teachers.sources": "get_teacher shipped_teachers",
    "kdengine.core.registry": "method_names get_method_class register",
    "kdengine.methods": "Method temperature_of",
    "kdengine.run.engine": "Engine train check_resources",
    "kdengine.run.trainer": "Trainer",
    "kdengine.run.evaluation": "evaluate",
    "kdengine.run.stored": "load_run_models teacher_is_cached checkpoint_state TeacherNotCached RunModels",
    "kdengine.teaching.pitfalls": "lint",
    "kdengine.teaching.lessons": "load_lessons lesson_link parse_link knob_spec apply_locks free_knobs locks_line",
    "kdengine.experiments.sweeps": "SweepSpec Sweep start_sweep get_sweep resume_sweep stored_cells "
                                   "parse_values ray_available SWEEP_BACKENDS=BACKENDS "
                                   "DEFAULT_SWEEP_AXES=DEFAULT_AXES DEFAULT_SWEEP_PRESET=DEFAULT_PRESET",
    "kdengine.experiments.ta_gap": "TAGapSpec TAGapExperiment start_experiment get_experiment "
                                   "resume_experiment stored_results TA_GAP_PRESET=PRESET",
    "kdengine.experiments.search": "SearchSpec Search start_search get_search resume_search "
                                   "stored_trials study_of best_trial best_config default_range "
                                   "knob_meta optimise PRUNERS SEARCH_BACKENDS "
                                   "SEARCH_METRICS=METRICS DEFAULT_SEARCH_SPACE=DEFAULT_SPACE",
    "kdengine.experiments.base": "shown_status is_running",
    "kdengine.cli": "load_config",
}.items():
    for _n in _names.split():
        _public, _, _attr = _n.partition("=")
        _API[_public] = (_mod, _attr or _public)

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
