"""AttnMel-CNN / Mel-CNN: shapes, the regularised loss (eq. 5), Table-3 arrays, overlays,
and parity of the forward pass with a plain-PyTorch AttnMel given the same weights."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import batches
from dermjax import config_lib, losses
from dermjax.data import schema
from dermjax.models import attnmel
from flax_helpers import random_variables  # tests/ is on sys.path under pytest.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(arg):
  return config_lib.load_config(os.path.join(ROOT, "configs", "attnmel.py"), arg)


def make_batch(size=64, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  masks = np.zeros((batch, size, size, 1 + schema.NUM_ATTRIBUTES), np.float32)
  masks[:, :, size // 4:3 * size // 4, 0] = 1   # a vertical band: exact under bilinear upsampling
  return batches.model_batch(batch, size, image=rng.normal(size=(batch, size, size, 3)),
                             masks=masks, label=np.arange(batch) % 2,
                             melanoma=np.arange(batch) % 2)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("arg", ["attnmel", "melcnn", "softmax"])
def test_full_size_output_and_attention_shapes(arg):
  config = load_config(arg + ",paper")
  module = attnmel.build(config)
  batch = {"image": jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)}
  variables = jax.eval_shape(lambda b: module.init(jax.random.key(0), b), batch)
  outputs = jax.eval_shape(lambda v, b: module.apply(v, b), variables, batch)
  assert outputs["logits"].shape == (2, 2) and outputs["logits"].dtype == jnp.float32
  if arg == "melcnn":
    assert set(outputs) == {"logits"}
    assert "attention3" not in variables["params"]
  else:
    assert outputs["attention3"].shape == (2, 28, 28)
    assert outputs["attention4"].shape == (2, 14, 14)
    w = variables["params"]["attention3"]
    assert w["W_f"]["kernel"].shape == (1, 1, 256, 256) and "bias" not in w["W_f"]
    assert w["W_g"]["kernel"].shape == (1, 1, 512, 256)
    assert w["W"]["kernel"].shape == (1, 1, 256, 1)
  # [GAP(G) 512, pool-3 256, pool-4 512] -> K.
  assert variables["params"]["classifier"]["kernel"].shape == (512 + 256 + 512, 2)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  config = load_config("attnmel")
  config.model.dtype = "bfloat16"
  module = attnmel.build(config)
  batch = {"image": jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)}
  variables = jax.eval_shape(lambda b: module.init(jax.random.key(0), b), batch)
  outputs = jax.eval_shape(lambda v, b: module.apply(v, b), variables, batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(outputs))


def test_build_rejects_a_reference_without_attention():
  config = load_config("melcnn")
  config.loss.attention_reference = "lesion"
  with pytest.raises(ValueError, match="attention"):
    attnmel.build(config)
  config = load_config("attnmel")
  config.loss.attention_reference = "lesions"
  with pytest.raises(ValueError, match="attention_reference"):
    attnmel.build(config)


# ----------------------------------------------------------------------------- loss


def perfect_outputs(batch):
  """Attention maps equal to the lesion reference downsampled to pool-3 / pool-4 size."""
  lesion = batch["masks"][..., 0]
  size = lesion.shape[1]
  return {"logits": jnp.zeros((lesion.shape[0], 2)),
          "attention3": attnmel.area_downsample(lesion, (size // 8, size // 8)),
          "attention4": attnmel.area_downsample(lesion, (size // 16, size // 16))}


def test_dice_term_is_zero_for_a_perfect_map():
  config = load_config("lesion")
  batch = make_batch()
  outputs = perfect_outputs(batch)
  total, metrics = attnmel.loss(outputs, batch, config, {})
  assert float(metrics["dice_attention3"]) == pytest.approx(0.0, abs=1e-6)
  assert float(metrics["dice_attention4"]) == pytest.approx(0.0, abs=1e-6)
  assert float(total) == pytest.approx(float(metrics["focal"]), abs=1e-6)
  # A uniform map is penalised, with lambda_1 = 0.001 and lambda_2 = 0.01.
  flat = {**outputs, "attention3": jnp.full_like(outputs["attention3"], 0.5),
          "attention4": jnp.full_like(outputs["attention4"], 0.5)}
  total, metrics = attnmel.loss(flat, batch, config, {})
  d3, d4 = float(metrics["dice_attention3"]), float(metrics["dice_attention4"])
  assert d3 > 0.1 and d4 > 0.1
  assert float(total) == pytest.approx(float(metrics["focal"]) + 0.001 * d3 + 0.01 * d4, rel=1e-6)


def test_dice_handles_empty_masks_and_skips_examples_without_ground_truth():
  config = load_config("lesion")
  batch = make_batch(batch=3)
  outputs = perfect_outputs(batch)
  # Example 1: an empty lesion mask (ground truth) and a map that is all zero: still perfect.
  batch["masks"] = batch["masks"].at[1].set(0.0)
  outputs = perfect_outputs(batch)
  # Example 2: no ground-truth mask; its (wrong) map must not count.
  batch["has_lesion_mask"] = batch["has_lesion_mask"].at[2].set(0.0)
  outputs["attention3"] = outputs["attention3"].at[2].set(1.0)
  outputs["attention4"] = outputs["attention4"].at[2].set(1.0)
  _, metrics = attnmel.loss(outputs, batch, config, {})
  assert float(metrics["dice_attention3"]) == pytest.approx(0.0, abs=1e-6)
  # A batch with only empty masks gives finite values and gradients.
  empty = {**batch, "masks": jnp.zeros_like(batch["masks"])}
  grads = jax.grad(lambda o: attnmel.loss(o, empty, config, {})[0])(outputs)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_references_lesion_background_and_dermo_union():
  batch = make_batch(size=16, batch=2)
  masks = np.zeros((2, 16, 16, 1 + schema.NUM_ATTRIBUTES), np.float32)
  masks[0, :8, :, 0] = 1
  masks[0, 0, 0, 1 + schema.ATTRIBUTES.index("streaks")] = 1
  masks[0, 1, 1, 1 + schema.ATTRIBUTES.index("pigment_network")] = 1
  masks[1, 2, 2, 1 + schema.ATTRIBUTES.index("globules")] = 1  # not an ISIC 2017 attribute
  batch = {"masks": jnp.asarray(masks), "has_lesion_mask": jnp.asarray([1.0, 1.0]),
           "has_attributes": jnp.asarray([0.0, 1.0])}
  lesion, has_lesion = attnmel.reference_map(batch, "lesion")
  np.testing.assert_array_equal(lesion, masks[..., 0])
  np.testing.assert_array_equal(has_lesion, [1.0, 1.0])
  background, _ = attnmel.reference_map(batch, "background")
  np.testing.assert_array_equal(background, 1 - masks[..., 0])
  dermo, has_dermo = attnmel.reference_map(batch, "dermo")
  assert float(dermo[0].sum()) == 2 and float(dermo[1].sum()) == 0
  np.testing.assert_array_equal(has_dermo, [0.0, 1.0])


def test_area_downsample_is_block_mean():
  maps = jnp.arange(32.0).reshape(2, 4, 4)
  out = attnmel.area_downsample(maps, (2, 2))
  np.testing.assert_allclose(out[0], [[2.5, 4.5], [10.5, 12.5]])


def test_unregularised_loss_is_the_focal_loss():
  config = load_config("attnmel")
  batch = make_batch()
  outputs = {"logits": jnp.array([[0.3, -0.2], [1.0, 0.5]])}
  total, metrics = attnmel.loss(outputs, batch, config, {})
  expected = losses.focal_loss(outputs["logits"], batch["label"], gamma=2.0)
  assert float(total) == pytest.approx(float(expected)) and set(metrics) == {"focal", "loss"}


def test_regulariser_trains_the_attention_modules():
  config = load_config("lesion")
  module = attnmel.build(config)
  batch = make_batch(size=32)
  shapes = jax.eval_shape(lambda b: module.init(jax.random.key(0), b), batch)
  variables = random_variables(shapes)
  params = variables["params"]
  heads = {k: params[k] for k in ("attention3", "attention4")}

  @jax.jit
  def grad_dice4(heads):  # Gradient w.r.t. the attention modules only (the backbone is fixed).
    def dice4(heads):
      outputs = module.apply({**variables, "params": {**params, **heads}}, batch)
      return attnmel.loss(outputs, batch, config, {})[1]["dice_attention4"]
    return jax.grad(dice4)(heads)

  grads = grad_dice4(heads)
  assert float(jnp.abs(grads["attention4"]["W"]["kernel"]).sum()) > 0
  assert float(jnp.abs(grads["attention3"]["W"]["kernel"]).sum()) == 0  # A3's term is separate


# ----------------------------------------------------------------------------- Table 3, overlays


def test_eval_arrays_and_report_score_attention_against_the_lesion():
  config = load_config("attnmel")
  batch = make_batch(size=64, batch=2)
  outputs = perfect_outputs(batch)
  outputs["attention4"] = 1.0 - outputs["attention4"]      # the background: Jaccard 0
  arrays = jax.jit(lambda o, b: attnmel.eval_arrays(o, b, config))(outputs, batch)
  np.testing.assert_allclose(arrays["jaccard_pool3"], [1.0, 1.0])
  np.testing.assert_allclose(arrays["jaccard_pool4"], [0.0, 0.0])
  assert all(v.shape == (2,) for v in arrays.values())
  report = attnmel.report(jax.tree.map(np.asarray, arrays), config)
  assert report["jaccard/pool3"] == 1.0 and report["jaccard/pool4"] == 0.0
  assert report["jaccard/num_examples"] == 2
  assert attnmel.eval_arrays({"logits": outputs["logits"]}, batch, config) == {}  # Mel-CNN


def test_explain_writes_overlays_and_maps(tmp_path):
  config = load_config("attnmel")
  batch = make_batch(size=32, batch=2)
  outputs = jax.tree.map(np.asarray, perfect_outputs(batch))
  images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
  attnmel.explain(outputs, jax.tree.map(np.asarray, batch), images, ["a", "b"], config, str(tmp_path))
  from PIL import Image
  png = np.asarray(Image.open(tmp_path / "a.png"))
  assert png.shape[0] == 192 and png.shape[1] > 3 * 192  # displayed at 192 px: image | mask | pool3 | pool4
  heat = np.load(tmp_path / "b_pool4.npy")
  assert heat.shape == (32, 32)


# ----------------------------------------------------------------------------- torch parity


def _torch_attnmel(normalize):
  torch = pytest.importorskip("torch")
  import torch.nn.functional as F
  from torch import nn
  import torch_reference

  class Block(nn.Module):
    """The authors' AttentionBlock (blocks.py), upsampling to the local map's size."""

    def __init__(self, in_local, in_global, features):
      super().__init__()
      self.W_l = nn.Conv2d(in_local, features, 1, bias=False)
      self.W_g = nn.Conv2d(in_global, features, 1, bias=False)
      self.phi = nn.Conv2d(features, 1, 1)

    def forward(self, l, g):
      n, c, h, w = l.shape
      g_ = F.interpolate(self.W_g(g), size=(h, w), mode="bilinear", align_corners=False)
      r = self.phi(F.relu(self.W_l(l) + g_))
      if normalize:
        a = F.softmax(r.view(n, 1, -1), dim=2).view(n, 1, h, w)
        return a, (a * l).view(n, c, -1).sum(dim=2)
      a = torch.sigmoid(r)
      return a, F.adaptive_avg_pool2d(a * l, 1).view(n, c)

  class AttnVGG(nn.Module):

    def __init__(self):
      super().__init__()
      self.vgg = torch_reference.VGG(batch_norm=True)
      self.attn1 = Block(256, 512, 256)
      self.attn2 = Block(512, 512, 256)
      self.classify = nn.Linear(512 + 256 + 512, 2)

    def forward(self, x):
      taps = self.vgg.taps(x)
      g = taps["pool5"].mean(dim=(2, 3))
      a1, g1 = self.attn1(taps["pool3"], taps["pool5"])
      a2, g2 = self.attn2(taps["pool4"], taps["pool5"])
      return self.classify(torch.cat((g, g1, g2), dim=1)), a1[:, 0], a2[:, 0]

  torch.manual_seed(0)
  return torch_reference.randomize_(AttnVGG().eval())


def _to_flax(state, variables):
  """The torch AttnVGG state dict -> the Flax AttnMel variables (VGG part via dermjax.weights)."""
  from dermjax import weights
  vgg = {k[len("vgg."):]: v for k, v in state.items() if k.startswith("vgg.")}
  variables = weights.graft(variables, weights.convert(vgg, "vgg16_bn", "torchvision"),
                            {"backbone": ""})
  params = dict(variables["params"])
  conv = lambda w: np.transpose(w, (2, 3, 1, 0))
  for flax_name, torch_name in (("attention3", "attn1"), ("attention4", "attn2")):
    params[flax_name] = {"W_f": {"kernel": conv(state[f"{torch_name}.W_l.weight"])},
                         "W_g": {"kernel": conv(state[f"{torch_name}.W_g.weight"])},
                         "W": {"kernel": conv(state[f"{torch_name}.phi.weight"]),
                               "bias": state[f"{torch_name}.phi.bias"]}}
  params["classifier"] = {"kernel": state["classify.weight"].T, "bias": state["classify.bias"]}
  return {**variables, "params": params}


def _max_rel_err(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.mark.parametrize("normalize", [False, True])
def test_forward_matches_pytorch_attnmel(normalize):
  torch = pytest.importorskip("torch")
  net = _torch_attnmel(normalize)
  state = {k: v.detach().numpy() for k, v in net.state_dict().items()
           if not k.endswith("num_batches_tracked")}
  config = load_config("softmax" if normalize else "attnmel")
  module = attnmel.build(config)
  x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
  shapes = jax.eval_shape(lambda b: module.init(jax.random.key(0), b), {"image": jnp.asarray(x)})
  variables = _to_flax(state, shapes)  # every leaf comes from the torch model
  out = jax.jit(lambda v, b: module.apply(v, b))(variables, {"image": jnp.asarray(x)})
  with torch.no_grad():
    logits, a3, a4 = net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  assert out["attention3"].shape == tuple(a3.shape) == (2, 8, 8)
  assert _max_rel_err(out["logits"], logits.numpy()) <= 1e-4
  assert _max_rel_err(out["attention3"], a3.numpy()) <= 1e-4
  assert _max_rel_err(out["attention4"], a4.numpy()) <= 1e-4
