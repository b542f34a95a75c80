"""The text branch: the generated multi-label task, tiny transformers, DistilBERT / TinyBERT terms."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from kdengine.core.events import Metrics
from kdengine import ConfigError, RunConfig
from kdengine.core.config import DataConfig, ModelConfig
from kdengine.data.datasets import load_data
from kdengine.methods import Batch, TrainContext, get_method_class
from kdengine.models.families import build_model
from kdengine.losses.multilabel import metrics, multilabel_kd_loss
from kdengine.data import text
from kdengine.models import transformer

SMALL = {"name": "text", "n_samples": 1200, "noise": 0.3}


def text_cfg(method="distilbert", params=None, student=None, **train):
    return RunConfig.from_dict({
        "data": SMALL,
        "teacher": {"source": "train", "model": {"arch": "transformer", "depth": 2, "width": 32},
                    "epochs": 10, "lr": 0.003},
        "student": student or {"arch": "transformer", "depth": 1, "width": 16},
        "method": {"name": method, "params": params or {}},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.003, "log_every": 5, **train},
    })


def ctx(kind="text"):
    return TrainContext(steps_per_epoch=10, epochs=1, n_classes=6, input_shape=(text.MAX_LEN,),
                        device=torch.device("cpu"), data_kind=kind)


def batch_of(data, n=16):
    idx = torch.arange(n)
    return Batch(data.transfer.x[idx], data.transfer.y[idx], torch.ones(n, dtype=torch.bool), idx)


# ---- the task and tokenizer ----------------------------------------------------------------------
def test_task_is_deterministic_multilabel_and_tokenised():
    d = load_data(DataConfig(**SMALL))
    assert d.kind == "text" and d.n_classes == 6 and d.class_names == text.LABELS
    assert d.transfer.x.dtype == torch.int64 and d.transfer.x.shape[1] == text.MAX_LEN
    assert d.transfer.y.dtype == torch.float32 and d.transfer.y.shape[1] == 6
    assert set(d.transfer.y.unique().tolist()) == {0.0, 1.0}
    assert (d.transfer.y[:, :4].sum(1) >= 1).all()          # every sentence has a topic
    assert ((d.transfer.y.sum(1)) >= 2).any()               # and many have several labels
    assert (d.transfer.x[:, 0] == text.CLS).all()
    again = text.load_raw(DataConfig(**SMALL))
    assert np.array_equal(again[0], d.transfer.x.numpy()) and np.array_equal(again[1],
                                                                              d.transfer.y.numpy())
    other = text.load_raw(DataConfig(**{**SMALL, "seed": 1}))
    assert not np.array_equal(other[0][:50], again[0][:50])


def test_tokenizer_round_trip_and_unknown_words():
    cfg = DataConfig(**SMALL)
    tok = text.tokenizer_for(cfg)
    sentence = text.texts_for(cfg, "test")[0]
    d = load_data(cfg)
    assert tok.decode(d.test.x[0]) == " ".join(text.words(sentence))
    ids = tok.encode("the zzzunseen team")
    assert ids[:4] == [text.CLS, tok.stoi["the"], text.UNK, tok.stoi["team"]]
    assert len(ids) == text.MAX_LEN and ids[-1] == text.PAD


def test_negation_flips_sentiment_label():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        s, y = text.make_sentence(rng, 0.3)
        ws = text.words(s)
        for i, w in enumerate(ws):
            if w in text._POSITIVE + text._NEGATIVE:
                negated = i > 0 and ws[i - 1] in text._NEGATORS
                positive_word = w in text._POSITIVE
                assert y[4] == float(positive_word != negated) and y[5] == float(positive_word == negated)
                seen.add(negated)
    assert seen == {True, False}


# ---- models ----------------------------------------------------------------------------------------
def test_transformer_features_shapes_and_padding_mask():
    m = build_model(ModelConfig(arch="transformer", depth=2, width=16), (text.MAX_LEN,), 6).eval()
    d = load_data(DataConfig(**SMALL))
    x = d.test.x[:5]
    f = m.forward_features(x)
    assert f.logits.shape == (5, 6) and torch.equal(f.logits, m(x))
    L = int((x != text.PAD).sum(1).max())            # the batch is trimmed to its longest sentence
    assert f.mask.shape == (5, L) and L < text.MAX_LEN
    assert len(f.hidden) == 3 and f.hidden[0].shape == (5, L, 16)
    assert len(f.attentions) == 2 and f.attentions[0].shape == (5, 4, L, L)
    # attention rows are distributions that never look at padding
    a = f.attentions[0]
    assert torch.allclose(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-5)
    assert (a * (~f.mask)[:, None, None, :]).abs().max() < 1e-6
    # padding does not change the prediction: a sentence alone gives the same logits as in a batch
    # with longer ones (its own padding is then attended by nobody)
    one = x[:1, : int(f.mask[0].sum())]
    assert torch.allclose(m(one), f.logits[:1], atol=1e-5)


def test_raw_attention_scores_are_what_the_softmax_is_taken_of():
    m = build_model(ModelConfig(arch="transformer", depth=2, width=16), (text.MAX_LEN,), 6).eval()
    f = m.forward_features(load_data(DataConfig(**SMALL)).test.x[:5])
    assert len(f.scores) == 2 and f.scores[0].shape == f.attentions[0].shape
    pad = (~f.mask)[:, None, None, :]
    for raw, probs in zip(f.scores, f.attentions):
        assert torch.isfinite(raw).all()                   # unmasked: MSE over them stays finite
        assert torch.allclose(raw.masked_fill(pad, -1e9).softmax(-1), probs, atol=1e-6)


def test_tinybert_compares_raw_scores_by_default_and_probabilities_on_request():
    cls = get_method_class("tinybert")
    assert cls.Params().attention == "scores"
    torch.manual_seed(0)
    d = load_data(DataConfig(**SMALL))
    teacher = build_model(ModelConfig(arch="transformer", depth=2, width=16), (text.MAX_LEN,), 6)
    student = build_model(ModelConfig(arch="transformer", depth=1, width=16), (text.MAX_LEN,), 6)
    batch = Batch(d.test.x[:8], d.test.y[:8], torch.ones(8, dtype=torch.bool), torch.arange(8))
    attn = {}
    for mode in ("scores", "probs"):
        m = cls(student, [teacher], cls.Params(attention=mode), ctx())
        attn[mode] = m.loss_terms(batch, 0)["attn"].item()
    assert attn["scores"] != pytest.approx(attn["probs"])   # really a different comparison
    assert attn["scores"] > 0 and attn["probs"] > 0


def test_transformer_is_text_only():
    with pytest.raises(ConfigError, match="transformer"):
        text_cfg(student={"arch": "mlp", "depth": 1, "width": 16})
    with pytest.raises(ConfigError, match="student.arch"):
        RunConfig.from_dict({"data": {"name": "digits"}, "method": {"name": "distilbert"}})


def test_layer_map_is_uniform():
    assert transformer.layer_map(2, 4) == [2, 4]
    assert transformer.layer_map(1, 3) == [3]
    assert transformer.layer_map(3, 6) == [2, 4, 6]
    assert transformer.layer_map(4, 12) == [3, 6, 9, 12]


# ---- losses -----------------------------------------------------------------------------------------
def test_multilabel_kd_matches_hand_computation():
    s = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, -3.0]])
    t = torch.tensor([[1.5, 0.5, -1.0], [2.0, -2.0, 0.0]])
    T = 2.0
    total = 0.0
    for i in range(2):
        for j in range(3):
            pt = 1 / (1 + math.exp(-t[i, j].item() / T))
            ps = 1 / (1 + math.exp(-s[i, j].item() / T))
            total += pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))
    expected = T * T * total / 2          # sum over labels, mean over samples, times T^2
    assert multilabel_kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)
    assert multilabel_kd_loss(s, t, T, t_squared=False).item() == pytest.approx(expected / 4,
                                                                                 rel=1e-5)
    assert multilabel_kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_multilabel_metrics_by_hand():
    s = torch.tensor([[2.0, -1.0, 1.0], [-1.0, -1.0, 1.0]])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    t = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, 1.0]])
    m = metrics(s, y, s, y, t)
    assert m["test_acc"] == pytest.approx(4 / 6)
    assert m["test_exact"] == pytest.approx(0.0)
    assert m["test_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))   # tp 2, fp 1, fn 1
    assert m["agreement"] == pytest.approx(4 / 6)
    assert m["kl_test"] > 0


@pytest.mark.parametrize("method, zero_terms", [("distilbert", ["cos", "kd"]),
                                                ("tinybert", ["attn", "hidden", "emb", "kd"])])
def test_layer_terms_vanish_when_student_equals_teacher(method, zero_terms):
    torch.manual_seed(0)
    teacher = build_model(ModelConfig(arch="transformer", depth=2, width=16), (text.MAX_LEN,), 6)
    student = copy.deepcopy(teacher)
    cls = get_method_class(method)
    m = cls(student, [teacher], cls.Params(), ctx())
    b = batch_of(load_data(DataConfig(**SMALL)))
    m.train(False)
    terms = m.loss_terms(b, 0)
    for k in zero_terms:
        assert abs(terms[k].item()) < 1e-5, (k, terms[k].item())
    # a different student makes the same terms positive
    other = build_model(ModelConfig(arch="transformer", depth=1, width=16), (text.MAX_LEN,), 6)
    terms2 = cls(other, [teacher], cls.Params(), ctx()).loss_terms(b, 0)
    for k in zero_terms:
        assert terms2[k].item() > 1e-4, k


def test_tinybert_projection_trains_and_handles_other_widths():
    torch.manual_seed(0)
    teacher = build_model(ModelConfig(arch="transformer", depth=2, width=32), (text.MAX_LEN,), 6)
    student = build_model(ModelConfig(arch="transformer", depth=1, width=16), (text.MAX_LEN,), 6)
    cls = get_method_class("tinybert")
    m = cls(student, [teacher], cls.Params(two_stage=True), ctx())
    assert m.w_h.weight.shape == (32, 16)
    b = batch_of(load_data(DataConfig(**SMALL)))
    early, late = m.loss_terms(b, 0), m.loss_terms(b, 9)
    assert {"attn", "hidden", "emb"} <= set(early) and early["kd"].item() == 0.0
    assert "attn" not in late and late["kd"].item() > 0
    sum(early.values()).backward()
    assert m.w_h.weight.grad is not None and m.w_h.weight.grad.abs().sum() > 0


def test_distilbert_initialises_student_from_teacher_layers():
    teacher = build_model(ModelConfig(arch="transformer", depth=3, width=16), (text.MAX_LEN,), 6)
    student = build_model(ModelConfig(arch="transformer", depth=2, width=16), (text.MAX_LEN,), 6)
    assert transformer.copy_alternate_layers(student, teacher)
    for i, j in ((0, 0), (1, 2)):
        for a, b in zip(student.blocks[i].parameters(), teacher.blocks[j].parameters()):
            assert torch.equal(a, b)
    narrow = build_model(ModelConfig(arch="transformer", depth=1, width=8), (text.MAX_LEN,), 6)
    assert not transformer.copy_alternate_layers(narrow, teacher)


# ---- end to end through the engine -------------------------------------------------------------------
def test_text_students_train_through_the_engine(runs_dir):
    from kdengine import Engine
    eng = Engine(max_workers=1)
    try:
        student = {"arch": "transformer", "depth": 1, "width": 32}
        # init_from_teacher off: the student must learn from scratch, not inherit the teacher
        ids = {m: eng.submit(text_cfg(m, {"init_from_teacher": False} if m == "distilbert" else {},
                                      student=student, epochs=4, lr=0.005), owner="t")
               for m in ("distilbert", "tinybert")}
        y = load_data(DataConfig(**SMALL)).test.y
        majority = torch.maximum(y.mean(0), 1 - y.mean(0)).mean().item()   # "always the majority"
        for m, rid in ids.items():
            assert eng.wait(rid, timeout=300) == "done", eng.snapshot(rid).error
            snap = eng.snapshot(rid)
            latest = snap.latest
            for k in ("test_acc", "test_f1", "agreement", "kl_test", "teacher_test_acc"):
                assert k in latest and math.isfinite(latest[k]), k
            acc = [v for _, _, v in snap.series["test_acc"]]
            # per-label accuracy must clearly beat the majority rule, and the teacher too
            assert acc[-1] > majority + 0.05 and acc[-1] > acc[0], (m, majority, acc)
            assert latest["teacher_test_acc"] > majority + 0.1
            terms = {k for k in snap.series if k.startswith("loss/")}
            expected = {"distilbert": {"loss/kd", "loss/ce", "loss/cos"},
                        "tinybert": {"loss/kd", "loss/attn", "loss/hidden", "loss/emb"}}[m]
            assert expected <= terms
    finally:
        eng.shutdown()


@pytest.mark.parametrize("epochs", [3, 5])
def test_tinybert_two_stage_trains_at_odd_epoch_counts(runs_dir, epochs):
    """The stage switch falls inside a logging window at odd epoch counts: the layer terms vanish
    and the prediction term takes over mid window (once crashed the trainer's per-term arrays)."""
    from kdengine.run.trainer import Trainer
    points = []
    cfg = text_cfg("tinybert", {"two_stage": True}, epochs=epochs, log_every=4)
    cfg.teacher.epochs = 2
    Trainer(cfg, points.append).run()
    losses = [e.values for e in points if isinstance(e, Metrics) and "loss/total" in e.values]
    assert all(math.isfinite(v["loss/total"]) for v in losses)
    assert "loss/attn" in losses[0] and "loss/attn" not in losses[-1]    # stage 1, then stage 2
    assert any("loss/attn" in v and v.get("loss/kd", 0) > 0 for v in losses)   # the mixed window


def test_text_preset_is_valid_and_small():
    from kdengine.cli import load_config
    for name in ("text-distilbert", "text-tinybert"):
        cfg = load_config(name)
        assert cfg.data.name == "text" and cfg.student.arch == "transformer"
        assert cfg.train.epochs <= 10 and cfg.teacher.epochs <= 20


# ---- optional Hugging Face models (skipped without transformers) ------------------------------------
def _hf():
    return pytest.importorskip("transformers")


@pytest.mark.parametrize("kind", ["distilbert", "bert"])
def test_hf_models_plug_into_the_methods(kind):
    _hf()
    from kdengine.models.hf import tiny_model
    teacher = tiny_model(kind, width=32, depth=2, heads=4)
    b = batch_of(load_data(DataConfig(**SMALL)))
    f = teacher.forward_features(b.x)
    assert f.logits.shape == (16, 6) and len(f.hidden) == 3 and len(f.attentions) == 2
    student = build_model(ModelConfig(arch="transformer", depth=1, width=16), (text.MAX_LEN,), 6)
    for name in ("distilbert", "tinybert"):
        cls = get_method_class(name)
        m = cls(student, [teacher], cls.Params(), ctx())
        terms = m.loss_terms(b, 0)
        total = sum(terms.values())
        assert torch.isfinite(total) and total.item() > 0
        total.backward()
    # an HF student identical to its HF teacher: zero cosine and attention terms
    twin = copy.deepcopy(teacher).eval()
    for name, keys in (("distilbert", ["cos"]), ("tinybert", ["attn", "hidden"])):
        cls = get_method_class(name)
        terms = cls(twin, [teacher], cls.Params(), ctx()).loss_terms(b, 0)
        for k in keys:
            assert abs(terms[k].item()) < 1e-5, (name, k)


def test_hf_teacher_loads_from_a_local_folder_and_fine_tunes(runs_dir):
    tf = _hf()
    from kdengine.models.hf import HFUnavailable, load_pretrained, tiny_model
    from kdengine.run.trainer import Trainer
    vocab = text.tokenizer_for(DataConfig(**SMALL)).itos
    folder = runs_dir / "models" / "tiny-bert"
    folder.mkdir(parents=True)
    # a WordPiece vocabulary in another order than ours, so the id translation is exercised
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(vocab[3:])
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tf.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    tiny_model("bert", width=32, depth=1, heads=2).model.save_pretrained(str(folder))
    m = load_pretrained("hf:models/tiny-bert", vocab, 6)
    assert m.id_map[text.CLS] == words.index("[CLS]") and m.id_map[text.PAD] == 0
    assert m.id_map[vocab.index("team")] == words.index("team")
    with pytest.raises(HFUnavailable, match="not available offline"):
        load_pretrained("hf:models/no-such-model", vocab, 6)
    cfg = text_cfg("distilbert", epochs=1).with_overrides(
        {"teacher.checkpoint": "hf:models/tiny-bert", "teacher.epochs": 2})
    summary = Trainer(cfg).run()
    assert "BertForSequenceClassification" in summary["teacher_label"]
    assert 0.0 <= summary["final_test_acc"] <= 1.0 and summary["teacher_cached"] is False
    assert Trainer(cfg).run()["teacher_cached"] is True
