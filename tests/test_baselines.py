"""VGG-16 / VGG-16-GAP baselines of AttnMel: shapes, class activation maps, weight targets."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import batches
from dermjax import config_lib, losses, weights
from dermjax.models import baselines
from dermjax.models.backbones import build_backbone
from flax_helpers import random_variables  # tests/ is on sys.path under pytest.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(arg):
  return config_lib.load_config(os.path.join(ROOT, "configs", "attnmel.py"), arg)


def abstract_variables(module, size=224):
  batch = {"image": jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)}
  init = lambda b: module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, b)
  variables = jax.eval_shape(init, batch)
  return variables, jax.eval_shape(lambda v, b: module.apply(v, b), variables, batch)


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("head", ["fc", "gap"])
def test_full_size_shapes_and_parameter_names(head, batch_norm):
  config = load_config("vgg16_gap,paper" if head == "gap" else "vgg16,paper")
  config.model.batch_norm = batch_norm
  variables, outputs = abstract_variables(baselines.build(config))
  assert outputs["logits"].shape == (2, 2) and outputs["logits"].dtype == jnp.float32
  params = variables["params"]
  assert ("bn1" in params["backbone"]["block1"]) == batch_norm
  assert ("batch_stats" in variables) == batch_norm
  if head == "fc":
    assert set(outputs) == {"logits"}
    head_params = params["backbone"]["head"]
    assert head_params["fc6"]["kernel"].shape == (7 * 7 * 512, 4096)
    assert head_params["fc7"]["kernel"].shape == (4096, 4096)
    assert head_params["fc8"]["kernel"].shape == (4096, 2)
  else:
    assert outputs["cam"].shape == (2, 7, 7)
    assert params["classifier"]["kernel"].shape == (512, 2)


def test_fc_head_pools_any_size_to_seven():
  config = load_config("vgg16")   # 64 px: pool5 is 2 x 2, adaptive-pooled to 7 x 7
  _, outputs = abstract_variables(baselines.build(config), size=64)
  assert outputs["logits"].shape == (2, 2)


@pytest.mark.parametrize("num_classes", [2, 1])
def test_cam_averages_to_the_melanoma_logit(num_classes):
  # logits = W^T GAP(pool5) + b is linear, so GAP(CAM_k) + b_k = logit_k exactly.
  config = load_config("vgg16_gap")
  config.model.num_classes = num_classes
  module = baselines.build(config)
  x = {"image": jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)}
  variables = random_variables(abstract_variables(module, size=64)[0])
  out = jax.jit(module.apply)(variables, x)
  k = min(1, num_classes - 1)
  bias = variables["params"]["classifier"]["bias"][k]
  np.testing.assert_allclose(out["cam"].mean(axis=(1, 2)) + bias, out["logits"][:, k],
                             rtol=1e-5, atol=1e-6)


def test_pretrained_targets_fill_the_backbone_and_keep_fc8_new():
  """The config's targets graft a torchvision vgg16_bn tree (1000 classes) into VGG-16."""
  config = load_config("vgg16")
  variables, _ = abstract_variables(baselines.build(config), size=64)
  imagenet = jax.eval_shape(lambda x: build_backbone("vgg16_bn", num_classes=1000).init(jax.random.key(0), x),
                            jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  marker = lambda s: np.full(s.shape, 7.0, np.float32)
  imagenet = jax.tree.map(marker, imagenet)
  grafted = weights.graft(variables, imagenet, config.model.pretrained_targets.to_dict())
  flat = traverse_util.flatten_dict(grafted["params"], sep="/")
  assert isinstance(flat["backbone/head/fc8/kernel"], jax.ShapeDtypeStruct)   # untouched
  pretrained = [k for k, v in flat.items() if not isinstance(v, jax.ShapeDtypeStruct)]
  assert len(pretrained) == len(flat) - 2 and all(np.all(flat[k] == 7.0) for k in pretrained)
  # AttnMel's and VGG-16-GAP's single target takes the whole backbone.
  gap = load_config("vgg16_gap")
  gap_vars, _ = abstract_variables(baselines.build(gap), size=64)
  grafted = weights.graft(gap_vars, imagenet, gap.model.pretrained_targets.to_dict())
  assert np.all(grafted["batch_stats"]["backbone"]["block5"]["bn3"]["var"] == 7.0)


def test_loss_is_focal_and_build_checks_the_head():
  config = load_config("vgg16")
  logits = jnp.array([[0.2, -0.1], [0.5, 1.5], [3.0, 0.0]])
  batch = {"label": jnp.array([1, 0, 1]), "valid": jnp.array([1.0, 1.0, 0.0])}
  total, metrics = baselines.loss({"logits": logits}, batch, config, {})
  expected = losses.focal_loss(logits[:2], batch["label"][:2], gamma=2.0)
  assert float(total) == pytest.approx(float(expected), rel=1e-6) and "focal" in metrics
  config.model.head = "dense"
  with pytest.raises(ValueError, match="head"):
    baselines.build(config)


def test_cam_jaccard_report_and_overlays(tmp_path):
  config = load_config("vgg16_gap")
  masks = np.zeros((2, 64, 64, 6), np.float32)
  masks[:, :, :32, 0] = 1                     # lesion: the left half
  cam = np.zeros((2, 2, 2), np.float32)
  cam[:, :, 0] = 3.0                          # CAM high on the left column of pool5
  cam[1] = -cam[1]                            # ... and on the right for example 1
  batch = {"masks": jnp.asarray(masks), "has_lesion_mask": jnp.ones((2,))}
  outputs = {"logits": jnp.zeros((2, 2)), "cam": jnp.asarray(cam)}
  arrays = jax.tree.map(np.asarray, baselines.eval_arrays(outputs, batch, config))
  np.testing.assert_allclose(arrays["jaccard_cam"], [1.0, 0.0])
  report = baselines.report(arrays, config)
  assert report["jaccard/cam"] == 0.5
  images = np.zeros((2, 64, 64, 3), np.uint8)
  baselines.explain(jax.tree.map(np.asarray, outputs), jax.tree.map(np.asarray, batch), images,
                         ["x", "y"], config, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["x.png", "x_cam.npy", "y.png", "y_cam.npy"]
  assert baselines.eval_arrays({"logits": outputs["logits"]}, batch, config) == {}


@pytest.mark.parametrize("variant", ["vgg", "vgg_gap"])
@pytest.mark.parametrize("size", [32, 224])
def test_table3_vgg_configs_graft_an_imagenet_checkpoint(variant, size, monkeypatch):
  """The thesis's VGG / VGG_GAP configs: one ImageNet VGG16-BN checkpoint (1000 classes) fits
  their pretrained_targets, at any image size; fc8 (1 output) is left out. Shapes only."""
  from dermjax.data import schema
  from dermjax.models.backbones.vgg import VGGStages

  config = config_lib.load_config(os.path.join(ROOT, "configs", "gaze.py"), variant)
  model = baselines.build(config)
  batch = batches.model_batch(1, size)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))
  imagenet = jax.eval_shape(lambda: VGGStages(num_classes=1000).init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  monkeypatch.setattr(weights, "_like", lambda value, leaf: value)   # shape-only trees
  grafted = weights.graft(variables, imagenet, config.model.pretrained_targets)
  kernel = grafted["params"]["backbone"]["block1"]["conv1"]["kernel"]
  assert kernel.shape == (3, 3, 3, 64)
  # Without the explicit targets the new 1-output head cannot take ImageNet's fc8.
  if config.model.head == "fc":
    with pytest.raises(weights.CheckpointMismatchError, match="fc8"):
      weights.graft(variables, imagenet, {"backbone": ""})
