"""The trainer's log window when terms appear or vanish mid window (a two-stage schedule)."""
from __future__ import annotations

import pytest
import torch

from kdengine.core.events import Metrics
from kdengine.run.trainer import NonFiniteLoss, read_window


def test_a_term_present_on_part_of_the_window_is_averaged_over_its_steps():
    t = torch.tensor
    window = {"kd": [t(1.0), t(3.0), t(5.0), t(7.0)],     # every step
              "attn": [t(2.0), t(4.0)]}                     # the first two steps only
    (values,) = read_window(window, 0, spe=10)
    assert values["loss/kd"] == 4.0 and values["loss/attn"] == 3.0
    # per-step totals 3, 7, 5, 7: their mean
    assert values["loss/total"] == pytest.approx(5.5)


def test_a_non_finite_partial_term_names_the_window():
    window = {"kd": [torch.tensor(1.0)] * 4, "attn": [torch.tensor(float("nan"))]}
    with pytest.raises(NonFiniteLoss, match="'attn' became nan between steps 11 and 14"):
        read_window(window, 10, spe=10)


def test_the_window_logs_each_term_times_its_weight():
    # the trainer keeps terms unweighted and weighs them here: a number, or one weight per student
    window = {"kd": [torch.tensor(2.0), torch.tensor(4.0)], "ce": [torch.tensor(1.0)] * 2}
    (values,) = read_window(window, 0, spe=10, weights={"kd": 0.5})
    assert values == {"loss/kd": 1.5, "loss/ce": 1.0, "loss/total": 2.5}
    stacked = {"kd": [torch.tensor([2.0, 2.0])] * 2}
    got = read_window(stacked, 0, spe=10, weights={"kd": torch.tensor([1.0, 0.25])})
    assert [v["loss/kd"] for v in got] == [2.0, 0.5]


@pytest.mark.parametrize("log_every, windows", [(8, [8, 8, 5]), (20, [21]), (1, [1] * 21)])
def test_an_epochs_short_tail_joins_the_window_before_it(runs_dir, log_every, windows):
    # digits at batch 64: 21 steps an epoch. A window that would leave a tail of fewer than half
    # log_every steps runs on to the epoch's end, so no point is one batch's loss alone.
    from kdengine import RunConfig
    from kdengine.run.trainer import Trainer
    cfg = RunConfig.from_dict({
        "data": {"name": "digits"}, "teacher": {"source": "none"}, "method": {"name": "ce"},
        "student": {"arch": "mlp", "depth": 1, "width": 16},
        "train": {"epochs": 2, "batch_size": 64, "seed": 0, "log_every": log_every,
                  "checkpoint_every": 0}})
    steps = []
    Trainer(cfg, emit=lambda e: steps.append(e.step) if isinstance(e, Metrics)
            and "loss/total" in e.values else None).run()
    sizes = [b - a for a, b in zip([0, *steps], steps)]
    assert sizes == windows * 2 and steps[-1] == 42


def test_scalar_terms_with_one_weight_per_stacked_student_read_one_value_each():
    # the old term-by-term pass broadcast a [steps, 1] term against [S] weights; the one-pass read too
    window = {"kd": [torch.tensor(2.0)] * 2, "ce": [torch.tensor([1.0, 3.0, 5.0])] * 2}
    got = read_window(window, 0, spe=10, weights={"kd": torch.tensor([1.0, 0.5, 0.25])})
    assert [v["loss/kd"] for v in got] == [2.0, 1.0, 0.5]
    assert [v["loss/total"] for v in got] == [3.0, 4.0, 5.5]
    alone = read_window({"kd": [torch.tensor(2.0)] * 2}, 0, spe=10,
                        weights={"kd": torch.tensor([1.0, 0.5])})
    assert [v["loss/kd"] for v in alone] == [2.0, 1.0]
