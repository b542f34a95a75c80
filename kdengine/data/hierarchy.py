"""A generated many-class task with a class hierarchy, where dark knowledge is rich.

CIFAR-100 has 100 classes in 20 superclasses: a maple is confused with an oak far more often than
with a bus, and that structure is what a teacher's soft targets pass on (Hinton's "dark
knowledge", DKD's non-target part, the specialists' clusters). Ten-class digits hide it. Here the
same structure is drawn in a feature space: superclass centres far apart, class centres clustered
around their superclass centre, samples scattered around their class centre. Each sample is an 8x8
single-channel image (the features are smoothed over neighbouring pixels), so MLPs and CNNs both
train on it, on a CPU, in seconds.

Class names read ``s03/c2``: superclass 3, its class 2. ``superclass_of(k, n_super)`` gives the map.
"""
from __future__ import annotations

import numpy as np

SIDE = 8                 # images are SIDE x SIDE, one channel
SUPER_SPREAD = 1.0       # std of the superclass centres (per pixel)
CLASS_SPREAD = 0.45      # std of a class centre around its superclass centre


def superclass_of(n_classes: int, n_super: int) -> np.ndarray:
    """Superclass id of each class: classes are dealt out in order, as evenly as possible."""
    return np.arange(n_classes) * n_super // n_classes


def class_names(n_classes: int, n_super: int) -> list[str]:
    sup = superclass_of(n_classes, n_super)
    names, seen = [], {}
    for s in sup:
        i = seen.get(int(s), 0)
        seen[int(s)] = i + 1
        names.append(f"s{int(s):02d}/c{i}")
    return names


def _smooth(v: np.ndarray) -> np.ndarray:
    """3x3 box blur over the last two axes (edges wrap): neighbouring pixels correlate, so a CNN's
    local filters have something to find."""
    out = np.zeros_like(v)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out += np.roll(np.roll(v, dy, -2), dx, -1)
    return out / 3.0      # keeps the per-pixel std of white noise at 1


def generate(n_samples: int, n_classes: int, n_super: int, noise: float,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(x float32 (n, 1, 8, 8), y int64 (n,), class names); classes balanced, order shuffled."""
    sup = superclass_of(n_classes, n_super)
    shape = (1, SIDE, SIDE)
    super_mu = SUPER_SPREAD * _smooth(rng.standard_normal((n_super, *shape)))
    class_mu = super_mu[sup] + CLASS_SPREAD * _smooth(rng.standard_normal((n_classes, *shape)))
    y = np.arange(n_samples) % n_classes
    rng.shuffle(y)
    x = class_mu[y] + noise * _smooth(rng.standard_normal((n_samples, *shape)))
    return x.astype(np.float32), y.astype(np.int64), class_names(n_classes, n_super)
