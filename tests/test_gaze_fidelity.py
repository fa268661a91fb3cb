"""Gaze model against the thesis and its code (issue 10): the structure head's pool and
activation, Deco_GAP_17's diagnosis input, the encoder's BN in training mode under frozen
weights (through the trainer's own step), and the presence weights from a prepared dataset."""

import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dermjax import config_lib
from dermjax.data import schema
from dermjax.models import gaze
from dermjax.models.backbones.vgg import VGGStages
from dermjax.models.gaze import balancing
from dermjax.models.gaze.model import StructureHead

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = schema.NUM_STRUCTURES


def small_config(variant="thesis", size=32, t=2):
  config = config_lib.load_config(os.path.join(REPO, "configs", "gaze.py"), variant)
  config.data.image_size = size
  config.data.batch_size = config.data.eval_batch_size = 2
  config.model.timesteps = t
  return config


def model_batch(size, batch=2, seed=0):
  """A model batch (after device_preprocess) from profile_step's host batch, so its keys
  follow the input pipeline's."""
  host = load_profile_step().synthetic_host_batch(small_config(size=size), batch, seed=seed)
  out = dict(host)
  out["image"] = jnp.asarray(host["image"], jnp.float32) / 255.0
  out["masks"] = jnp.asarray(host["masks"], jnp.float32)
  return out


def load_profile_step():
  spec = importlib.util.spec_from_file_location("profile_step_for_tests",
                                                os.path.join(REPO, "scripts", "profile_step.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def init_and_capture(net, batch):
  """(variables, outputs, {"intermediates": every submodule's output}); not jitted (compiling
  costs more than running once at these sizes)."""
  variables = net.init(jax.random.key(0), batch)
  out, state = net.apply(variables, batch, capture_intermediates=True, mutable=["intermediates"])
  return variables, out, state


# --- structure head: pool and activation ---------------------------------------------------


@pytest.mark.parametrize("activation", ["none", "relu"])
def test_structure_head_by_hand(activation):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 12)), jnp.float32)
  head = StructureHead(S, activation)
  params = head.init(jax.random.key(1), x)["params"]
  got = np.asarray(head.apply({"params": params}, x))
  p = jax.tree.map(np.asarray, params)
  hidden = np.asarray(x) @ p["dense1"]["kernel"] + p["dense1"]["bias"]
  assert p["dense1"]["kernel"].shape == (12, 6)
  if activation == "relu":
    hidden = np.maximum(hidden, 0)
  want = hidden @ p["dense2"]["kernel"] + p["dense2"]["bias"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.any(hidden < 0) or activation == "relu"   # the two differ on this input


def test_structure_pool_max_and_no_activation_by_hand():
  """Thesis code's head (max pool, two linear layers): first block's pool = max over space
  of (H_t + pool3) / 2, and structure logits = the two affine maps of the pools."""
  config = small_config(size=16)   # the decoder only: pool5 (empty at 16 px) is not read.
  config.model.structure_pool = "max"
  config.model.structure_hidden_activation = "none"
  net = gaze.build(config)
  batch = model_batch(16)
  variables, out, state = init_and_capture(net, batch)
  inter = state["intermediates"]
  hs = np.asarray(inter["attentive_convlstm"]["__call__"][0][0])          # [T, B, h, w, F]
  pool3 = np.asarray(inter["encoder"]["__call__"][0]["pool3"])            # [B, h, w, F]
  pools = np.asarray(inter["decoder"]["__call__"][0][1])                  # [B*T, 448]
  t, b = hs.shape[:2]
  block1 = (np.moveaxis(hs, 0, 1) + pool3[:, None]) / 2                   # [B, T, h, w, F]
  np.testing.assert_allclose(pools[:, :256], block1.max(axis=(2, 3)).reshape(b * t, -1),
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(pools[:, :256], block1.mean(axis=(2, 3)).reshape(b * t, -1))
  p = jax.tree.map(np.asarray, variables["params"]["structure_head"])
  want = (pools @ p["dense1"]["kernel"] + p["dense1"]["bias"]) @ p["dense2"]["kernel"] + p["dense2"]["bias"]
  np.testing.assert_allclose(np.asarray(out["structure_logits"]).reshape(b * t, S), want,
                             rtol=1e-4, atol=1e-5)


# --- Deco_GAP_17: blocks 4-5 on X' ------------------------------------------------------------


@pytest.mark.parametrize("diagnosis_input", ["attended", "encoder"])
def test_diagnosis_input(diagnosis_input):
  config = small_config("deco_gap_17")
  assert config.model.diagnosis_input == "encoder" and config.model.step_dim == 256
  config.model.diagnosis_input = diagnosis_input
  net = gaze.build(config)
  batch = model_batch(32)
  variables, out, state = init_and_capture(net, batch)
  inter = state["intermediates"]
  x = inter["encoder"]["__call__"][0]["pool3"]                            # X'
  if diagnosis_input == "attended":
    x = out["attention"][:, -1, :, :, None] * x                           # X~_{T-1}
  blocks = VGGStages(blocks=(4, 5), batch_norm=True, frozen_bn=False)
  want = blocks.apply({k: v["diagnosis_vgg"] for k, v in variables.items()}, x)["pool5"]
  got = inter["diagnosis_vgg"]["__call__"][0]["pool5"]
  assert got.shape == (2, 1, 1, 512)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  head = variables["params"]["diagnosis_head"]
  assert head["step_reduce"]["kernel"].shape == (2 * 256, 256)
  assert head["fc"]["kernel"].shape == (512 + 256, 1)


# --- encoder BN in training mode, weights frozen (settings 1 and 4) -----------------------------


def test_frozen_encoder_with_training_bn_through_the_trainer_step():
  """skip_bn (setting 1) with the encoder at rate 0: one real train step leaves the encoder's
  weights bit-identical while its BN running statistics move; trainable parts change."""
  profile_step = load_profile_step()
  config = small_config("skip_bn")
  config.model.freeze_encoder = True
  config.optim.groups.encoder = (config.optim.groups.encoder[0], 0.0)
  assert not config.model.frozen_bn
  steps = profile_step.build_steps(config)
  state = steps["state"]
  before = jax.tree.map(np.array, (state.params, state.batch_stats))   # copies: state is donated
  new_state, metrics = steps["train_step"](state, steps["batch"])
  assert np.isfinite(float(metrics["loss"].compute()))
  params, stats = jax.tree.map(np.asarray, (new_state.params, new_state.batch_stats))
  for a, b in zip(jax.tree.leaves(before[0]["encoder"]), jax.tree.leaves(params["encoder"])):
    np.testing.assert_array_equal(a, b)
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[1]["encoder"]),
                                                    jax.tree.leaves(stats["encoder"]))]
  assert all(moved), "every encoder BN mean/var moves with batch statistics"
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[0]["decoder"]),
                                                     jax.tree.leaves(params["decoder"])))


