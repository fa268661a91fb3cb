"""Structure balancing: the thesis's Table 2 from its Table 1, and mini-batch balancing."""

import jax.numpy as jnp
import numpy as np
import pytest

from dermjax.models.gaze import balancing

TABLE1 = [2000, 2000, 1131, 126, 573, 116]  # lesion, skin, pigment, negative, milia, streaks


def test_table2_presence_others_eq15():
  w = balancing.presence_others_weights(TABLE1)
  np.testing.assert_array_equal(np.round(w, 3), [0.133, 0.133, 0.162, 0.196, 0.181, 0.196])
  assert w.sum() == pytest.approx(1.0)


def test_table2_presence_inverse_eq16():
  """Five of six entries agree to 3 decimals. Negative network: eq. 16 on Table 1 gives
  0.39316 (no integer presence gives [0.3935, 0.3945)); the thesis prints 0.394 (its row
  sums to 1.001), so that entry is checked to within one unit of the third decimal."""
  w = balancing.presence_inverse_weights(TABLE1)
  table2 = np.array([0.025, 0.025, 0.044, 0.394, 0.086, 0.427])
  exact = np.array([1, 1, 1, 0, 1, 1], bool)
  np.testing.assert_array_equal(np.round(w, 3)[exact], table2[exact])
  assert abs(w[3] - table2[3]) < 0.001
  assert w[3] == pytest.approx(0.39316, abs=1e-5)
  assert w.sum() == pytest.approx(1.0)


def test_structure_weights_modes():
  np.testing.assert_allclose(balancing.structure_weights(TABLE1, "presence_inverse"),
                             balancing.presence_inverse_weights(TABLE1), rtol=1e-6)
  np.testing.assert_array_equal(balancing.structure_weights(TABLE1, "none"), np.ones(6))
  np.testing.assert_array_equal(balancing.structure_weights(TABLE1, "batch"), np.ones(6))
  with pytest.raises(ValueError, match="config.loss.balancing"):
    balancing.structure_weights(TABLE1, "inverse")
  with pytest.raises(ValueError, match="presences"):
    balancing.presence_others_weights([3])


def test_never_present_structure_gets_zero_inverse_weight():
  w = balancing.presence_inverse_weights([10, 10, 0, 5])
  assert w[2] == 0 and w.sum() == pytest.approx(1.0)


def test_batch_balancing_averages_per_structure_means():
  matched = jnp.array([[1, 1, 0], [1, 0, 0], [1, 0, 1]], bool)  # structure 0 three times
  w = balancing.pair_weights(matched, jnp.ones(3), "batch")
  np.testing.assert_allclose(np.asarray(w), [[1 / 3, 1, 0], [1 / 3, 0, 0], [1 / 3, 0, 1]])
  terms = jnp.array([[0.3, 0.8, 9.0], [0.6, 9.0, 9.0], [0.9, 9.0, 0.2]])
  mean = float(jnp.sum(w * terms) / jnp.sum(w))
  assert mean == pytest.approx((0.6 + 0.8 + 0.2) / 3)  # mean over structures of their means


def test_batch_balancing_ignores_invalid_examples():
  matched = jnp.array([[1, 1], [1, 0]], bool)
  w = balancing.pair_weights(matched, jnp.ones(2), "batch", example_weights=jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(np.asarray(w), [[1, 1], [0, 0]])


def test_presence_weights_per_pair():
  matched = jnp.array([[1, 0, 1]], bool)
  w = balancing.pair_weights(matched, jnp.array([0.5, 0.2, 0.3]), "presence_others")
  np.testing.assert_allclose(np.asarray(w), [[0.5, 0, 0.3]])


@pytest.mark.parametrize("mode,weights", [("presence_others", balancing.presence_others_weights),
                                          ("presence_inverse", balancing.presence_inverse_weights)])
def test_eqs_15_16_loss_with_only_lesion_and_skin_by_hand(mode, weights):
  """Two images with only lesion and skin present, T = 2: the thesis multiplies each matched
  pair's loss by its structure weight and averages over the 4 pairs. (The former
  sum(w l) / sum(w) cancelled the weights here, since w_lesion = w_skin on Table 1.)"""
  from dermjax.models import gaze  # pylint: disable=g-import-not-at-top
  s, size = 6, 4
  gt = np.zeros((2, size, size, s), np.float32)
  gt[:, :2, :, 0] = 1                           # lesion: top half
  gt[:, 2:, :, 1] = 1                           # skin: bottom half
  pred = np.zeros((2, 2, size, size), np.float32)
  pred[0, 0, :2] = 0.8                          # image 0: step 0 ~ lesion, step 1 ~ skin
  pred[0, 1, 2:] = 0.6
  pred[1, 0, 2:] = 0.9                          # image 1: step 0 ~ skin, step 1 ~ lesion
  pred[1, 1, :2] = 0.5
  pred[1, 1, 2, 0] = 0.5                        # one pixel of spill
  valid = np.zeros((2, s), bool)
  valid[:, :2] = True
  w = weights(TABLE1).astype(np.float32)

  def soft_iou(p, m):   # eq. 10 with the port's eps, written out
    inter = (p * m).sum()
    return (inter + 1e-6) / (p.sum() + m.sum() - inter + 1e-6)

  seg = [1 - soft_iou(pred[0, 0], gt[0, ..., 0]), 1 - soft_iou(pred[0, 1], gt[0, ..., 1]),
         1 - soft_iou(pred[1, 1], gt[1, ..., 0]), 1 - soft_iou(pred[1, 0], gt[1, ..., 1])]
  want = (w[0] * seg[0] + w[1] * seg[1] + w[0] * seg[2] + w[1] * seg[3]) / 4
  logits = jnp.zeros((2, 2, s))
  l_seg, l_class, assign = gaze.structure_loss(
      jnp.asarray(pred), logits, jnp.asarray(gt), jnp.asarray(valid), class_weights=jnp.asarray(w),
      balancing_mode=mode, matcher="device")
  np.testing.assert_array_equal(np.asarray(assign)[:, :2], [[0, 1], [1, 0]])
  assert float(l_seg) == pytest.approx(want, rel=1e-5)
  assert float(l_class) == pytest.approx((2 * w[0] + 2 * w[1]) / 4 * np.log(s), rel=1e-5)
  assert float(l_seg) != pytest.approx(np.mean(seg), rel=1e-3)   # the weights do not cancel


def test_balanced_mean_batch_mode_is_unchanged():
  matched = jnp.array([[1, 1, 0], [1, 0, 0]], bool)
  terms = jnp.array([[0.2, 0.4, 9.0], [0.6, 9.0, 9.0]])
  got = balancing.balanced_mean(terms, matched, jnp.ones(3), "batch")
  assert float(got) == pytest.approx(((0.2 + 0.6) / 2 + 0.4) / 2)
  got = balancing.balanced_mean(terms, matched, jnp.array([0.5, 2.0, 1.0]), "presence_others")
  assert float(got) == pytest.approx((0.5 * 0.2 + 2.0 * 0.4 + 0.5 * 0.6) / 3)
