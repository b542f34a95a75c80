"""One progress bar for the CLI and the benches: tqdm, with an ETA, quiet when not on a terminal.

Output that goes to a file or a pipe (CI logs, ``> out.txt``, the tests) gets no bar at all: a bar
redrawn with carriage returns is noise there. ``KD_PROGRESS=1`` forces bars on, ``0`` forces them
off. Lines printed while a bar is open go through :func:`say`, so they do not break the bar.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")

# elapsed<remaining is tqdm's ETA; the rate is left out (units differ between callers)
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"
FRACTION_FORMAT = "{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"


def enabled(stream: TextIO | None = None) -> bool:
    """Whether bars are drawn: forced by KD_PROGRESS, else only when the stream is a terminal."""
    forced = os.environ.get("KD_PROGRESS", "")
    if forced in ("0", "1"):
        return forced == "1"
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):      # closed or replaced streams (pytest's capture)
        return False


def bar(total: float | None, desc: str = "", unit: str = "it", stream: TextIO | None = None,
        counts: bool = True):
    """A tqdm bar with an ETA on ``stream`` (stdout), disabled off a terminal.

    Advance it with ``update(k)`` (or :func:`set_fraction`); close it, or use it in ``with``.
    ``counts=False`` hides the "n/total" part, for bars that only track a fraction."""
    try:
        from tqdm import tqdm
    except ImportError:     # a bare machine (a lent GPU has torch, not tqdm): the work runs unbarred
        return _NoBar(total)
    stream = stream or sys.stdout
    fmt = (BAR_FORMAT if counts else FRACTION_FORMAT) if total else None
    return tqdm(total=total, desc=desc, unit=unit, file=stream, disable=not enabled(stream),
                bar_format=fmt, dynamic_ncols=True, leave=True)


def track(items: Iterable[T], desc: str = "", total: int | None = None,
          unit: str = "it") -> Iterator[T]:
    """Iterate with a bar, e.g. ``for seed in track(range(9), "repeats")``."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc, unit) as b:
        for item in items:
            yield item
            b.update(1)


def set_fraction(b, frac: float) -> None:
    """Move a bar whose total is a step count to ``frac`` of it (for callers that only know a
    fraction, such as an engine snapshot); never backwards, so the ETA stays meaningful."""
    n = int(round(max(0.0, min(1.0, frac)) * (b.total or 0)))
    if n > b.n:
        b.update(n - b.n)


def say(text: str, stream: TextIO | None = None) -> None:
    """Print one line without breaking an open bar."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(text, file=stream or sys.stdout)
        return
    tqdm.write(text, file=stream or sys.stdout)


class _NoBar:
    """What :func:`bar` returns without tqdm: counts, draws nothing."""

    def __init__(self, total: float | None):
        self.total, self.n = total, 0

    def update(self, k: float = 1) -> None:
        self.n += k

    def set_description(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc) -> None:
        pass
