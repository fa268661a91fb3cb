"""CIN (dermjax.models.cin, configs/cin.py): eqs. 1-6 by hand, pairs, frozen stage 1, the
test-time summation, the auxiliary L1, the stage-1 -> stage-2 graft and 448 px shapes."""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from dermjax import config_lib, input_pipeline, optim, steps, weights
from dermjax.data import loader
from dermjax.metrics import segmentation
from dermjax.models import cin
from dermjax.models.cin import lesion

import batches  # tests/ is on sys.path.
from flax_helpers import random_variables

TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "cin.py")
SIZE = 32


def cin_config(row):
  config = config_lib.load_config(TABLE, row)
  config.data.image_size = config.data.resize_size = SIZE
  return config


def flat(tree):
  return traverse_util.flatten_dict(flax.core.unfreeze(tree))


def init(module, batch, seed=0):
  """Random variables of `module` for `batch` (shapes by jax.eval_shape: no init compile)."""
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1), "sample": jax.random.key(2)}
  shapes = jax.eval_shape(lambda b: module.init(rngs, b, train=False), batch)
  return flax.core.unfreeze(random_variables(shapes, seed))


def test_eq1_spatial_normalisation_by_hand():
  fhat = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
  q = np.asarray(cin.spatial_normalize(fhat, eps=0.0))[0, ..., 0]
  np.testing.assert_allclose(q, [[0.1, 0.2], [0.3, 0.4]], rtol=1e-6)
  rng = np.random.default_rng(0)
  fhat = jnp.asarray(np.maximum(rng.normal(size=(3, 4, 5, 1)), 0), jnp.float32)
  np.testing.assert_allclose(np.sum(np.asarray(cin.spatial_normalize(fhat)), axis=(1, 2)), 1.0, rtol=1e-5)
  # All-zero F^ (ReLU dead): the uniform map, not NaN.
  np.testing.assert_allclose(cin.spatial_normalize(jnp.zeros((1, 2, 2, 1))), 0.25, rtol=1e-6)


def test_eq2_correlation_by_hand():
  f1 = jnp.array([[[1.0], [0.0]]])        # M = 2 positions, C' = 1
  f2 = jnp.array([[[2.0], [1.0]]])
  # F~ = F' F''^T = [[2, 1], [0, 0]]; P = exp(F~) / sum of all four exp entries (eq. 2).
  e = np.exp([[2.0, 1.0], [0.0, 0.0]])
  np.testing.assert_allclose(cin.correlation_map(f1, f2, "global")[0], e / e.sum(), rtol=1e-6)
  np.testing.assert_allclose(cin.correlation_map(f1, f2, "row")[0], e / e.sum(1, keepdims=True), rtol=1e-6)
  assert float(jnp.sum(cin.correlation_map(f1, f2))) == pytest.approx(1.0)
  # Eq. 3 with P * F: out = F + beta P F (Q absent).
  f = jnp.arange(8.0).reshape(1, 1, 2, 4)
  p = cin.correlation_map(f1, f2)
  out = cin.combine(f, None, p, 0.0, 0.5)
  np.testing.assert_allclose(out[0, 0], np.asarray(f[0, 0]) + 0.5 * (e / e.sum()) @ np.asarray(f[0, 0]),
                             rtol=1e-5)


