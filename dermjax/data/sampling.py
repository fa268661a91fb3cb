"""Which training examples each epoch visits, in which order: deterministic in (seed, epoch).

  "none"        every example once, shuffled.
  "oversample"  every example once plus (factor - 1) extra copies of each melanoma, shuffled
                (AttnMel's melanoma oversampling, factor 4).
  "balanced"    len(classes) draws with replacement, each class equally likely
                (torch's WeightedRandomSampler with 1 / class-count weights).
"""

import numpy as np

MODES = ("none", "oversample", "balanced")


def _check(mode, classes, melanoma, factor):
  if mode not in MODES:
    raise ValueError(f"data.sampling must be one of {MODES}, got {mode!r}")
  if mode == "oversample":
    if melanoma is None:
      raise ValueError("sampling='oversample' needs the melanoma flags of the training split")
    if int(factor) != factor or factor < 1:
      raise ValueError(f"data.oversample_factor must be a positive integer, got {factor!r}")
  if mode == "balanced" and np.any(np.asarray(classes) < 0):
    raise ValueError("sampling='balanced' needs a known class for every training example; "
                     f"{int(np.sum(np.asarray(classes) < 0))} have class -1")


def epoch_length(classes, melanoma=None, *, mode="none", factor=4):
  """Examples in one epoch. classes: int [N] balancing class; melanoma: int [N] (1 = melanoma)."""
  classes = np.asarray(classes)
  _check(mode, classes, melanoma, factor)
  if mode == "oversample":
    return len(classes) + (int(factor) - 1) * int(np.sum(np.asarray(melanoma) == 1))
  return len(classes)


def epoch_indices(classes, melanoma=None, *, mode="none", epoch=0, seed=0, factor=4):
  """Positions into the training split for one epoch: int64 [epoch_length(...)]."""
  classes = np.asarray(classes)
  _check(mode, classes, melanoma, factor)
  rng = np.random.default_rng([int(seed), int(epoch)])
  n = len(classes)
  if mode == "balanced":
    values, inverse, counts = np.unique(classes, return_inverse=True, return_counts=True)
    p = 1.0 / (len(values) * counts[inverse])
    return rng.choice(n, size=n, replace=True, p=p / p.sum()).astype(np.int64)
  indices = np.arange(n, dtype=np.int64)
  if mode == "oversample":
    positives = np.flatnonzero(np.asarray(melanoma) == 1)
    indices = np.concatenate([indices, np.tile(positives, int(factor) - 1)])
  return rng.permutation(indices)


class EpochSchedule:
  """Global position (over all epochs, endless) -> training-split position.

  Picklable (grain worker processes get a copy); keeps the last epoch's indices cached.
  """

  def __init__(self, classes, melanoma=None, *, mode="none", seed=0, factor=4):
    self.classes = np.asarray(classes)
    self.melanoma = None if melanoma is None else np.asarray(melanoma)
    self.mode, self.seed, self.factor = mode, int(seed), factor
    self.length = epoch_length(self.classes, self.melanoma, mode=mode, factor=factor)
    if self.length == 0:
      raise ValueError("the training split is empty")
    self._cache = (None, None)

  def indices(self, epoch):
    if self._cache[0] != epoch:
      self._cache = (epoch, epoch_indices(self.classes, self.melanoma, mode=self.mode,
                                          epoch=epoch, seed=self.seed, factor=self.factor))
    return self._cache[1]

  def __call__(self, position):
    epoch, offset = divmod(int(position), self.length)
    return int(self.indices(epoch)[offset])
