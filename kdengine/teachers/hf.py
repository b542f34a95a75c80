"""Hugging Face teachers for the text task (``teacher.checkpoint = "hf:<name or folder>"``)."""
from __future__ import annotations

import json
import time

from kdengine.core.checkpoints import load_state_into, safe_load, save_checkpoint
from kdengine.core.config import config_hash
from kdengine.core.knobs import ConfigError
from kdengine.core.paths import data_root
from kdengine.data import text
from kdengine.models.hf import load_pretrained
from kdengine.teachers.fitting import accuracy, bf16_autocast, fit_supervised
from kdengine.teachers.keys import teacher_key


def get_hf_teacher(cfg, data, device, progress=None, should_stop=None):
    """Teacher from ``teacher.checkpoint = "hf:..."``: fine-tuned on the task (source train, cached
    by config) or used as is (source checkpoint). Returns (model, info) like teachers.get_teacher."""
    t = cfg.teacher
    if data.kind != "text":
        raise ConfigError("teacher.checkpoint", "Hugging Face teachers go with the text data set")
    vocab = text.tokenizer_for(cfg.data).itos
    model = load_pretrained(t.checkpoint, vocab, data.n_classes)
    label = f"{type(model.model).__name__} ({t.checkpoint[3:]})"
    cached = True
    if t.source == "train":
        key = config_hash([teacher_key(cfg), t.checkpoint])     # the model name is part of it
        path = data_root() / "teachers" / f"hf-{key}.pt"
        if path.exists():
            load_state_into(model.model, safe_load(path)["state_dict"], "cached HF teacher")
        else:
            cached = False
            fit_supervised(model, data.teacher_train.x, data.teacher_train.y, t.epochs, t.lr,
                           cfg.train.batch_size, cfg.data.seed, device, progress, should_stop,
                           bf16_autocast(cfg.train, device))
    model.to(device).eval().requires_grad_(False)
    acc = accuracy(model, data.test.x, data.test.y, device)
    if not cached:
        save_checkpoint(path, {"state_dict": {k: v.cpu() for k, v in model.model.state_dict().items()},
                               "meta": json.dumps({"hf": t.checkpoint, "test_acc": acc,
                                                   "created": time.time()})})
    return model, {"label": label, "test_acc": acc, "source": t.source, "cached": cached}
