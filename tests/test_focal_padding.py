"""focal_loss with padding rows (label -1, weight 0): finite, and equal to the loss of the
real rows alone (a NaN here made validation/loss NaN whenever a padding row's logit < -0.7)."""

import jax.numpy as jnp
import numpy as np

from dermjax import losses


def test_padding_rows_do_not_change_the_focal_loss():
  logits = jnp.array([[-3.0], [1.0], [0.2]])
  labels = jnp.array([-1, 1, 0])
  weights = jnp.array([0.0, 1.0, 1.0])
  got = losses.focal_loss(logits, labels, gamma=2.0, weights=weights)
  want = losses.focal_loss(logits[1:], labels[1:], gamma=2.0)
  assert np.isfinite(float(got))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  multi = losses.focal_loss(jnp.array([[9.0, -9.0], [0.1, 0.3]]), jnp.array([-1, 1]), gamma=2.0,
                            weights=jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(float(multi), float(losses.focal_loss(
      jnp.array([[0.1, 0.3]]), jnp.array([1]), gamma=2.0)), rtol=1e-6)
