"""dermjax.metrics.faithfulness against hand-worked maps: perfect, uniform, adversarial."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dermjax.metrics import faithfulness as F
from dermjax.models.common import crop


def _evidence():
  """[1, 8, 8]: the top-right 4 x 4 quadrant (area share 1/4)."""
  e = np.zeros((1, 8, 8), np.float32)
  e[0, :4, 4:] = 1
  return e


def _map(cells):
  m = np.zeros((1, 4, 4), np.float32)
  for (r, c), v in cells.items():
    m[0, r, c] = v
  return m


def test_evidence_at_block_means_and_resampling():
  e = np.zeros((1, 8, 8), np.float32)
  e[0, 0, 4:6] = 1                           # half of map cell (0, 2) at 4 x 4
  np.testing.assert_allclose(F.evidence_at(e, (4, 4))[0, 0], [0, 0, .5, 0])
  np.testing.assert_allclose(F.evidence_at(e, (4, 4)).sum(), .5)
  full = F.evidence_at(np.ones((1, 8, 8)), (3, 3))  # 3 does not divide 8: resampled
  np.testing.assert_allclose(full, 1, atol=1e-6)


def test_perfect_map():
  perfect = _map({(0, 2): 1, (0, 3): 1, (1, 2): 1, (1, 3): 1})
  assert float(F.pointing_game(perfect, _evidence(), 0)[0]) == 1
  share, chance = F.energy_share(perfect, _evidence())
  np.testing.assert_allclose([share[0], chance[0]], [1.0, .25])


def test_uniform_and_tied_maps_point_at_chance():
  uniform = np.ones((1, 4, 4), np.float32)
  share, chance = F.energy_share(uniform, _evidence())
  np.testing.assert_allclose([share[0], chance[0]], [.25, .25])
  # Every cell is a maximum, so the point is shared: the share of hit cells, = chance.
  # Evidence cells are rows 0-1 x cols 2-3 (4/16); dilated by 1: rows 0-2 x cols 1-3 (9/16).
  for tolerance, hits in ((0, 4 / 16), (1, 9 / 16), (2, 1.0)):
    np.testing.assert_allclose(F.pointing_game(uniform, _evidence(), tolerance), [hits])
    np.testing.assert_allclose(F.pointing_chance((4, 4), _evidence(), tolerance), [hits])
  # Two tied maxima, one on the evidence: half a point (the first in row-major order, the
  # evidence cell (0, 2), would have scored a whole one).
  tied = _map({(0, 2): 1, (3, 0): 1, (1, 1): .5})
  np.testing.assert_allclose(F.pointing_game(tied, _evidence(), 0), [.5])
  np.testing.assert_allclose(F.pointing_game(np.zeros((1, 4, 4)), _evidence(), 0), [.25])
  zero = np.zeros((1, 4, 4), np.float32)     # an all-zero map counts as uniform
  np.testing.assert_allclose(F.energy_share(zero, _evidence())[0], [.25])


def test_adversarial_and_mixed_maps():
  adversarial = _map({(3, 0): 5, (2, 1): 1})
  assert float(F.pointing_game(adversarial, _evidence(), 1)[0]) == 0
  np.testing.assert_allclose(F.energy_share(adversarial, _evidence())[0], [0.0])
  mixed = _map({(0, 2): 3, (3, 0): 1, (2, 0): -4})   # negative values do not count (ReLU)
  np.testing.assert_allclose(F.energy_share(mixed, _evidence())[0], [.75])
  # Max at (2, 1): one cell below the evidence's dilation by 1 (rows 0-2, cols 1-3) -> hit;
  # at (3, 1) it needs tolerance 2.
  assert float(F.pointing_game(_map({(2, 1): 1}), _evidence(), 1)[0]) == 1
  assert float(F.pointing_game(_map({(3, 1): 1}), _evidence(), 1)[0]) == 0
  assert float(F.pointing_game(_map({(3, 1): 1}), _evidence(), 2)[0]) == 1


def _deletion_setup():
  """4 x 4 one-channel images of ones; the "model" scores the mean of its evidence pixels
  (the top-left 2 x 2), so deleting them (fill 0) is all that lowers the score."""
  images = jnp.ones((1, 4, 4, 1))
  evidence = np.zeros((1, 4, 4), np.float32)
  evidence[0, :2, :2] = 1
  score = lambda x: (x[..., 0] * evidence).sum((1, 2)) / 4
  return images, evidence, score


def test_deletion_curves_hand_worked():
  images, evidence, score = _deletion_setup()
  fill = jnp.zeros((1, 1))
  curve = lambda m: F.deletion_curve(score, images, F.deletion_ranks(m, (4, 4)), fill, 4)
  # Perfect: the 4 evidence pixels go first (k = 1 deletes 4 of 16): [1, 0, 0, 0, 0].
  perfect = curve(evidence)
  np.testing.assert_allclose(perfect[0], [1, 0, 0, 0, 0], atol=1e-6)
  np.testing.assert_allclose(F.curve_auc(perfect)[0], .125)
  # Adversarial: evidence ranked last (12-15), gone only at k = 4: AUC (1+1+1+.5)/4.
  adversarial = curve(1 - evidence)
  np.testing.assert_allclose(adversarial[0], [1, 1, 1, 1, 0], atol=1e-6)
  np.testing.assert_allclose(F.curve_auc(adversarial)[0], .875)


def test_deletion_breaks_ties_without_a_spatial_bias():
  """A constant map's pixels are all tied: they go in a fixed pseudo-random order (the same
  every call), not top rows first as ranking by position did."""
  ranks = np.asarray(F.deletion_ranks(np.ones((2, 4, 4), np.float32), (16, 16)))
  np.testing.assert_array_equal(np.sort(ranks[0]), np.arange(256))
  np.testing.assert_array_equal(ranks[0], ranks[1])
  first = ranks[0].reshape(16, 16) < 64          # the first quarter deleted
  assert 0.1 < first[:4].mean() < 0.45, first[:4].mean()   # by position: 1.0


def test_deletion_metrics_share_the_curve_ends():
  images, evidence, score = _deletion_setup()
  batch = {"image": images, "masks": jnp.zeros((1, 4, 4, 6)), "has_lesion_mask": jnp.ones(1)}
  out = F.deletion_metrics({"good": evidence}, batch, score, steps=4)
  # An empty lesion mask: the fill is the whole image's mean colour (1), nothing changes ...
  np.testing.assert_allclose(out["good/deletion"], 1, atol=1e-6)
  # ... and with fill 0 the shared-ends curve equals the full one.
  ranks = F.deletion_ranks(evidence, (4, 4))
  full = F.deletion_curve(score, images, ranks, jnp.zeros((1, 1)), 4)
  ends = (score(images), score(jnp.zeros_like(images)))
  np.testing.assert_allclose(F.deletion_curve(score, images, ranks, jnp.zeros((1, 1)), 4, ends),
                             full, atol=1e-6)
  assert out["random/deletion"].shape == (1, 5)


def test_random_ranks_are_permutations_and_the_baseline_ends_where_it_starts():
  ranks = np.asarray(F.random_ranks(jax.random.PRNGKey(3), 2, (4, 4)))
  for row in ranks:
    np.testing.assert_array_equal(np.sort(row), np.arange(16))
  images, _, score = _deletion_setup()
  curve = F.deletion_curve(score, images, jnp.asarray(ranks[:1]), jnp.zeros((1, 1)), 4)
  np.testing.assert_allclose(np.asarray(curve)[0, [0, -1]], [1, 0], atol=1e-6)


def test_skin_colour_is_the_mean_outside_the_lesion():
  images = np.zeros((2, 4, 4, 3), np.float32)
  images[:, 1:3, 1:3] = 9.0                  # the lesion
  images[0, 0, 0] = 4.0                      # one odd skin pixel: mean (4 + 11 * 0) / 12
  lesion = np.zeros((2, 4, 4), np.float32)
  lesion[:, 1:3, 1:3] = 1
  colour = F.skin_colour(images, lesion, np.array([1.0, 0.0]))
  np.testing.assert_allclose(colour[0], [4 / 12] * 3, rtol=1e-6)
  np.testing.assert_allclose(colour[1], [0.0] * 3)    # no lesion mask: the image border


def test_batch_metrics_jit_and_summarize():
  images, evidence, score = _deletion_setup()
  images = jnp.concatenate([images, images])           # two examples
  evidence = np.concatenate([evidence, evidence])
  batch = {"image": images, "evidence_mask": evidence,
           "masks": jnp.zeros((2, 4, 4, 6)), "has_lesion_mask": jnp.zeros(2)}
  maps = {"good": jnp.asarray(evidence), "bad": jnp.asarray(1 - evidence)}
  score2 = lambda x: (x[..., 0] * evidence).sum((1, 2)) / 4
  out = jax.jit(lambda b, m: F.batch_metrics(m, b, score2, steps=4, tolerance=0))(batch, maps)
  assert out["good/deletion"].shape == (2, 5) and out["random/deletion"].shape == (2, 5)
  # The image border of ones is the fill colour here, so nothing changes when deleting.
  np.testing.assert_allclose(out["good/deletion"], 1, atol=1e-6)
  arrays = jax.tree.map(np.asarray, out)
  arrays["good/deletion"] = np.array([[1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], np.float32)
  summary = F.summarize(arrays, np.array([True, False]))
  assert summary["num_images"] == 1
  assert summary["good"]["pointing_game"] == 1 and summary["bad"]["pointing_game"] == 0
  assert summary["good"]["pointing_chance"] == pytest.approx(4 / 16)    # tolerance 0
  assert summary["good"]["energy_share"] == pytest.approx(1.0)
  assert summary["good"]["energy_chance"] == pytest.approx(.25)
  assert summary["good"]["deletion_auc"] == pytest.approx(.125)
  assert F.summarize(arrays, np.array([False, False])) == {"num_images": 0}


def test_uncrop_places_a_crop_map_back_on_the_image():
  maps = jnp.ones((1, 2, 2))
  out = np.asarray(crop.uncrop(maps, jnp.array([[.25, .5, .75, 1.0]]), (8, 8)))[0]
  inside = np.zeros((8, 8), bool)
  inside[2:6, 4:8] = True
  np.testing.assert_allclose(out[inside], 1, atol=1e-6)
  np.testing.assert_allclose(out[~inside], 0, atol=1e-6)
