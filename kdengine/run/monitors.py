"""The per-epoch monitors every engine run gets: boundary grids and MagSim/AngSim, and the
omitted class's accuracy. The trainer knows only the :class:`~kdengine.run.trainer.Monitor`
interface; this module wires the analysis features to it."""
from __future__ import annotations

from kdengine.analysis.boundaries import BoundaryMonitor
from kdengine.analysis.dark_knowledge import omitted_metrics
from kdengine.run.trainer import Monitor, MonitorFactory, MonitorSetup


def boundary_monitor(s: MonitorSetup) -> Monitor:
    """Boundary grids (2-D) and MagSim/AngSim for every method, so runs can be compared. The
    similarity attack costs about ten digits epochs, so ``auto`` measures it on 2-D data and for
    BSS only."""
    tc = s.cfg.train
    mon = BoundaryMonitor(s.teacher, s.data, s.device, tc.seed)
    mon.measure = tc.boundary_metrics == "on" or (
        tc.boundary_metrics == "auto" and (s.data.kind == "2d" or s.method == "bss"))
    return mon


class OmittedClassMonitor(Monitor):
    """Hinton's omitted-class lesson: the student's accuracy on the class left out of its data."""

    def __init__(self, s: MonitorSetup):
        self.data, self.device, self.cls = s.data, s.device, s.cfg.data.omit_class

    def metrics(self, student, already):
        return omitted_metrics(student, self.data, self.device, self.cls)


def omitted_class_monitor(s: MonitorSetup) -> Monitor | None:
    return OmittedClassMonitor(s) if s.cfg.data.omit_class is not None else None


def standard_monitors() -> list[MonitorFactory]:
    return [boundary_monitor, omitted_class_monitor]
