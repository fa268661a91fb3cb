"""Gaze model: full-size shapes (eval_shape), a small forward/backward, loss pieces by hand,
program size constant in T, and the eval/report/explain hooks."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import batches
from dermjax import config_lib
from dermjax.data import schema
from dermjax.models import gaze

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = schema.NUM_STRUCTURES
TABLE1 = [2000, 2000, 1131, 126, 573, 116]
# The training split's presences as dermjax.data.prepare writes them into stats.json.
TABLE1_STATS = {"splits": {"train": {"structure_presence": dict(zip(schema.STRUCTURES, TABLE1))}}}


def load_config(name, arg=None):
  return config_lib.load_config(os.path.join(REPO, "configs", name), arg)


def fake_batch(size, batch=2, seed=0):
  """Device-format batch: lesion square, pigment network in example 0, streaks in example 1."""
  rng = np.random.default_rng(seed)
  masks = np.zeros((batch, size, size, 1 + schema.NUM_ATTRIBUTES), np.float32)
  q = size // 4
  masks[:, q:3 * q, q:3 * q, 0] = 1
  masks[0, q:2 * q, q:2 * q, 1] = 1
  masks[1 % batch, 2 * q:3 * q, q:2 * q, 4] = 1
  return batches.model_batch(batch, size, image=rng.normal(size=(batch, size, size, 3)),
                             masks=masks, label=np.arange(batch) % 2,
                             melanoma=np.arange(batch) % 2)


def gaze_variants():
  """The experiments of configs/gaze.py that are gaze models (not the plain VGG baselines)."""
  table = config_lib.config_module(os.path.join(REPO, "configs", "gaze.py"))
  return [v for v in sorted(table.VARIANTS) if table.get_config(v).model.name == "gaze"]


# --- full size, shapes only ----------------------------------------------------------


@pytest.mark.parametrize("variant", gaze_variants())
def test_full_size_shapes(variant):
  config = load_config("gaze.py", variant + ",paper")
  size, t = config.data.image_size, config.model.timesteps
  assert (size, t) == (224, 5)
  net = gaze.build(config)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fake_batch(size))
  variables = jax.eval_shape(lambda b: net.init(jax.random.key(0), b, train=False), batch)
  out, _ = jax.eval_shape(lambda v, b: net.apply(v, b, train=True, mutable=["batch_stats"],
                                                 rngs={"dropout": jax.random.key(1)}),
                          variables, batch)
  assert out["logits"].shape == (2, 1)
  assert out["attention"].shape == (2, 5, 28, 28)
  params = variables["params"]
  assert params["attentive_convlstm"]["cell"]["W"]["kernel"].shape == (3, 3, 256, 1024)
  assert params["diagnosis_vgg"]["block5"]["conv3"]["kernel"].shape == (3, 3, 512, 512)
  if config.model.decoder:
    assert out["masks"].shape == (2, 5, 224, 224)
    assert out["mask_logits"].shape == (2, 5, 224, 224)
    assert out["structure_logits"].shape == (2, 5, S)
    assert params["structure_head"]["dense1"]["kernel"].shape == (448, 224)
    assert params["decoder"]["block3_conv2"]["kernel"].shape == (3, 3, 64, 1)
  else:
    assert set(out) == {"logits", "attention"}
    assert "decoder" not in params
  head = params["diagnosis_head"]
  if config.model.head == "gap":
    width = 512 + (config.model.step_dim or 5 * 256)
    assert head["fc"]["kernel"].shape == (width, 1)
  else:
    assert head["fc6"]["kernel"].shape == (7 * 7 * 512 + 5 * 256, 4096)
  for name in ("encoder", "attentive_convlstm", "diagnosis_vgg", "diagnosis_head"):
    assert name in params


def test_thesis_recipe():
  config = load_config("gaze.py", "thesis,paper")
  assert (config.data.resize_size, config.data.batch_size, config.train.num_epochs) == (256, 8, 20)
  assert (config.optim.b1, config.optim.b2, config.optim.weight_decay) == (0.92, 0.96, 1e-6)
  rates = {k: v[1] for k, v in config.optim.groups.items()}
  assert rates == {"encoder": 0.0, "attentive_convlstm": 1e-2, "branches": 1e-4}
  assert config.model.freeze_encoder and config.model.pretrained_arch == "vgg16_bn"
  assert (config.loss.alpha, config.loss.beta, config.loss.gamma, config.loss.mu) == (
      0.25, 0.75, 0.75, 0.25)


def test_optimizer_groups_cover_the_submodules():
  from dermjax import optim  # pylint: disable=g-import-not-at-top
  config = load_config("gaze.py", "thesis,paper")
  net = gaze.build(config)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fake_batch(32))
  params = jax.eval_shape(lambda b: net.init(jax.random.key(0), b), batch)["params"]
  labels = optim.param_labels(params, config.optim)
  groups = {name: set(jax.tree.leaves(labels[name])) for name in params}
  assert groups["encoder"] == {"encoder"}
  assert groups["attentive_convlstm"] == {"attentive_convlstm"}
  for name in ("decoder", "structure_head", "diagnosis_vgg", "diagnosis_head"):
    assert groups[name] == {"branches"}, name


# --- small forward / backward ----------------------------------------------------------


@pytest.fixture(scope="module")
def small():
  config = load_config("gaze.py")
  config.data.image_size = 32
  config.model.timesteps = 2
  net = gaze.build(config)
  batch = fake_batch(32)
  # One compilation gives both the variables and the (train=False) outputs.
  out, variables = jax.jit(lambda b: net.init_with_output(jax.random.key(0), b, train=False))(batch)
  return config, net, variables, batch, out


def test_small_forward(small):
  config, net, variables, batch, out = small
  assert out["logits"].shape == (2, 1) and out["logits"].dtype == jnp.float32
  assert out["attention"].shape == (2, 2, 4, 4)
  np.testing.assert_allclose(np.asarray(out["attention"]).sum((2, 3)), 1.0, rtol=1e-5)
  # V_a starts at zero: the first attention maps are uniform.
  np.testing.assert_allclose(np.asarray(out["attention"]), 1 / 16, rtol=1e-5)
  assert out["masks"].shape == (2, 2, 32, 32) and out["structure_logits"].shape == (2, 2, S)
  np.testing.assert_allclose(out["masks"], jax.nn.sigmoid(out["mask_logits"]), rtol=1e-6)
  for key in ("cell",):
    u = np.asarray(variables["params"]["attentive_convlstm"][key]["U"]["kernel"]).reshape(-1, 1024)
    np.testing.assert_allclose(u.T @ u, np.eye(1024), atol=1e-4)  # orthogonal recurrent kernel


def test_structure_probabilities_of_each_image_and_step_are_its_own(small):
  """structure_logits[b, t] is image b's step t, as running image b alone gives: the batch
  never reorders (image, step) pairs (the authors' notebook's
  torch.cat(out_classes, 0).view(B, T, -1) would hand (0, 1) and (1, 0) each other's rows;
  configs/gaze.py: not reproduced)."""
  config, net, variables, batch, out = small
  alone = jax.jit(lambda b: net.apply(variables, b, train=False)["structure_logits"])
  for b in range(2):
    one = alone(jax.tree.map(lambda x: x[b:b + 1], batch))
    np.testing.assert_allclose(out["structure_logits"][b], one[0], rtol=1e-4, atol=1e-5)
  # The check can tell a reordering apart: the swapped pairs differ.
  assert np.abs(out["structure_logits"][0, 1] - out["structure_logits"][1, 0]).max() > 1e-4


def test_loss_and_gradients_frozen_encoder(small):
  config, net, variables, batch, _ = small
  config = config.copy_and_resolve_references()
  config.model.freeze_encoder = True
  net = gaze.build(config)
  stats = gaze.loss_stats(TABLE1_STATS, config)

  def objective(params):
    out, _ = net.apply({**variables, "params": params}, batch, train=True, mutable=["batch_stats"])
    return gaze.loss(out, batch, config, stats)

  (value, metrics), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(variables["params"])
  assert np.isfinite(value)
  want = (0.25 * metrics["loss_diag"]
          + 0.75 * (0.75 * metrics["loss_seg"] + 0.25 * metrics["loss_class"]))
  assert float(value) == pytest.approx(float(want), rel=1e-5)
  # Example 0: lesion, skin, pigment network; example 1: lesion, skin, streaks; T = 2.
  assert float(metrics["matched_per_image"]) == pytest.approx(2.0)
  norms = {k: sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(v)) for k, v in grads.items()}
  assert norms["encoder"] == 0.0
  for name in ("attentive_convlstm", "decoder", "structure_head", "diagnosis_vgg", "diagnosis_head"):
    assert norms[name] > 0, name


def test_program_size_does_not_grow_with_t():
  """The scan keeps one copy of the step: the lowered program has the same ops for any T."""
  config = load_config("gaze.py")
  config.data.image_size = 16

  def program_lines(t):
    config.model.timesteps = t
    net = gaze.build(config)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fake_batch(16))
    variables = jax.eval_shape(lambda b: net.init(jax.random.key(0), b), batch)
    fn = lambda v, b: gaze.loss(net.apply(v, b, train=False), b, config, {})[0]
    text = jax.jit(jax.grad(fn)).lower(variables, batch).as_text()
    return len([line for line in text.splitlines() if "=" in line])

  assert program_lines(2) == program_lines(7)


# --- loss pieces by hand -----------------------------------------------------------------


def hand_masks():
  """GT: 3 structures present in one 4x4 image; T = 2 predictions."""
  gt = np.zeros((1, 4, 4, S), np.float32)
  gt[0, :2, :, 0] = 1          # lesion: top half
  gt[0, 2:, :, 1] = 1          # skin: bottom half
  gt[0, 0, 0, 2] = 1           # pigment network: one pixel (present, unmatched with T = 2)
  pred = np.zeros((1, 2, 4, 4), np.float32)
  pred[0, 0, 2:, :] = 1.0      # step 0 = skin exactly
  pred[0, 1, :2, :] = 0.5      # step 1 = half-confident lesion
  return jnp.asarray(pred), jnp.asarray(gt)


def test_soft_iou_matrix_by_hand():
  pred, gt = hand_masks()
  soft = np.asarray(gaze.soft_iou_matrix(pred, gt))
  assert soft.shape == (1, S, 2)
  assert soft[0, 1, 0] == pytest.approx(1.0)          # skin vs step 0
  assert soft[0, 0, 1] == pytest.approx(4 / 8)        # <p, m> 4, |p| 4, |m| 8
  assert soft[0, 0, 0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("matcher", ["host", "device"])
def test_structure_loss_by_hand(matcher):
  pred, gt = hand_masks()
  valid = jnp.asarray([[True, True, True, False, False, False]])
  logits = jnp.zeros((1, 2, S)).at[0, 0, 1].set(10.0)  # step 0 says "skin" confidently
  l_seg, l_class, assign = gaze.structure_loss(
      pred, logits, gt, valid, class_weights=jnp.ones(S), balancing_mode="none", matcher=matcher)
  np.testing.assert_array_equal(np.asarray(assign), [[1, 0, -1, -1, -1, -1]])
  assert float(l_seg) == pytest.approx((0.0 + 0.5) / 2, abs=1e-5)
  ce_skin = -jax.nn.log_softmax(logits[0, 0])[1]
  ce_lesion = np.log(S)                                  # uniform logits at step 1
  assert float(l_class) == pytest.approx((float(ce_skin) + ce_lesion) / 2, rel=1e-5)
  # Presence weights (eqs. 15-16): mean over the 2 matched pairs of w_s * term.
  w = jnp.array([0.1, 0.3, 0.6, 0, 0, 0])
  l_seg_w, _, _ = gaze.structure_loss(pred, logits, gt, valid, class_weights=w,
                                      balancing_mode="presence_inverse", matcher=matcher)
  assert float(l_seg_w) == pytest.approx((0.1 * 0.5 + 0.3 * 0.0) / 2, abs=1e-5)


def test_gradient_reaches_masks_only_through_matched_pairs():
  pred, gt = hand_masks()
  pred = jnp.concatenate([pred, jnp.full((1, 1, 4, 4), 0.3)], axis=1)  # T = 3, step 2 unmatched
  valid = jnp.asarray([[True, True, False, False, False, False]])

  def seg(p):
    return gaze.structure_loss(p, jnp.zeros((1, 3, S)), gt, valid, class_weights=jnp.ones(S),
                               balancing_mode="none")[0]

  grad = np.asarray(jax.grad(seg)(pred))
  assert np.all(grad[0, 2] == 0)            # unmatched step: no gradient
  assert np.any(grad[0, 1] != 0)            # matched to the lesion with soft IoU 0.5


def test_absent_and_unannotated_structures_are_not_targets():
  batch = fake_batch(16)
  batch["has_attributes"] = jnp.array([1.0, 0.0])
  _, valid = gaze.structure_targets(batch)
  np.testing.assert_array_equal(np.asarray(valid), [[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])


def test_loss_stats_and_errors():
  config = load_config("gaze.py")
  config.loss.balancing = "presence_others"
  stats = gaze.loss_stats(TABLE1_STATS, config)
  np.testing.assert_allclose(stats["structure_weights"][:2], [0.1327, 0.1327], atol=1e-4)
  with pytest.raises(ValueError, match="presence"):
    gaze.loss_stats({}, config)
  with pytest.raises(ValueError, match="lacks"):
    gaze.loss_stats({"splits": {"train": {"structure_presence": {"lesion": 3}}}}, config)
  config.model.structure_pool = "median"
  with pytest.raises(ValueError, match="structure_pool"):
    gaze.build(config)
  config.model.structure_pool = "mean"
  config.model.head = "mlp"
  with pytest.raises(ValueError, match="config.model.head"):
    gaze.build(config)


def test_no_decoder_loss_is_the_diagnosis_loss():
  outputs = {"logits": jnp.array([[2.0], [-1.0]]), "attention": jnp.zeros((2, 2, 2, 2))}
  config = load_config("gaze.py", "attconvlstm_gap,cpu")
  value, metrics = gaze.loss(outputs, fake_batch(16), config, {})
  assert float(value) == float(metrics["loss_diag"]) > 0


# --- eval hooks ------------------------------------------------------------------------


def test_eval_arrays_report_and_explain(small, tmp_path):
  config, net, variables, batch, out = small
  arrays = jax.tree.map(np.asarray, gaze.eval_arrays(out, batch, config))
  assert arrays["iou"].shape == (2, S, 2) and arrays["present"].shape == (2, S)
  assert arrays["pred_structure"].shape == (2, 2) and arrays["pred_area"].shape == (2, 2)
  result = gaze.report(arrays, config)
  assert 0.0 <= result["seg_map"] <= 1.0
  assert len(result["structure_confusion"]) == S
  images = np.zeros((2, 32, 32, 3), np.uint8)
  gaze.explain(jax.tree.map(np.asarray, out), batch, images, ["ISIC_1", "ISIC_2"], config,
               str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["ISIC_1_gaze.npz", "ISIC_1_gaze.png",
                                          "ISIC_2_gaze.npz", "ISIC_2_gaze.png"]
  saved = np.load(tmp_path / "ISIC_1_gaze.npz")
  assert saved["points"].shape == (2, 2) and saved["masks"].shape == (2, 32, 32)


def test_gaze_points_are_attention_argmax_in_pixels():
  attention = np.zeros((2, 4, 4))
  attention[0, 1, 2] = 1
  attention[1, 3, 0] = 1
  np.testing.assert_allclose(gaze.gaze_points(attention, (32, 32)), [[12, 20], [28, 4]])
