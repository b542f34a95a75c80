"""Student alone: cross-entropy on the labels, no teacher. The baseline every method is read against."""
from __future__ import annotations

from kdengine.methods.base import Method, register


@register
class CrossEntropy(Method):
    name = "ce"
    supports_multilabel = True
    title = "Student alone (cross-entropy)"
    paper = "baseline"
    formula = r"CE(y,\, s)"
    needs_teacher = False
    supports_stacking = True

    def loss_terms(self, batch, step):
        return {"ce": self.hard_ce(self.student(batch.x), batch)}
