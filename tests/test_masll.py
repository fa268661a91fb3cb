"""MASLL: full-size shapes (eval_shape), SLL box and crop inside the model, one compilation
for any boxes, WFI against a numpy hand computation, gradients, the table, explanations.

Behaviour tests run MASLL on a one-block-per-stage ResNet registered for the test as
"tiny_resnet" (MASLL takes any BACKBONES entry) at 64-128 px, with variables from
flax_helpers.random_variables (no init); ResNet-101 / DenseNet-121 appear only through
jax.eval_shape. The box rule itself (eqs. 1-2 incl. ties
and constant maps) and the crop against PIL are tested in tests/test_crop.py.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import functools

from dermjax import config_lib, weights
from dermjax.models import masll
from dermjax.models.backbones import BACKBONES, Backbone, build_backbone
from dermjax.models.backbones.resnet import ResNet
from dermjax.models.baselines import gap_classifier
from dermjax.models.common import crop
from flax_helpers import random_variables  # tests/ is on sys.path under pytest.
from test_crop import brute_force_box, largest_region_scipy

TINY = Backbone(functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block="basic"), "layer4", 512)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(arg):
  return config_lib.load_config(os.path.join(ROOT, "configs", "masll.py"), arg)


@pytest.fixture(autouse=True)
def tiny_backbone(monkeypatch):
  monkeypatch.setitem(BACKBONES, "tiny_resnet", TINY)


def small_model(source_size=None, **fields):
  config = load_config("masll_resnet101")
  config.model.backbone = "tiny_resnet"
  config.model.update(blocks_per_stage=0, backbone_width=0)   # the tiny backbone as it is.
  config.model.update(fields)
  if source_size or fields.get("crop_source") == "source":
    config.data.source_size = source_size or 256
  return masll.build(config)


def variables_for(module, *args, seed=0):
  return random_variables(jax.eval_shape(lambda: module.init(jax.random.key(0), *args)), seed)


def images(batch=2, size=128, seed=0):
  """Random images with one bright square per image at a different place."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
  for b in range(batch):
    y0, x0 = rng.integers(0, size // 2, 2)
    x[b, y0:y0 + size // 3, x0:x0 + size // 3] += 3.0
  return jnp.asarray(x)


def count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- full size


@pytest.mark.parametrize("backbone,channels,backbone_params", [
    ("resnet101", 2048, 42_500_160), ("densenet121", 1024, 6_953_856)])
def test_full_size_eval_shape_of_both_branches_at_256(backbone, channels, backbone_params):
  config = load_config(f"masll_{backbone},paper")
  assert config.data.image_size == 256 and config.data.batch_size == 15
  module = masll.build(config)
  assert config.model.crop_source == "source" and config.data.source_size == 512
  batch = {"image": jax.ShapeDtypeStruct((15, 256, 256, 3), jnp.float32),
           "source_image": jax.ShapeDtypeStruct((15, 512, 512, 3), jnp.float32)}
  variables = jax.eval_shape(lambda b: module.init(jax.random.key(0), b), batch)
  outputs = jax.eval_shape(lambda v, b: module.apply(v, b), variables, batch)
  assert outputs["logits"].shape == (15, 1)
  assert outputs["activation_map"].shape == (15, 8, 8)
  assert outputs["box"].shape == (15, 4) and outputs["crop"].shape == (15, 256, 256, 3)
  params = variables["params"]
  # Two full backbones (torchvision parameter counts without the classifier), same shapes.
  assert count(params["global_backbone"]) == count(params["local_backbone"]) == backbone_params
  assert (jax.tree.map(lambda x: x.shape, params["global_backbone"])
          == jax.tree.map(lambda x: x.shape, params["local_backbone"]))
  assert params["wfi"]["mutual"]["kernel"].shape == (2 * channels, 2 * channels)
  assert params["classifier"]["kernel"].shape == (2 * channels, 1)


def test_shared_weights_have_one_backbone():
  batch = {"image": jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)}
  sizes = {}
  for share in (False, True):
    module = small_model(share_weights=share)
    sizes[share] = jax.eval_shape(lambda b, m=module: m.init(jax.random.key(0), b), batch)["params"]
  assert "local_backbone" not in sizes[True]
  assert count(sizes[True]) == count(sizes[False]) - count(sizes[False]["local_backbone"])


# ----------------------------------------------------------------------------- SLL in the model


def test_activation_map_box_and_crop_follow_eqs_1_2():
  module = small_model()
  x = images()
  variables = variables_for(module, {"image": x})
  out = jax.jit(module.apply)(variables, {"image": x})
  # Eq. 1 from the global backbone alone.
  g = jax.jit(build_backbone("tiny_resnet").apply)(
      {"params": variables["params"]["global_backbone"],
       "batch_stats": variables["batch_stats"]["global_backbone"]}, x)["layer4"]
  m = np.asarray(g).mean(axis=-1)
  np.testing.assert_allclose(out["activation_map"], m, rtol=1e-5, atol=1e-5)
  # Eq. 2 and the rectangle, brute force.
  want = np.stack([brute_force_box(mi >= mi.mean()) for mi in np.asarray(out["activation_map"])])
  np.testing.assert_allclose(out["box"], want, atol=1e-6)
  np.testing.assert_allclose(out["crop"], crop.crop_and_resize(x, want, 128), atol=1e-5)


def test_largest_region_box_in_the_model():
  """box_region "largest": the box of the largest connected above-mean region of M."""
  module = small_model(box_region="largest")
  x = images(batch=4, seed=3)
  variables = variables_for(module, {"image": x})
  out = jax.jit(module.apply)(variables, {"image": x})
  want = [brute_force_box(largest_region_scipy(m >= m.mean()))
          for m in np.asarray(out["activation_map"])]
  np.testing.assert_allclose(out["box"], want, atol=1e-6)
  with pytest.raises(ValueError, match="box_region"):
    small_model(box_region="biggest")


def test_forward_compiles_once_for_different_boxes():
  module = small_model()
  variables = variables_for(module, {"image": images()})
  traces = []

  @jax.jit
  def forward(variables, x):
    traces.append(1)
    return module.apply(variables, {"image": x})

  boxes = [np.asarray(forward(variables, images(seed=s))["box"]) for s in range(3)]
  assert len(traces) == 1
  assert len({tuple(b) for bs in boxes for b in bs}) > 1, "boxes should differ between images"


# ----------------------------------------------------------------------------- crop source


def lesion_with_fine_texture(source=256, size=64, seed=0):
  """(image [1, size, size, 3], source [1, source, source, 3], box): a smooth random image
  at `source` px with a small lesion (1/8 of the side) carrying a checkerboard of 2-px
  squares, and the same image resized to `size` px (antialiased), where the pattern is finer
  than a pixel and averages out."""
  rng = np.random.default_rng(seed)
  coarse = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
  big = np.array(jax.image.resize(coarse, (1, source, source, 3), "linear"))
  top, side = source // 2, source // 8
  yy, xx = np.mgrid[:side, :side]
  big[0, top:top + side, top:top + side] += 2.0 * (((yy // 2 + xx // 2) % 2)[..., None] - 0.5)
  small = jax.image.resize(big, (1, size, size, 3), "linear", antialias=True)
  box = np.array([[0.5, 0.5, 0.625, 0.625]], np.float32)
  return small, jnp.asarray(big), box


def fine_detail(x):
  """Mean absolute difference of horizontally adjacent pixels (high-frequency energy)."""
  return float(np.abs(np.diff(np.asarray(x), axis=2)).mean())


def test_crop_from_the_source_keeps_detail_the_input_has_lost(monkeypatch):
  """crop_source "source": the local branch crops the SLL box from the higher-resolution
  copy; for a small lesion with fine texture the crop keeps the texture that the 64 px
  input (and so the "input" crop) has averaged away."""
  image, source, box = lesion_with_fine_texture()
  monkeypatch.setattr(crop, "map_box", lambda maps, **_: jnp.asarray(box))
  batch = {"image": image, "source_image": source}
  crops = {}
  for crop_source in masll.CROP_SOURCES:
    module = small_model(crop_source=crop_source)
    variables = variables_for(module, batch)
    out = jax.jit(module.apply)(variables, batch)
    np.testing.assert_allclose(out["box"], box)
    crops[crop_source] = out["crop"]
  np.testing.assert_allclose(crops["source"], crop.crop_and_resize(source, box, 64), atol=1e-5)
  np.testing.assert_allclose(crops["input"], crop.crop_and_resize(image, box, 64), atol=1e-5)
  assert fine_detail(crops["source"]) > 5 * fine_detail(crops["input"])


def test_source_of_the_input_size_gives_the_input_path():
  """source_size == image_size (source_image = image): both crop sources give the same box,
  crop and logits."""
  x = images(size=64)
  batch = {"image": x, "source_image": x}
  outs = {}
  for crop_source in masll.CROP_SOURCES:
    module = small_model(crop_source=crop_source)
    variables = variables_for(module, batch)
    outs[crop_source] = jax.jit(module.apply)(variables, batch)
  for key in ("box", "crop", "logits"):
    np.testing.assert_allclose(outs["source"][key], outs["input"][key], atol=1e-6)


def test_crop_source_errors():
  with pytest.raises(ValueError, match="crop_source"):
    small_model(crop_source="original")
  config = load_config("masll_resnet101")
  config.model.crop_source = "source"
  with pytest.raises(ValueError, match="source_size"):
    masll.build(config)
  module = small_model(crop_source="source", source_size=64)
  with pytest.raises(ValueError, match="source_image"):
    jax.eval_shape(lambda b: module.init(jax.random.key(0), b),
                   {"image": jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)})


# ----------------------------------------------------------------------------- WFI


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("fusion", masll.FUSIONS)
def test_wfi_matches_hand_computation(fusion):
  rng = np.random.default_rng(0)
  g = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  l = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  module = masll.WFI(fusion)
  variables = module.init(jax.random.key(1), g, l)
  w = np.asarray(variables["params"]["mutual"]["kernel"])
  b = rng.normal(size=8).astype(np.float32)                 # a non-zero bias for the check.
  variables = {"params": {"mutual": {"kernel": w, "bias": b}}}
  got = np.asarray(module.apply(variables, g, l))
  if fusion == "pooled":
    f = np.concatenate([g.mean(axis=(1, 2)), l.mean(axis=(1, 2))], axis=-1)   # eq. 3
    mu = f @ w + b                                                            # eq. 4
    want = sigmoid(mu) * f + f                                                # eqs. 5-6
  else:
    f = np.concatenate([g, l], axis=-1)                                       # [2, 3, 3, 8]
    mu = np.einsum("bhwc,cd->bhwd", f, w) + b
    want = (sigmoid(mu) * f + f).mean(axis=(1, 2))
  assert got.shape == (2, 8)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- gradients


def test_gradient_reaches_both_backbones_and_not_the_box():
  module = small_model()
  x = images(size=64)
  variables = variables_for(module, {"image": x})
  config = load_config("masll_resnet101")
  batch = {"image": x, "label": jnp.array([0, 1]), "valid": jnp.ones(2)}

  def apply(params):
    return module.apply({"params": params, "batch_stats": variables["batch_stats"]}, batch,
                        train=True, mutable=["batch_stats"])[0]

  def loss(params):
    return masll.loss(apply(params), batch, config, {})[0]

  def box_and_crop(params):  # Neither may depend differentiably on the parameters.
    outputs = apply(params)
    return jnp.sum(outputs["box"]) + jnp.sum(outputs["crop"])

  loss_grads, box_grads = jax.jit(lambda p: (jax.grad(loss)(p), jax.grad(box_and_crop)(p)))(
      variables["params"])
  for name in ("global_backbone", "local_backbone", "wfi", "classifier"):
    assert sum(float(jnp.abs(v).sum()) for v in jax.tree.leaves(loss_grads[name])) > 0, name
  assert all(float(jnp.abs(v).max()) == 0.0 for v in jax.tree.leaves(box_grads))


# ----------------------------------------------------------------------------- pretrained


def test_one_checkpoint_fills_both_branches():
  module = small_model()
  x = images(size=64)
  variables = variables_for(module, {"image": x})
  backbone = build_backbone("tiny_resnet")
  checkpoint = variables_for(backbone, x, seed=7)
  grafted = weights.graft(variables, checkpoint, masll.pretrained_targets(False))
  for branch in ("global_backbone", "local_backbone"):
    for collection in ("params", "batch_stats"):
      a = traverse_util.flatten_dict(grafted[collection][branch])
      b = traverse_util.flatten_dict(checkpoint[collection])
      assert a.keys() == b.keys()
      assert all(np.array_equal(a[k], b[k]) for k in a)
  assert masll.pretrained_targets(True) == {"global_backbone": ""}


# ----------------------------------------------------------------------------- table


def test_table_rows_and_paper_scale():
  for row, name in [("resnet101", "gap_classifier"), ("densenet121", "gap_classifier"),
                    ("masll_resnet101", "masll"), ("masll_densenet121", "masll")]:
    config = load_config(f"{row},paper")
    assert config.model.name == name
    assert config.model.backbone == config.model.pretrained_arch == row.removeprefix("masll_")
    scale = (config.data.image_size, config.data.batch_size, config.train.num_epochs)
    assert scale == (256, 15, 100)
    assert config.optim.name == "sgd" and config.loss.focal_gamma == 0.0
    augment = config.data.augment
    assert augment.rotation == "uniform" and augment.hflip and augment.vflip
    cpu = load_config(row)
    assert (cpu.data.image_size, cpu.model.blocks_per_stage) == (128, 1)   # maps 4 x 4.
  config = load_config("masll_densenet121")
  assert dict(config.model.pretrained_targets) == {"global_backbone": "", "local_backbone": ""}
  config.model.fusion = "sum"
  with pytest.raises(ValueError, match="fusion"):
    masll.build(config)
  config = load_config("masll_densenet121")
  config.model.share_weights, config.model.pretrained = True, "/some/densenet121.pth"
  with pytest.raises(ValueError, match="share_weights"):
    masll.build(config)
  with pytest.raises(ValueError, match="bad argument"):
    load_config("masll_vgg16")


def test_loss_is_cross_entropy():
  config = load_config("masll_resnet101")
  logits = jnp.array([[0.3], [-1.2], [2.0]])
  batch = {"label": jnp.array([1, 0, 0]), "valid": jnp.array([1.0, 1.0, 0.0])}
  box = jnp.array([[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 1.0], [0.0, 0.0, 1.0, 1.0]])
  value, metrics = masll.loss({"logits": logits, "box": box}, batch, config, {})
  p = sigmoid(np.array([0.3, -1.2]))
  want = -(np.log(p[0]) + np.log(1 - p[1])) / 2
  assert float(value) == pytest.approx(want, rel=1e-5)
  assert set(metrics) == {"cross_entropy", "loss", "box_area"}
  assert float(metrics["box_area"]) == pytest.approx((0.25 + 0.5) / 2)   # real rows only.


# ----------------------------------------------------------------------------- baseline


def test_gap_classifier_cam_averages_to_the_logit():
  config = load_config("resnet101")
  config.model.update(backbone="tiny_resnet", blocks_per_stage=0, backbone_width=0)
  module = gap_classifier.build(config)
  x = images(size=64)
  variables = variables_for(module, {"image": x})
  out = jax.jit(module.apply)(variables, {"image": x})
  bias = variables["params"]["classifier"]["bias"]
  np.testing.assert_allclose(out["cam"].mean(axis=(1, 2)) + bias[0], out["logits"][:, 0],
                             rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- explanations


def test_explain_and_report(tmp_path):
  size = 64
  outputs = {"activation_map": np.random.default_rng(0).random((2, 2, 2)).astype(np.float32),
             "box": np.array([[0.0, 0.5, 0.5, 1.0], [0.0, 0.0, 1.0, 1.0]], np.float32)}
  imgs = np.random.default_rng(1).integers(0, 255, (2, size, size, 3)).astype(np.uint8)
  masll.explain(outputs, {}, imgs, ["a", "b"], None, str(tmp_path))
  for name in ("a.png", "a_activation_map.npy", "a_box.npy", "b.png"):
    assert (tmp_path / name).exists(), name
  assert np.load(tmp_path / "a_activation_map.npy").shape == (size, size)
  # With a source copy (crop_source "source") the crop panel comes from it.
  source = imgs.repeat(2, 1).repeat(2, 2)
  masll.explain(outputs, {"source_image": source}, imgs, ["a"], None, str(tmp_path / "src"))
  assert (tmp_path / "src" / "a.png").exists()
  report = masll.report({"box": outputs["box"]}, None)
  assert report["box_area_mean"] == pytest.approx((0.25 + 1.0) / 2)
  assert report["box_whole_image_fraction"] == pytest.approx(0.5)
