"""ZooME: Zoom-SE and Grad-CAM against numpy, the block_module hook, metadata encoding, a
metadata-only signal learnt, the focal loss, explanations, pretrained grafting, and every
table row at full size (shapes only)."""

import csv
import functools
import json
import math
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from sklearn.metrics import roc_auc_score

import batches
from dermjax import config_lib, weights
from dermjax.data import metadata, schema
from dermjax.models import zoome
from dermjax.models.backbones import BACKBONES, Backbone
from dermjax.models.backbones.resnet import ResNet
from dermjax.models.common import gradcam
from dermjax.models.zoome.model import GAPHead

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = os.path.join(REPO, "configs", "zoome.py")


def _bins(n, size):
  """torch adaptive pooling bins: [floor(i n / size), ceil((i + 1) n / size))."""
  return [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]


@pytest.mark.parametrize("reading", ["se", "literal"])
def test_zoom_se_matches_numpy(reading):
  """Eqs. 1-3 by hand: 4x4 adaptive max pool of a 6 x 9 map, mean, FC-ReLU-FC, gate."""
  rng = np.random.default_rng(0)
  u = rng.normal(size=(2, 6, 9, 32)).astype(np.float32)
  module = zoome.ZoomSE(reduction=4, pool_size=4, reading=reading)
  variables = module.init(jax.random.key(0), u)
  p = jax.tree.map(np.asarray, variables["params"])
  z = np.stack([np.stack([u[:, r0:r1, c0:c1].max(axis=(1, 2)) for c0, c1 in _bins(9, 4)], 1)
                for r0, r1 in _bins(6, 4)], 1)                                  # [2, 4, 4, 32]
  s = z.mean(axis=(1, 2))
  h = np.maximum(s @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
  assert p["fc1"]["kernel"].shape == (32, 8)
  q = h @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  gate = 1 / (1 + np.exp(-q)) if reading == "se" else s
  want = u * gate[:, None, None, :]
  got = np.asarray(module.apply(variables, u))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  if reading == "literal":  # eq. 3 as printed: W1, W2 do not reach the output.
    grads = jax.grad(lambda p: jnp.sum(module.apply({"params": p}, u)))(variables["params"])
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads))


class Identity(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x


class Double(nn.Module):
  @nn.compact
  def __call__(self, x):
    return 2 * x


def test_identity_block_module_equals_the_plain_backbone_bit_for_bit():
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  make = functools.partial(ResNet, stage_sizes=(2, 1), num_classes=3)

  @jax.jit
  def run(x):
    variables = make().init(jax.random.key(0), x)
    hooked = make(block_module=Identity).init(jax.random.key(0), x)
    same_tree = jax.tree.structure(hooked) == jax.tree.structure(variables)
    outs = [make(block_module=m).apply(variables, x) for m in (None, Identity, Double)]
    zoom = make(block_module=zoome.ZoomSE, block_module_name="zoom_se").init(jax.random.key(0), x)
    return same_tree, outs, {k: 0 for k in zoom["params"]}

  same_tree, (want, got, doubled), zoom_params = run(x)
  assert same_tree
  for name in want:
    np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)
  # The hook runs after every block and its output feeds the next block.
  assert not np.allclose(doubled["layer1_0"], want["layer1_0"])
  np.testing.assert_allclose(doubled["layer1_0"], 2 * np.asarray(want["layer1_0"]), rtol=1e-6)
  assert sorted(k for k in zoom_params if k.endswith("zoom_se")) == [
      "layer1_0_zoom_se", "layer1_1_zoom_se", "layer2_0_zoom_se"]


def test_identity_block_module_keeps_torchvision_parity():
  torch = pytest.importorskip("torch")
  import torch_reference  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = torch_reference.randomize_(torch_reference.build("resnet18"))
  x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    want = model.taps(torch.from_numpy(x))["logits"].numpy()
  variables = weights.convert(weights.normalise_keys(
      {k: v.numpy() for k, v in model.state_dict().items()}), "resnet18")
  module = ResNet(stage_sizes=(2, 2, 2, 2), block="basic", num_classes=1000, block_module=Identity)
  got = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))["logits"])
  assert np.max(np.abs(got - want)) / np.max(np.abs(want)) <= 1e-4


def test_metadata_encoding_marks_missing_values():
  sites = len(schema.SITES)
  got = np.asarray(metadata.encode(np.array([40.0, np.nan, 85.0], np.float32),
                                   np.array([1, -1, 7]), np.array([3, -1, sites])))
  assert got.shape == (3, schema.META_DIM) and schema.META_DIM == 5 + sites + 1
  want = np.zeros((3, schema.META_DIM), np.float32)
  want[0, [0, 3, 5 + 3]] = [0.4, 1, 1]                   # age/100, female, site 3
  want[1, [1, 4, 5 + sites]] = 1                         # every value missing
  want[2, [0, 4, 5 + sites]] = [0.85, 1, 1]              # sex 7, site 9: out of range = missing
  np.testing.assert_allclose(got, want, atol=1e-7)