def test_attention_module_eq3_and_identity_at_zero():
  f = jax.random.normal(jax.random.key(0), (2, 3, 4, 16))
  module = cin.LesionFeatureAttention(reduction=4)
  variables = flax.core.unfreeze(module.init(jax.random.key(1), f))
  out, maps = module.apply(variables, f)
  np.testing.assert_array_equal(out, f)            # alpha = beta = 0 (their init): the identity.
  variables["params"]["alpha"], variables["params"]["beta"] = jnp.float32(0.7), jnp.float32(-1.3)
  out, maps = module.apply(variables, f)
  q, p = np.asarray(maps["q"]), np.asarray(maps["p"])
  assert q.shape == (2, 3, 4) and p.shape == (2, 12, 12)
  np.testing.assert_allclose(q.sum(axis=(1, 2)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(p.sum(axis=(1, 2)), 1.0, rtol=1e-5)
  fn = np.asarray(f)
  expected = fn + 0.7 * q[..., None] * fn - 1.3 * np.einsum("bmn,bnc->bmc", p, fn.reshape(2, 12, 16)).reshape(fn.shape)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def d_model():
  """The D row (two branches + distinguish) at SIZE px: (module, variables, 6-image batch)."""
  module = cin.build(cin_config("D"))
  label = np.array([0, 1, 1, 0, 1, 0], np.int32)
  image = np.random.default_rng(0).normal(size=(6, SIZE, SIZE, 3))
  batch = batches.model_batch(6, SIZE, label=label, image=image)
  return module, init(module, batch), batch


def test_pairs_from_the_sample_rng_and_a_fixed_shift_at_eval(d_model):
  module, variables, batch = d_model
  label = np.asarray(batch["label"])
  key = jax.random.key(7)
  out, _ = module.apply(variables, batch, train=True, mutable=["batch_stats"],
                        rngs={"dropout": jax.random.key(8), "sample": key})
  perm = np.asarray(out["pair_perm"])
  assert sorted(perm) == list(range(6)) and not np.any(perm == np.arange(6))
  again, _ = module.apply(variables, batch, train=True, mutable=["batch_stats"],
                          rngs={"dropout": jax.random.key(9), "sample": key})
  np.testing.assert_array_equal(again["pair_perm"], perm)     # drawn from "sample" only.
  np.testing.assert_array_equal(cin.same_class(jnp.asarray(label), out["pair_perm"]),
                                (label == label[perm]).astype(np.float32))
  evaluated = module.apply(variables, batch, train=False)
  np.testing.assert_array_equal(evaluated["pair_perm"], [1, 2, 3, 4, 5, 0])


def test_training_pairs_are_uniform_derangements():
  """No image is paired with itself, for any batch size; for B = 4 the 9 derangements come
  about equally often (a permutation would also give the 15 with a fixed point)."""
  draw = jax.jit(jax.vmap(cin.pair_permutation, in_axes=(0, None)), static_argnums=1)
  for size in (2, 3, 5, 8, 33):
    perms = np.asarray(draw(jax.random.split(jax.random.key(size), 200), size))
    assert np.all(np.sort(perms, axis=1) == np.arange(size))
    assert not np.any(perms == np.arange(size)), size
  perms = np.asarray(draw(jax.random.split(jax.random.key(0), 4500), 4))
  _, counts = np.unique(perms, axis=0, return_counts=True)
  assert len(counts) == 9 and counts.min() > 400 and counts.max() < 600, counts   # 500 each
  np.testing.assert_array_equal(cin.pair_permutation(jax.random.key(0), 1), [0])


def test_evaluation_distinguish_loss_on_real_pairs(d_model):
  """At evaluation the pair labels are those of the shifted pairs (not all ones), and a pair
  of an image with itself (B = 1) is left out."""
  module, variables, batch = d_model
  config = cin_config("D")
  out = module.apply(variables, batch, train=False)
  label = np.asarray(batch["label"])
  target = (label == np.roll(label, -1)).astype(np.float32)
  assert 0 < target.sum() < len(target)
  _, aux = cin.loss(out, batch, config, {})
  bce = np.mean(np.asarray(optax_bce(out["pair_logit"], target)))
  np.testing.assert_allclose(aux["distinguish"], bce, rtol=1e-5)
  single = {k: v[:1] for k, v in batch.items()}
  _, aux = cin.loss(module.apply(variables, single, train=False), single, config, {})
  assert float(aux["distinguish"]) == 0.0


def optax_bce(logits, labels):
  return np.logaddexp(0, np.asarray(logits)) - np.asarray(logits) * labels


def test_alpha_and_beta_in_the_loss_metrics():
  """Eq. 3's alpha, beta (both branches with D) are logged."""
  config = cin_config("F")
  config.model.use_distinguish = True
  module = cin.build(config)
  batch = batches.model_batch(2, SIZE, label=np.array([0, 1], np.int32))
  variables = init(module, batch)
  params = variables["params"]
  for branch, name, value in (("a", "alpha", 0.25), ("a", "beta", 0.0), ("b", "alpha", 0.0),
                              ("b", "beta", -0.5)):
    params[f"branch_{branch}"]["attention"][name] = jnp.float32(value)
  out = module.apply(variables, batch, train=False)
  _, aux = cin.loss(out, batch, config, {})
  assert {k: float(aux[k]) for k in ("alpha", "beta", "alpha_b", "beta_b")} == {
      "alpha": 0.25, "beta": 0.0, "alpha_b": 0.0, "beta_b": -0.5}
  _, aux = cin.loss(cin.build(cin_config("D")).apply(
      init(cin.build(cin_config("D")), batch), batch, train=False), batch, cin_config("D"), {})
  assert "alpha" not in aux


def test_test_time_sum_of_branch_probabilities():
  la, lb = jnp.array([[0.3, -1.0], [2.0, 0.5]]), jnp.array([[1.0, 1.0], [-0.5, 0.2]])
  p = (np.asarray(jax.nn.softmax(la)) + np.asarray(jax.nn.softmax(lb))) / 2
  np.testing.assert_allclose(jax.nn.sigmoid(cin.summed_logits(la, lb))[:, 0], p[:, 1], rtol=1e-5)
  la3, lb3 = jnp.array([[0.3, -1.0, 2.0]]), jnp.array([[1.0, 0.0, -2.0]])
  p3 = (np.asarray(jax.nn.softmax(la3)) + np.asarray(jax.nn.softmax(lb3))) / 2
  np.testing.assert_allclose(jax.nn.softmax(cin.summed_logits(la3, lb3, 3)), p3, rtol=1e-5)


def test_evaluated_model_sums_its_branches(d_model):
  """Both branches read the same image at evaluation; logits = their summed probabilities
  (class_logits_b are branch b's of the partners, image i + 1)."""
  module, variables, batch = d_model
  out = module.apply(variables, batch, train=False)
  pa = jax.nn.softmax(out["class_logits_a"])
  pb = jax.nn.softmax(np.roll(np.asarray(out["class_logits_b"]), 1, axis=0))
  assert not np.allclose(pa, pb)   # two branches with their own weights.
  np.testing.assert_allclose(jax.nn.sigmoid(out["logits"])[:, 0], (pa[:, 1] + pb[:, 1]) / 2, rtol=1e-5)


def test_weighted_ce_and_distinguish_loss_by_hand():
  config = cin_config("D")
  label = jnp.array([0, 1, 1])
  la = jnp.array([[0.0, 1.0], [2.0, 0.0], [0.5, 0.5]])
  lb = jnp.array([[1.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
  perm = jnp.array([2, 0, 1])
  pair = jnp.array([0.3, -0.2, 1.0])
  valid = jnp.array([1.0, 1.0, 0.0])   # the third row is padding.
  w = np.array([0.5, 2.0])
  out = {"class_logits_a": la, "class_logits_b": lb, "pair_perm": perm, "pair_logit": pair}
  total, aux = cin.loss(out, {"label": label, "valid": valid}, config, {"class_weights": w})
  ls = lambda x: np.asarray(jax.nn.log_softmax(x))
  ce_a = [-w[0] * ls(la)[0, 0], -w[1] * ls(la)[1, 1]]
  # branch b row i reads image perm[i] with its label: images 2 (padding), 0 (label 0), 1 (label 1).
  ce_b = [-w[0] * ls(lb)[1, 0], -w[1] * ls(lb)[2, 1]]
  np.testing.assert_allclose(aux["classification"], np.sum(ce_a + ce_b) / 4, rtol=1e-5)
  # Only pair 1 (images 1 and 0: different classes) has two real images.
  bce = np.log1p(np.exp(-0.2))
  np.testing.assert_allclose(aux["distinguish"], bce, rtol=1e-5)
  np.testing.assert_allclose(total, aux["classification"] + config.loss.distinguish_weight * bce, rtol=1e-5)


def test_class_weights_from_stats_and_target_alias():
  stats = {"splits": {"train": {"num_images": 10, "melanoma": 2, "keratosis": 4,
                                "class_counts": [4, 2, 4]}}}
  assert cin.train_class_counts(stats, "seborrheic_keratosis", 1) == [6, 4]
  assert cin.train_class_counts(stats, "keratosis", 1) == [6, 4]
  assert cin.train_class_counts(stats, "melanoma", 2) == [8, 2]
  assert cin.train_class_counts(stats, "multiclass", 3) == [4, 2, 4]
  np.testing.assert_allclose(cin.class_weights([8, 2]), [10 / 16, 10 / 4])
  np.testing.assert_allclose(cin.class_weights([8, 2], "none"), [1, 1])
  record = {"melanoma": 0, "keratosis": 1, "label": 2}
  assert loader.target_label(record, "seborrheic_keratosis") == 1
  assert loader.target_label(record, "keratosis") == 1
  assert (input_pipeline.class_names("isic2017", "seborrheic_keratosis")
          == input_pipeline.class_names("isic2017", "keratosis") == ("other", "seborrheic_keratosis"))
  with pytest.raises(ValueError):
    cin.class_weights([1, 2], "inverse")


def test_segmentation_metrics_by_hand():
  pred = np.zeros((3, 4, 4))
  target = np.zeros((3, 4, 4))
  pred[0, :2, :2] = 1; target[0, :2, :] = 1          # J = 4 / 8 = 0.5 -> 0 when thresholded
  pred[1, :3, :3] = 1; target[1, :3, :2] = 1         # J = 6 / 9
  pred[2, :, :] = 1; target[2, :, :] = 1             # J = 1
  inter, union = segmentation.pixel_counts(pred, target)
  np.testing.assert_array_equal(inter, [4, 6, 16])
  np.testing.assert_array_equal(union, [8, 9, 16])
  assert segmentation.mean_jaccard(inter, union) == pytest.approx((0.5 + 6 / 9 + 1) / 3)
  assert segmentation.thresholded_jaccard(inter, union) == pytest.approx((0 + 6 / 9 + 1) / 3)
  assert segmentation.mean_jaccard([0], [0]) == 1.0            # both empty: a match.
  assert np.isnan(segmentation.thresholded_jaccard([], []))


def test_aux_l1_zero_for_equal_boxes_and_differentiable_in_the_map():
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.normal(size=(2, SIZE, SIZE, 3)), jnp.float32)
  gt = jnp.zeros((2, SIZE, SIZE)).at[:, 8:24, 4:20].set(1.0)
  box = jnp.array([[0.25, 0.125, 0.75, 0.625]] * 2)
  other = jnp.array([[0.0, 0.0, 0.5, 0.5]] * 2)
  auxiliary = lesion.LesionAttention.auxiliary
  for aux_input, lesion_map in (("image", jnp.full((2, SIZE, SIZE), 0.3)), ("masked", gt)):
    module = lesion.LesionAttention(aux_input=aux_input, aux_size=16, aux_features=(4, 8))
    variables = module.init(jax.random.key(0), image, lesion_map, gt, box, box, method=auxiliary)

    @jax.jit
    def l1(m, b):
      feats = module.apply(variables, image, m, gt, b, box, method=auxiliary)
      return lesion.aux_l1({f"aux_{s}_{k}": v for k, pair in enumerate(feats)
                            for s, v in zip(("pred", "gt"), pair)})

    np.testing.assert_allclose(l1(lesion_map, box), 0.0, atol=1e-7)
    assert np.all(l1(lesion_map, other) > 1e-4)
  # "masked": the L1 reaches the predicted map (a box alone carries no gradient).
  grad = jax.grad(lambda m: jnp.sum(l1(m, box)))(gt * 0.5)
  assert float(jnp.max(jnp.abs(grad))) > 0


def test_stage1_loss_ignores_images_without_masks():
  config = cin_config("lesion_attention")
  logits = jnp.zeros((2, 4, 4, 2)).at[1, ..., 1].set(5.0)
  masks = jnp.ones((2, 4, 4, 1))
  batch = {"masks": masks, "has_lesion_mask": jnp.array([1.0, 0.0]), "valid": jnp.ones(2)}
  total, aux = lesion.loss({"lesion_logits": logits}, batch, config, {})
  assert float(total) == pytest.approx(np.log(2.0), rel=1e-6)     # image 0 only: uniform softmax.
  arrays = {"seg_intersection": np.array([4.0, 0.0]), "seg_union": np.array([5.0, 9.0]),
            "has_lesion_mask": np.array([1.0, 0.0])}
  assert lesion.report(arrays, config) == {"jaccard": 0.8, "thresholded_jaccard": 0.8, "num_masks": 1}


def test_stage1_graft_and_frozen_stage1():
  stage1_config = cin_config("lesion_attention")
  batch = batches.host_batch(2, SIZE)
  stage1 = lesion.build(stage1_config)
  model_batch = batches.model_batch(2, SIZE)
  stage1_vars = init(stage1, model_batch, seed=1)   # "trained": other values than `fresh`.

  config = cin_config("A+F+D")
  module = cin.build(config)
  fresh = init(module, model_batch)
  grafted = weights.graft(fresh, stage1_vars, config.model.pretrained_targets.to_dict())
  for collection in ("params", "batch_stats"):
    got, want = flat(grafted[collection]["lesion_attention"]), flat(stage1_vars[collection])
    assert set(got) == {k for k in want if not k[0].startswith("aux_block")}
    for k, v in got.items():
      np.testing.assert_array_equal(v, want[k])
    for branch in ("branch_a", "branch_b"):
      backbone, encoder = flat(grafted[collection][branch]["backbone"]), flat(stage1_vars[collection]["encoder"])
      assert backbone.keys() == encoder.keys()
      for k, v in backbone.items():
        np.testing.assert_array_equal(v, encoder[k])
  np.testing.assert_array_equal(flat(grafted["params"]["distinguish"])[("fc2", "kernel")],
                                flat(fresh["params"]["distinguish"])[("fc2", "kernel")])

  # The distinguish loss (L_c weighted 0) through dermjax.optim's groups: stage 1 (group
  # "stage1", rate 0) is masked out of training, gets exactly zero gradient and no update.
  mask = optim.trainable_mask(grafted["params"], config.optim)
  assert not any(jax.tree.leaves(mask["lesion_attention"]))
  assert all(jax.tree.leaves(mask["distinguish"])) and all(jax.tree.leaves(mask["branch_a"]))
  stats = {"class_weights": np.zeros(2, np.float32)}
  mean, std = np.full(3, 128.0, np.float32), np.full(3, 64.0, np.float32)
  batch.update(image=np.random.default_rng(1).integers(0, 255, (2, SIZE, SIZE, 3), np.uint8),
               label=np.array([0, 1], np.int32))
  tx = optim.create_optimizer(config.optim, grafted["params"], steps_per_epoch=1)

  @jax.jit
  def update(params, batch_stats, batch):
    prep = steps.preprocess(batch, jax.random.key(3), config, mean, std, train=True)

    def distinguish_loss(params):
      out, _ = module.apply({"params": params, "batch_stats": batch_stats}, prep, train=True,
                            mutable=["batch_stats"],
                            rngs={"dropout": jax.random.key(4), "sample": jax.random.key(5)})
      total, aux = cin.loss(out, prep, config, stats)
      return total, aux

    (total, aux), grads = jax.value_and_grad(distinguish_loss, has_aux=True)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return total, aux, grads, updates

  total, aux, grads, updates = update(grafted["params"], grafted["batch_stats"], batch)
  assert float(aux["classification"]) == 0.0 and float(total) == pytest.approx(float(aux["distinguish"]))
  for tree in (grads, updates):
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(tree["lesion_attention"]))
    assert any(float(jnp.max(jnp.abs(g))) > 0.0 for g in jax.tree.leaves(tree["distinguish"]))


@pytest.mark.parametrize("row", ["lesion_attention", "cin"])
def test_paper_scale_shapes_at_448(row):
  config = config_lib.load_config(TABLE, f"{row},paper")
  assert config.data.image_size == 448
  model_lib = cin if config.model.name == "cin" else lesion
  module = model_lib.build(config)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
           for k, v in batches.model_batch(2, 8).items()}
  batch = {k: jax.ShapeDtypeStruct((2, 448, 448) + v.shape[3:], v.dtype) if v.ndim == 4 else v
           for k, v in batch.items()}
  rngs = {n: jax.random.key(i) for i, n in enumerate(("params", "dropout", "sample"))}

  def forward(batch):
    variables = module.init(rngs, batch, train=False)
    out, _ = module.apply(variables, batch, train=True, mutable=["batch_stats"],
                          rngs={"dropout": rngs["dropout"], "sample": rngs["sample"]})
    return out

  out = jax.eval_shape(forward, batch)
  if row == "cin":
    assert out["q"].shape == (2, 14, 14)              # ResNet-18 layer4 at 448 px: M = 196.
    assert out["logits"].shape == (2, 1) and out["pair_logit"].shape == (2,)
    assert out["crop_box"].shape == (2, 4) and out["lesion_map"].shape == (2, 448, 448)
  else:
    assert out["lesion_logits"].shape == (2, 448, 448, 2) and "logits" not in out
    assert out["aux_pred_1"].shape == (2, 28, 28, 64)


def test_table_rows():
  for row, (a, f, d) in {"baseline": (0, 0, 0), "A": (1, 0, 0), "F": (0, 1, 0), "D": (0, 0, 1),
                         "A+F": (1, 1, 0), "A+F+D": (1, 1, 1), "cin": (1, 1, 1)}.items():
    m = config_lib.load_config(TABLE, row).model
    assert (m.use_lesion, m.use_attention, m.use_distinguish) == (a, f, d), row
  assert config_lib.load_config(TABLE, "cin,isic2016").data.target == "melanoma"
  assert config_lib.load_config(TABLE, "A,paper").data.target == "seborrheic_keratosis"
  assert config_lib.load_config(TABLE, "A").data.target == "melanoma"   # CPU: the synthetic label.
  stage1 = config_lib.load_config(TABLE, "lesion_attention")
  assert stage1.model.name == "cin_lesion" and stage1.train.checkpoint_metric == "validation/report/jaccard"


def test_explanations_written_per_image(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (2, SIZE, SIZE, 3), np.uint8)
  masks = np.zeros((2, SIZE, SIZE, 6), np.uint8)
  masks[:, 8:20, 8:24, 0] = 1
  batch = {"masks": masks, "has_lesion_mask": np.array([1.0, 0.0], np.float32)}
  box = np.array([[0.25, 0.25, 0.625, 0.75]] * 2, np.float32)
  outputs = {"logits": np.array([[0.3], [-2.0]]), "lesion_map": rng.random((2, SIZE, SIZE)),
             "crop_box": box, "q": rng.random((2, 4, 4))}
  cin.explain(outputs, batch, images, ["a", "b"], None, str(tmp_path / "cin"))
  assert sorted(os.listdir(tmp_path / "cin")) == sorted(
      f"{i}{s}" for i in "ab" for s in (".png", "_lesion_map.npy", "_box.npy", "_q.npy"))
  np.testing.assert_array_equal(np.load(tmp_path / "cin" / "a_q.npy"), outputs["q"][0].astype(np.float32))
  cin.explain({"logits": outputs["logits"]}, batch, images, ["a", "b"], None, str(tmp_path / "baseline"))
  assert sorted(os.listdir(tmp_path / "baseline")) == ["a.png", "b.png"]
  lesion.explain({"lesion_map": outputs["lesion_map"], "box": box}, batch, images, ["a", "b"], None,
                 str(tmp_path / "stage1"))
  assert len(os.listdir(tmp_path / "stage1")) == 6
  # The host crop of the explanation matches the model's on-device crop.
  from dermjax.models.cin.explain import crop_image  # pylint: disable=g-import-not-at-top
  from dermjax.models.common import crop  # pylint: disable=g-import-not-at-top
  device = np.asarray(crop.crop_and_resize(jnp.asarray(images[:1], jnp.float32), box[:1], SIZE))[0]
  assert np.mean(np.abs(crop_image(images[0], box[0], (SIZE, SIZE)) - device)) < 12