def test_frozen_bn_keeps_encoder_statistics():
  """Setting 2 (frozen_bn): the encoder's BN reads ImageNet statistics, which stay put."""
  config = small_config("skip_frozenbn", size=16)
  config.model.frozen_bn = True
  net = gaze.build(config)
  batch = model_batch(16)
  variables = net.init(jax.random.key(0), batch)
  _, new = net.apply(variables, batch, train=True, mutable=["batch_stats"],
                     rngs={"dropout": jax.random.key(1)})
  for a, b in zip(jax.tree.leaves(variables["batch_stats"]["encoder"]),
                  jax.tree.leaves(new["batch_stats"]["encoder"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_noskip_nobn_is_plain_vgg16():
  config = config_lib.load_config(os.path.join(REPO, "configs", "gaze.py"), "noskip_nobn,paper")
  assert (config.model.skips, config.model.batch_norm, config.model.pretrained_arch) == (
      False, False, "vgg16")
  net = gaze.build(config)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), model_batch(32))
  variables = jax.eval_shape(lambda b: net.init(jax.random.key(0), b), batch)
  assert "batch_stats" not in variables
  assert "bn1" not in variables["params"]["encoder"]["block1"]


# --- presence weights from a prepared dataset (the deco_gap_5 / _17 bug) ----------------------


@pytest.mark.parametrize("variant,fn", [("deco_gap_5", balancing.presence_inverse_weights),
                                        ("deco_gap_17", balancing.presence_others_weights)])
def test_presence_balancing_on_a_prepared_dataset(isic2017_prepared, variant, fn):
  from dermjax.data import prepare  # pylint: disable=g-import-not-at-top
  prepared = prepare.load(*isic2017_prepared)
  counts = prepared.stats["splits"]["train"]["structure_presence"]
  config = small_config(variant)
  stats = gaze.loss_stats(prepared.stats, config)
  want = fn([counts[name] for name in schema.STRUCTURES])
  np.testing.assert_allclose(stats["structure_weights"], want, rtol=1e-6)
  # ... and the structure loss runs on them.
  batch = model_batch(16)
  gt, valid = gaze.structure_targets(batch)
  masks = jax.random.uniform(jax.random.key(0), (2, 3, 16, 16))
  l_seg, l_class, _ = gaze.structure_loss(
      masks, jnp.zeros((2, 3, S)), gt, valid, class_weights=stats["structure_weights"],
      balancing_mode=config.loss.balancing, matcher=config.loss.matcher)
  assert np.isfinite(float(l_seg)) and float(l_class) > 0
