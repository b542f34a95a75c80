"""Boundaries page and BSS costs: ``python bench/boundary.py``.

1. Redraw of the 100 x 100 teacher + student heatmap: grid evaluation of both models (one batched
   forward each), the RGB/PNG images, the plotly figure with training points and 64 BSS paths, and
   its JSON (what ``st.plotly_chart`` sends). Goal: <= 150 ms.
2. The BSS attack per batch: 64 samples x 10 steps on the teacher, against one plain KD step, on
   moons (MLP 3x64 teacher) and digits (MLP 2x128 teacher).
Prints medians of several repeats; one CPU thread.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import plotly.io
import plotly.tools
import torch

ROOT = Path(__file__).resolve().parent.parent

from kdengine.analysis import boundaries as adv
from kdengine import build_model, get_teacher, kd_loss, load_config, load_data
from ui import boundary_figs as bf

CPU = torch.device("cpu")


def median_ms(fn, repeat: int = 15, warm: int = 2) -> float:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def setup(preset: str):
    cfg = load_config(preset, [])
    data = load_data(cfg.data)
    teacher, _ = get_teacher(cfg, data, CPU)
    torch.manual_seed(0)
    student = build_model(cfg.student, data.input_shape, data.n_classes)
    return cfg, data, teacher, student


def redraw(n: int = 100) -> None:
    _, data, teacher, student = setup("moons-bss")
    bounds = adv.grid_bounds(data.transfer.x)
    x = data.transfer.x[:64]
    with torch.no_grad():
        t = teacher(x)
    base = t.argmax(1)
    res = adv.boundary_attack(teacher, x, base, adv.runner_up(t, base))
    bss = {"traj": res.traj.transpose(0, 1).tolist(), "base": base.tolist(),
           "target": res.target.tolist(), "flipped": res.flipped.tolist(),
           "class_names": data.class_names}
    pts, labels = data.transfer.x[:500].numpy(), data.transfer.y[:500].numpy()
    grids = {}

    def evaluate():
        grids["t"], grids["s"] = adv.grid_eval([teacher, student], bounds, n)

    def as_streamlit(fig: dict) -> str:
        """What st.plotly_chart does with the page's figure: to_dict, then JSON."""
        return plotly.io.to_json(plotly.tools.return_figure_from_figure_or_data(
            bf.PrebuiltFigure(fig), validate_figure=True), validate=False)

    def figure_json(disagree=False):
        as_streamlit(bf.boundary_figure(grids["t"], grids["s"], bounds, pts, labels,
                                        data.class_names, bss, show_disagreement=disagree))

    stored = {}

    def stored_snapshot():   # the page's path: dequantise stored 60x60 grids and draw them
        as_streamlit(bf.boundary_figure(adv.dequantise(stored["t"]), adv.dequantise(stored["s"]),
                                        bounds, pts, labels, data.class_names, bss))

    evaluate()
    stored["t"], stored["s"] = (adv.quantise(g) for g in adv.grid_eval([teacher, student],
                                                                          bounds, 60))
    ev, fj = median_ms(evaluate), median_ms(figure_json)
    dis = median_ms(lambda: figure_json(True))
    validated = median_ms(lambda: plotly.io.to_json(plotly.tools.return_figure_from_figure_or_data(
        bf.boundary_figure(grids["t"], grids["s"], bounds, pts, labels, data.class_names, bss),
        validate_figure=True), validate=False), repeat=5)
    print(f"redraw {n}x{n} teacher+student heatmap (moons, 500 points, 64 BSS paths):")
    print(f"  grid eval, both models, one forward each : {ev:7.1f} ms")
    print(f"  figure + JSON                            : {fj:7.1f} ms")
    print(f"  total                                    : {ev + fj:7.1f} ms   (goal <= 150 ms)")
    print(f"  with the disagreement panel, figure+JSON : {dis:7.1f} ms")
    print(f"  page path: stored 60x60 grids -> JSON    : {median_ms(stored_snapshot):7.1f} ms")
    print(f"  same figure re-validated by plotly       : {validated:7.1f} ms   (what we avoid)")


def attack_cost(preset: str) -> None:
    cfg, data, teacher, student = setup(preset)
    x = data.transfer.x[:64]
    with torch.no_grad():
        t = teacher(x)
    base = t.argmax(1)
    target = adv.runner_up(t, base)
    opt = torch.optim.Adam(student.parameters(), 1e-3)

    def kd_step():
        loss = kd_loss(student(x), t, 3.0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    a = median_ms(lambda: adv.boundary_attack(teacher, x, base, target, steps=10))
    k = median_ms(kd_step)
    print(f"BSS attack, {preset}: 64 samples x 10 steps on the teacher {a:6.1f} ms per batch; "
          f"one plain KD step {k:5.2f} ms ({a / k:.0f}x)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread")
    redraw(100)
    attack_cost("moons-bss")
    attack_cost("digits-quick")
