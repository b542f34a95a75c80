"""Which queued run starts next: round-robin by owner, so one session's sweep never starves others.

The queue keeps one FIFO per owner. ``pop`` serves the owner with the fewest runs already active
(a newcomer goes first), ties broken by whose turn it is in the rotation. ``order`` is the order
runs would start in if nothing else arrived: it gives each queued run its position and an ETA.
"""
from __future__ import annotations

import math
import statistics
from collections import OrderedDict


class FairQueue:
    """Not thread-safe: the engine calls it under its own lock."""

    def __init__(self):
        self._by_owner: "OrderedDict[str, list[str]]" = OrderedDict()   # rotation order
        self._owner_of: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._owner_of)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._owner_of

    def push(self, run_id: str, owner: str) -> None:
        self._by_owner.setdefault(owner, []).append(run_id)
        self._owner_of[run_id] = owner

    def remove(self, run_id: str) -> bool:
        """Take a run out of the queue; False when it was not queued."""
        owner = self._owner_of.pop(run_id, None)
        if owner is None:
            return False
        q = self._by_owner[owner]
        q.remove(run_id)
        if not q:
            del self._by_owner[owner]
        return True

    def pop(self, active: dict[str, int], only_idle_owners: bool = False) -> str | None:
        """The next run to start; ``active`` counts runs already running per owner. With
        ``only_idle_owners``, only an owner with nothing active may start (a newcomer's run)."""
        best = None
        for owner in self._by_owner:
            n = active.get(owner, 0)
            if only_idle_owners and n:
                continue
            if best is None or n < active.get(best, 0):
                best = owner
        if best is None:
            return None
        run_id = self._by_owner[best][0]
        self.remove(run_id)
        if best in self._by_owner:         # the served owner goes to the back of the rotation
            self._by_owner.move_to_end(best)
        return run_id

    def order(self, active: dict[str, int]) -> list[str]:
        """Queued run ids in the order ``pop`` would start them."""
        copy = FairQueue()
        for owner, q in self._by_owner.items():
            for r in q:
                copy.push(r, owner)
        counts = dict(active)
        out = []
        while len(copy):
            r = copy.pop(counts)
            out.append(r)
            owner = self._owner_of[r]
            counts[owner] = counts.get(owner, 0) + 1
        return out


def start_eta(position: int, remaining_s: list[float], slots: int,
              durations_s: list[float]) -> float | None:
    """Seconds until the queued run at ``position`` (0 = next) starts: the slots free up as the
    running runs finish (``remaining_s``), then every further round takes a typical run's time.
    None when nothing has been timed yet."""
    typical = statistics.median(durations_s) if durations_s else None
    known = sorted(r for r in remaining_s if r is not None and math.isfinite(r))
    if len(known) < len(remaining_s):          # running runs without an ETA yet
        if typical is None:
            return None
        known = sorted(known + [typical] * (len(remaining_s) - len(known)))
    slots = max(1, slots)
    if position < len(known):
        return known[position]
    if typical is None:
        return known[-1] if known else None
    rounds = (position - len(known)) // slots + 1
    return (known[-1] if known else 0.0) + rounds * typical
