"""Model families with a size knob. Importing the package registers every family's builder
(the transformer's included), so ``build_model`` knows them all."""
from kdengine.models.families import (BUILDERS, build_model, builder, count_params, ladder,
                                      logits_of, model_label)
from kdengine.models import cifar, transformer  # noqa: F401  (register their builders)

__all__ = ["BUILDERS", "build_model", "builder", "count_params", "ladder", "logits_of",
           "model_label"]
