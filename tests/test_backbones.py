"""Backbone shapes at full size (abstractly), parameter counts, frozen BN, adaptive pooling."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import pytest

from dermjax.models.backbones import BACKBONES, build_backbone
from dermjax.models.backbones.densenet import DenseNet
from dermjax.models.backbones.layers import adaptive_pool, argmax_max, grouped_conv_general_dilated
from dermjax.models.backbones.resnet import ResNet
from dermjax.models.backbones.vgg import VGGStages, adaptive_avg_pool

# torchvision's parameter counts (sum of p.numel() over model.parameters()).
TORCHVISION_PARAMS = {
    "alexnet": 61_100_840, "vgg16": 138_357_544, "vgg16_bn": 138_365_992, "resnet18": 11_689_512, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnext50_32x4d": 25_028_904, "densenet121": 7_978_856,
}

# Taps the seeds use, at 224 px (NHWC, batch 1).
TAPS_224 = {
    "alexnet": {"conv1": (55, 55, 64), "pool1": (27, 27, 64), "pool2": (13, 13, 192), "conv4": (13, 13, 256),
                "pool5": (6, 6, 256)},
    "vgg16": {"pool3": (28, 28, 256), "pool4": (14, 14, 512), "pool5": (7, 7, 512), "block5": (14, 14, 512)},
    "vgg16_bn": {"pool3": (28, 28, 256), "pool4": (14, 14, 512), "pool5": (7, 7, 512)},
    "resnet18": {"stem": (56, 56, 64), "layer1": (56, 56, 64), "layer2_1": (28, 28, 128),
                 "layer3": (14, 14, 256), "layer4": (7, 7, 512)},
    "resnet50": {"layer1_2": (56, 56, 256), "layer2": (28, 28, 512), "layer3_5": (14, 14, 1024),
                 "layer4": (7, 7, 2048)},
    "resnet101": {"layer3_22": (14, 14, 1024), "layer3": (14, 14, 1024), "layer4": (7, 7, 2048)},
    "resnext50_32x4d": {"layer1": (56, 56, 256), "layer4": (7, 7, 2048)},
    "densenet121": {"stem": (56, 56, 64), "denseblock1": (56, 56, 256), "transition1": (28, 28, 128),
                    "denseblock3": (14, 14, 1024), "transition3": (7, 7, 512), "features": (7, 7, 1024)},
}


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_full_size_taps_and_parameter_count(arch):
  module = build_backbone(arch, num_classes=1000)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
  taps = jax.eval_shape(lambda v, x: module.apply(v, x), variables, x)
  for name, shape in TAPS_224[arch].items():
    assert taps[name].shape == (1,) + shape, name
  spec = BACKBONES[arch]
  side = 6 if arch == "alexnet" else 7
  assert taps[spec.features].shape == (1, side, side, spec.channels)
  assert taps["logits"].shape == (1, 1000)
  count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"]))
  assert count == TORCHVISION_PARAMS[arch]
  assert ("batch_stats" in variables) == (arch not in ("vgg16", "alexnet"))
  headless = jax.eval_shape(lambda x: build_backbone(arch).apply(
      build_backbone(arch).init(jax.random.key(0), x), x), x)
  assert "logits" not in headless and headless[spec.features].shape == (1, side, side, spec.channels)


# One small member of each family (the frozen_bn plumbing is what is tested, not the depth).
SMALL = {
    "vgg": (lambda frozen: VGGStages(blocks=(1,), frozen_bn=frozen), "pool1"),
    "resnet": (lambda frozen: ResNet(stage_sizes=(1, 1), block="bottleneck", frozen_bn=frozen), "layer2"),
    "densenet": (lambda frozen: DenseNet(growth_rate=4, block_config=(1, 1), num_init_features=8,
                                         frozen_bn=frozen), "features"),
}


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("family", sorted(SMALL))
def test_frozen_batch_norm_keeps_running_stats(family, frozen):
  make, tap = SMALL[family]
  module = make(frozen)

  @jax.jit
  def run(x):  # One compilation: init, a training step's forward, an eval forward.
    variables = module.init(jax.random.key(0), x)
    stats = jax.tree.map(lambda s: s + 0.5, variables["batch_stats"])  # Not the batch's statistics.
    variables = {"params": variables["params"], "batch_stats": stats}
    out, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    return stats, updates["batch_stats"], out[tap], module.apply(variables, x)[tap]

  stats, updated, out, evaluated = run(jax.random.normal(jax.random.key(1), (2, 32, 32, 3)))
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), updated, stats))
  assert not any(changed) if frozen else all(changed)
  # Frozen BN normalises with the running stats in training too, exactly as in eval.
  assert np.allclose(out, evaluated, rtol=1e-5, atol=1e-5) == frozen


def test_vgg_head_needs_block5():
  with pytest.raises(ValueError, match="follows pool5"):
    VGGStages(blocks=(1, 2, 3), num_classes=2).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("size", [1, 2, 5, 7, 9, 14])
def test_adaptive_avg_pool_matches_torch(size):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(size).normal(size=(2, size, size + 3, 4)).astype(np.float32)
  want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), 7).numpy()
  np.testing.assert_allclose(np.asarray(adaptive_avg_pool(jnp.asarray(x), 7)).transpose(0, 3, 1, 2), want,
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [1, 3, 6, 9])
def test_adaptive_max_pool_matches_torch(size):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(size).normal(size=(2, size, size + 2, 4)).astype(np.float32)
  want = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), 4).numpy()
  got = np.asarray(adaptive_pool(jnp.asarray(x), 4, argmax_max)).transpose(0, 3, 1, 2)
  np.testing.assert_array_equal(got, want)


def test_adaptive_max_pool_gradient_matches_torch_and_goes_to_one_maximum():
  """The gradient goes to one maximum per window (torch's backward), never split among ties
  (jnp.max's rule, which gives 0 / 0 = NaN when the compiled step recomputes the maximum
  with other rounding)."""
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).normal(size=(2, 6, 8, 3)).astype(np.float32)
  weights = np.random.default_rng(1).normal(size=(2, 4, 4, 3)).astype(np.float32)
  t = torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_()
  (torch.nn.functional.adaptive_max_pool2d(t, 4) * torch.from_numpy(weights.transpose(0, 3, 1, 2))).sum().backward()
  grad = jax.jit(jax.grad(lambda x: jnp.sum(adaptive_pool(x, 4, argmax_max) * weights)))
  np.testing.assert_allclose(np.asarray(grad(jnp.asarray(x))).transpose(0, 3, 1, 2), t.grad.numpy(),
                             atol=1e-6)
  tied = np.asarray(grad(jnp.ones_like(x)))              # every element is a window's maximum
  assert np.all(np.count_nonzero(tied, axis=(1, 2)) <= 16)
  np.testing.assert_allclose(tied.sum(axis=(1, 2)), weights.sum(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize("shape,kernel,strides,groups,padding", [
    ((2, 9, 11, 64), (3, 3, 2, 64), (2, 2), 32, ((1, 1), (1, 1))),
    ((2, 8, 8, 8), (3, 3, 4, 6), (1, 1), 2, "SAME"),
    ((2, 10, 10, 8), (5, 3, 4, 4), (2, 1), 2, ((2, 1), (0, 2)))])
def test_grouped_conv_as_patches_equals_lax(shape, kernel, strides, groups, padding):
  """ResNeXt's grouped 3x3 convolutions on CPU: patches + a group-batched matmul, the same
  values and gradients as lax.conv_general_dilated."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=kernel), jnp.float32)
  conv = lambda fn: jax.jit(lambda x, w: fn(x, w, strides, padding, feature_group_count=groups,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")))
  want, got = conv(jax.lax.conv_general_dilated), conv(grouped_conv_general_dilated)
  np.testing.assert_allclose(got(x, w), want(x, w), rtol=1e-5, atol=1e-5)
  grads = [jax.grad(lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w))), (0, 1))(x, w) for f in (want, got)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_cpu_sized_backbones_keep_taps_at_a_base_width():
  """build_backbone(blocks_per_stage, width): the CPU rows' knobs; the same taps at the same
  resolution, ResNet channels scaled by width / 64, a DenseNet's stem at `width`."""
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  shapes = lambda arch, **kw: jax.eval_shape(
      lambda x: build_backbone(arch, **kw).init_with_output(jax.random.key(0), x)[0], x)
  for arch, tap in (("resnet101", "layer4"), ("resnext50_32x4d", "layer4"), ("resnet18", "layer4")):
    full, cut = shapes(arch), shapes(arch, blocks_per_stage=1, width=32)
    assert cut[tap].shape == full[tap].shape[:3] + (full[tap].shape[3] // 2,), arch
    assert "layer3_1" in full and "layer3_1" not in cut
  dense = shapes("densenet121", blocks_per_stage=1, width=32)
  assert dense["stem"].shape == (1, 16, 16, 32) and dense["features"].shape[:3] == (1, 2, 2)
  assert shapes("vgg16", blocks_per_stage=1, width=32)["pool5"].shape == (1, 2, 2, 512)
