"""Shared fixtures: tiny synthetic ISIC datasets in the official layouts, and a prepared one.

  synthetic_isic(layout, num_images=None, seed=0, min_side=48, max_side=64) -> raw dir
      (session-cached per arguments; treat the directory as read-only, copy it to modify)
  isic2017_raw        tiny synthetic ISIC 2017 (24 train / 8 validation / 12 test images)
  isic2017_prepared   (prepared_dir, "isic2017"): isic2017_raw through prepare.prepare;
                      read it with dermjax.data.prepare.load(prepared_dir, "isic2017")
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests check values, not speed: LLVM's cheapest level compiles the suite's many small programs
# ~20% faster (convolutions and dots run in library kernels either way). Set it in XLA_FLAGS
# yourself to override.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import pytest  # pylint: disable=g-import-not-at-top

TINY_ISIC = {"train": 24, "validation": 8, "test": 12}


@pytest.fixture(scope="session")
def synthetic_isic(tmp_path_factory):
  """Factory: (layout, num_images=None, seed=0, min_side=48, max_side=64) -> raw dir."""
  from dermjax.data import synthetic  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("synthetic_isic")
  cache = {}

  def make(layout, num_images=None, seed=0, min_side=48, max_side=64):
    num_images = dict(num_images or TINY_ISIC)
    key = (layout, tuple(sorted(num_images.items())), seed, min_side, max_side)
    if key not in cache:
      out = str(root / f"{layout}-{len(cache)}")
      cache[key] = synthetic.write_synthetic(layout, out, num_images=num_images, seed=seed,
                                             min_side=min_side, max_side=max_side)
    return cache[key]

  return make


@pytest.fixture(scope="session")
def prepared_synthetic(synthetic_isic, tmp_path_factory):
  """Factory: (layout, num_images, seed=0) -> (raw dir, prepared dir) of a synthetic set of
  40-56 px images, prepared with 2 folds, once per session."""
  from dermjax.data import prepare  # pylint: disable=g-import-not-at-top
  cache = {}

  def make(layout, num_images, seed=0):
    key = (layout, tuple(sorted(num_images.items())), seed)
    if key not in cache:
      raw = synthetic_isic(layout, num_images, seed=seed, min_side=40, max_side=56)
      out = str(tmp_path_factory.mktemp(f"prepared_{layout}"))
      prepare.prepare(layout, raw, out, num_folds=2)
      cache[key] = (raw, out)
    return cache[key]

  return make


@pytest.fixture(scope="session")
def isic2017_raw(synthetic_isic):
  return synthetic_isic("isic2017", TINY_ISIC)


@pytest.fixture(scope="session")
def isic2017_prepared(isic2017_raw, tmp_path_factory):
  from dermjax.data import prepare  # pylint: disable=g-import-not-at-top
  prepared_dir = str(tmp_path_factory.mktemp("prepared"))
  prepare.prepare("isic2017", isic2017_raw, prepared_dir, num_folds=3)
  return prepared_dir, "isic2017"
