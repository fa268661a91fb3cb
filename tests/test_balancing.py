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
