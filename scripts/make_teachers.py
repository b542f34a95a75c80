"""Train the small teachers shipped in assets/teachers/ (run once; the files are committed).

Each teacher is a ``.pt`` (state_dict only, loadable with weights_only=True) plus a ``.json`` with its
model config, data set, split seed and measured test accuracy.
"""
from __future__ import annotations

import json


import torch

from kdengine import DataConfig, ModelConfig, assets_dir, build_model, count_params, load_data, model_label
from kdengine.teachers.fitting import accuracy, fit_supervised

TEACHERS = {
    "digits-mlp-2x256": (DataConfig(name="digits"), ModelConfig("mlp", 2, 256), 40, 1e-3),
    "digits-cnn-3x32": (DataConfig(name="digits"), ModelConfig("cnn", 3, 32), 30, 1e-3),
    "moons-mlp-3x64": (DataConfig(name="moons", n_samples=1000, noise=0.25),
                       ModelConfig("mlp", 3, 64), 80, 1e-2),
}


def main() -> None:
    torch.set_num_threads(1)
    out = assets_dir() / "teachers"
    out.mkdir(parents=True, exist_ok=True)
    for name, (dcfg, mcfg, epochs, lr) in TEACHERS.items():
        data = load_data(dcfg)
        torch.manual_seed(0)
        model = build_model(mcfg, data.input_shape, data.n_classes)
        fit_supervised(model, data.teacher_train.x, data.teacher_train.y, epochs, lr, 64, 0,
                       torch.device("cpu"))
        acc = accuracy(model, data.test.x, data.test.y, torch.device("cpu"))
        torch.save({"state_dict": model.state_dict()}, out / f"{name}.pt")
        meta = {"data": dcfg.name, "data_config": dcfg.__dict__, "model": mcfg.__dict__,
                "label": model_label(mcfg), "params": count_params(model), "test_acc": acc,
                "epochs": epochs, "torch": torch.__version__}
        (out / f"{name}.json").write_text(json.dumps(meta, indent=1))
        print(f"{name}: {model_label(mcfg)}, {count_params(model)} params, test acc {acc:.4f}")


if __name__ == "__main__":
    main()
