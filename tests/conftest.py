"""Shared fixtures: tiny synthetic ISIC datasets in the official layouts, and a prepared one.

  synthetic_isic(layout, num_images=None, seed=0, min_side=48, max_side=64) -> raw dir
      (session-cached per arguments; treat the directory as read-only, copy it to modify)
  isic2017_raw        tiny synthetic ISIC 2017 (24 train / 8 validation / 12 test images)
  isic2017_prepared   (prepared_dir, "isic2017"): isic2017_raw through prepare.prepare;
                      read it with dermjax.data.prepare.load(prepared_dir, "isic2017")
  narrow_networks     every backbone / VGG / gaze decoder / AlexNet cut for speed (tests that
                      check plumbing and learning, not paper widths or depths)
"""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests check values, not speed, and most of their time is XLA compiling small programs:
#  - LLVM's cheapest level compiles them ~20% faster (convolutions and dots run in library
#    kernels either way);
#  - XLA:CPU's older loop-fusion emitters instead of its MLIR fusion emitters halve the
#    compile of a train step (gaze CPU row: 12 -> 6 s) and took the whole suite from 1408 s
#    to 1022 s on 2 cores (2026-12-03). Results agree to f32 rounding (sums reassociate).
# Either flag set in XLA_FLAGS yourself wins.
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

# One persistent compilation cache per test run, shared by the xdist workers and the
# subprocesses tests start (they inherit the environment): the trainer runs that the
# reliability, fault and resume tests repeat in fresh processes compile each program once.
# Every program is cached (minimum compile time 0). Removed when the run ends.
_CACHE_OWNER = "DERMJAX_TEST_JAX_CACHE_OWNER"
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dermjax-test-jax-cache-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ[_CACHE_OWNER] = str(os.getpid())

import pytest  # pylint: disable=g-import-not-at-top

TINY_ISIC = {"train": 24, "validation": 8, "test": 12}


def pytest_unconfigure(config):  # pylint: disable=unused-argument
  """The process that made the compilation cache (the xdist controller) removes it."""
  if os.environ.get(_CACHE_OWNER) == str(os.getpid()):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


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


@pytest.fixture
def narrow_networks(monkeypatch):
  """Every ResNet / DenseNet one block per stage at base width 16 (a row's own CPU width
  wins), VGG-16 one conv per block (the same five blocks, pools and taps) and the gaze
  decoder at 1/8 of their widths, AlexNet's convs at 1/4."""
  from dermjax.models import backbones  # pylint: disable=g-import-not-at-top
  from dermjax.models.backbones import alexnet, vgg  # pylint: disable=g-import-not-at-top
  from dermjax.models.gaze import model as gaze_model  # pylint: disable=g-import-not-at-top
  for arch, backbone in list(backbones.BACKBONES.items()):
    monkeypatch.setitem(backbones.BACKBONES, arch,
                        backbones.narrow(backbones.shallow(backbone), 16))
  monkeypatch.setattr(vgg, "VGG16_BLOCKS", tuple((c // 8, 1) for c, _ in vgg.VGG16_BLOCKS))
  monkeypatch.setattr(gaze_model, "DECODER_BLOCKS", tuple(
      tuple(max(c // 8, 1) for c in block) for block in gaze_model.DECODER_BLOCKS))
  monkeypatch.setattr(alexnet, "ALEXNET_CONVS", tuple(
      (c // 4, *rest) for c, *rest in alexnet.ALEXNET_CONVS))