def _tiny_config(with_metadata, arch="resnet18"):
  config = config_lib.load_config(TABLE, "zoome")
  config.model.update(arch=arch, zoom_se=False, metadata=with_metadata, blocks_per_stage=0,
                      backbone_width=0)
  return config


def test_a_model_that_sees_metadata_learns_a_metadata_only_signal(monkeypatch):
  """Images are pure noise and melanoma = age > 50: only the metadata model can rank it.
  A one-block ResNet at 16 px, 60 Adam steps on fresh batches (deterministic)."""
  monkeypatch.setitem(BACKBONES, "tiny", Backbone(
      functools.partial(ResNet, stage_sizes=(1,), block="basic"), "layer1", 64))
  rng = np.random.default_rng(0)

  def data(n):
    age = rng.uniform(20, 85, n).astype(np.float32)
    return batches.model_batch(n, 16, image=rng.normal(size=(n, 16, 16, 3)).astype(np.float32),
                               age=age, sex=rng.integers(-1, 2, n), site=rng.integers(-1, 9, n),
                               label=(age > 50).astype(np.int32))

  steps = 60
  train_batches, test = [data(16) for _ in range(steps)], data(64)
  aucs = {}
  for with_metadata in (True, False):
    config = _tiny_config(with_metadata, arch="tiny")
    module = zoome.build(config)
    variables = module.init(jax.random.key(0), train_batches[0])
    tx = optax.adam(3e-3)
    params, stats, opt = variables["params"], variables["batch_stats"], tx.init(variables["params"])

    @jax.jit
    def step(params, stats, opt, batch, config=config, module=module, tx=tx):
      def loss_fn(params):
        out, new = module.apply({"params": params, "batch_stats": stats}, batch, train=True,
                                mutable=["batch_stats"])
        return zoome.loss(out, batch, config, {})[0], new["batch_stats"]
      (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt = tx.update(grads, opt)
      return optax.apply_updates(params, updates), stats, opt

    for batch in train_batches:
      params, stats, opt = step(params, stats, opt, batch)
    logits = jax.jit(module.apply)({"params": params, "batch_stats": stats}, test)["logits"]
    aucs[with_metadata] = roc_auc_score(np.asarray(test["label"]), np.asarray(logits[:, 0]))
  assert aucs[True] > 0.9 and aucs[False] < 0.7, aucs


def test_grad_cam_of_a_gap_head_is_the_relu_cam():
  features = jax.random.normal(jax.random.key(0), (3, 5, 4, 16))
  head = GAPHead(1)
  variables = head.init(jax.random.key(1), features)

  class Wrapper(nn.Module):
    @nn.compact
    def __call__(self, f):
      return gradcam.head_grad_cam(GAPHead(1, name="head"), f)

  logits, cam = Wrapper().apply({"params": {"head": variables["params"]}}, features)
  kernel = np.asarray(variables["params"]["fc"]["kernel"])[:, 0]
  want = np.maximum(np.einsum("bhwc,c->bhw", np.asarray(features), kernel), 0) / 20
  np.testing.assert_allclose(cam, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits, head.apply(variables, features), rtol=1e-6)


def test_focal_loss_alpha_and_gamma_by_hand():
  config = config_lib.load_config(TABLE, "zoome")
  logits = np.array([[2.0], [-1.0], [0.5], [3.0]], np.float32)
  label = np.array([1, 0, 0, 1], np.int32)
  valid = np.array([1, 1, 1, 0], np.float32)
  got, _ = zoome.loss({"logits": jnp.asarray(logits)}, {"label": label, "valid": valid}, config, {})
  p = 1 / (1 + np.exp(-logits[:, 0]))
  pt = np.where(label == 1, p, 1 - p)
  alpha_t = np.where(label == 1, 0.25, 0.75)
  per = -alpha_t * (1 - pt) ** 2 * np.log(pt)
  assert float(got) == pytest.approx(per[:3].mean(), rel=1e-5)


def test_explain_writes_cam_and_metadata_contribution(tmp_path):
  n = 2
  outputs = {"logits": np.array([[1.0], [-2.0]], np.float32),
             "logits_without_metadata": np.array([[0.0], [-2.0]], np.float32),
             "cam": np.random.default_rng(0).random((n, 2, 2)).astype(np.float32)}
  batch = batches.host_batch(n, 16, age=[np.nan, 60.0], sex=[-1, 0], site=[2, -1],
                             melanoma=[1, 0])
  zoome.explain(outputs, batch, batch["image"], ["ISIC_a", "ISIC_b"], None, str(tmp_path))
  assert os.path.exists(tmp_path / "ISIC_a.png") and os.path.exists(tmp_path / "ISIC_b_cam.npy")
  with open(tmp_path / "metadata_contribution.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["id"] for r in rows] == ["ISIC_a", "ISIC_b"]
  sigmoid = lambda v: 1 / (1 + math.exp(-v))
  assert float(rows[0]["metadata_contribution"]) == pytest.approx(sigmoid(1.0) - 0.5)
  assert float(rows[1]["metadata_contribution"]) == pytest.approx(0.0)
  assert rows[0]["age"] == "" and rows[0]["sex"] == "" and rows[0]["site"] == schema.SITES[2]
  with open(tmp_path / "ISIC_b.json") as f:
    assert json.load(f) == pytest.approx({"id": "ISIC_b", "melanoma": 0, "age": 60.0, "sex": "male",
                                          "site": "", "score": sigmoid(-2.0),
                                          "score_without_metadata": sigmoid(-2.0),
                                          "metadata_contribution": 0.0})
  report = zoome.report({"logits": np.array([[2.0], [-2.0], [0.1], [-0.1]]), "label": np.array([1, 0, 1, 0]),
                         "score_without_metadata": np.array([0.5, 0.5, 0.4, 0.6])}, None)
  assert report["sensitivity_at_youden"] == 1.0 and report["specificity_at_youden"] == 1.0
  # Without metadata: positives 0.5, 0.4 vs negatives 0.5, 0.6 -> one tie of four pairs.
  assert report["auc_without_metadata"] == pytest.approx(0.125)
  # At 0.5 (positive: > 0.5): with (T, F, T, F), without (F, F, F, T) -> three of four flip.
  assert report["metadata_flips_at_0.5"] == pytest.approx(0.75)
  assert all(isinstance(v, float) for v in report.values())


def test_pretrained_targets_graft_the_backbone_not_zoom_se():
  config = _tiny_config(True)
  config.model.zoom_se = True
  module = zoome.build(config)
  batch = batches.model_batch(2, 32)
  variables = jax.eval_shape(lambda b: module.init(jax.random.key(0), b), batch)
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
  pretrained = {"params": {}, "batch_stats": {}}   # An all-ones torchvision resnet18, dermjax names.
  for (collection, path), shape in weights.expected_shapes("resnet18", None).items():
    node = pretrained[collection]
    *parents, leaf = path.split("/")
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = np.ones(shape, np.float32)
  grafted = weights.graft(variables, pretrained, zoome.pretrained_targets("resnet18"))
  params = grafted["params"]["backbone"]
  assert np.all(params["layer4_1"]["conv2"]["kernel"] == 1) and np.all(params["bn1"]["scale"] == 1)
  assert np.all(params["layer4_1_zoom_se"]["fc1"]["kernel"] == 0)
  assert np.all(grafted["params"]["metadata"]["fc2"]["kernel"] == 0)
  alexnet = zoome.pretrained_targets("alexnet")
  assert alexnet["head/classifier/fc6"] == "head/fc6" and "head/classifier/fc8" not in alexnet


@pytest.mark.parametrize("row", config_lib.config_module(TABLE).ROWS)
def test_every_row_at_224_as_shapes(row):
  config = config_lib.load_config(TABLE, f"{row},paper")
  assert (config.data.image_size, config.data.batch_size, config.optim.learning_rate) == (224, 64, 1e-4)
  module = zoome.build(config)
  batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k in ("image", "masks") else dtype)
           for k, (shape, dtype) in schema.batch_spec(224, 2).items()}
  variables = jax.eval_shape(lambda b: module.init(jax.random.key(0), b), batch)
  train_out = jax.eval_shape(lambda v, b: module.apply(v, b, train=True, mutable=["batch_stats"],
                                                       rngs={"dropout": jax.random.key(1)})[0],
                             variables, batch)
  out = jax.eval_shape(module.apply, variables, batch)
  side = 6 if config.model.arch == "alexnet" else 7
  assert train_out["logits"].shape == out["logits"].shape == (2, 1)
  assert out["cam"].shape == (2, side, side)
  assert ("logits_without_metadata" in out) == config.model.metadata
  names = set(variables["params"]["backbone"])
  assert sum(n.endswith("_zoom_se") for n in names) == (16 if config.model.zoom_se else 0)
  assert ("metadata" in variables["params"]) == config.model.metadata


def test_synthetic_age_signal_switch():
  """data.synthetic_age_signal: the hard ISIC 2020 set's age carries the melanoma signal only
  when asked (the metadata comparison of RESULTS.md); by default only the easy set's does."""
  from dermjax.data import synthetic  # pylint: disable=g-import-not-at-top (test-only helper)

  def ages(**kw):
    out = {0: [], 1: []}
    for _, _, diagnosis, meta, _ in synthetic.iter_examples(
        "isic2020", {"train": 40, "validation": 0, "test": 0}, min_side=24, max_side=28, **kw):
      if meta["age"] != "":
        out[int(diagnosis == 1)].append(meta["age"])
    return out

  hard, informative = ages(difficulty="hard"), ages(difficulty="hard", age_signal=True)
  assert min(informative[1]) >= 55 and max(informative[0]) <= 65
  assert min(hard[1]) < 55
  assert ages(difficulty="easy") == ages(difficulty="easy", age_signal=True)
  config = config_lib.load_config(TABLE, "zoome")
  assert config.data.synthetic_age_signal is None
