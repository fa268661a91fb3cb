"""Samplers: melanoma oversampling ratio, class balance, determinism."""

import pickle

import numpy as np
import pytest

from dermjax.data import sampling


def _labels(n=400, n_mel=50):
  melanoma = np.zeros(n, np.int32)
  melanoma[np.random.default_rng(0).choice(n, n_mel, replace=False)] = 1
  return melanoma


def test_none_is_a_permutation():
  mel = _labels()
  idx = sampling.epoch_indices(mel, mel, mode="none", epoch=0, seed=1)
  assert sorted(idx) == list(range(len(mel)))
  assert not np.array_equal(idx, np.arange(len(mel)))


def test_oversample_repeats_each_melanoma_factor_times():
  mel = _labels()
  idx = sampling.epoch_indices(mel, mel, mode="oversample", epoch=0, seed=0, factor=4)
  assert len(idx) == sampling.epoch_length(mel, mel, mode="oversample", factor=4) == 400 + 3 * 50
  counts = np.bincount(idx, minlength=len(mel))
  assert (counts[mel == 1] == 4).all() and (counts[mel == 0] == 1).all()
  # Melanoma share goes from 50/400 to 200/550.
  assert np.mean(mel[idx]) == pytest.approx(200 / 550)


def test_balanced_is_about_half_melanoma():
  mel = _labels()
  shares = [np.mean(mel[sampling.epoch_indices(mel, mel, mode="balanced", epoch=e, seed=0)])
            for e in range(5)]
  assert np.mean(shares) == pytest.approx(0.5, abs=0.04)
  three = np.repeat([0, 1, 2], [300, 80, 20])
  idx = sampling.epoch_indices(three, None, mode="balanced", epoch=0, seed=0)
  np.testing.assert_allclose(np.bincount(three[idx]) / len(idx), 1 / 3, atol=0.07)
  with pytest.raises(ValueError, match="class -1"):
    sampling.epoch_indices(np.array([0, 1, -1]), None, mode="balanced")


def test_deterministic_in_seed_and_epoch():
  mel = _labels()
  a = sampling.epoch_indices(mel, mel, mode="oversample", epoch=3, seed=5)
  np.testing.assert_array_equal(a, sampling.epoch_indices(mel, mel, mode="oversample", epoch=3, seed=5))
  assert not np.array_equal(a, sampling.epoch_indices(mel, mel, mode="oversample", epoch=4, seed=5))
  assert not np.array_equal(a, sampling.epoch_indices(mel, mel, mode="oversample", epoch=3, seed=6))


def test_schedule_walks_epochs_and_pickles():
  mel = _labels(n=20, n_mel=5)
  schedule = sampling.EpochSchedule(mel, mel, mode="oversample", seed=2, factor=4)
  assert schedule.length == 35
  first = [schedule(i) for i in range(35)]
  second = [schedule(i) for i in range(35, 70)]
  np.testing.assert_array_equal(first, sampling.epoch_indices(mel, mel, mode="oversample", seed=2))
  np.testing.assert_array_equal(second, sampling.epoch_indices(mel, mel, mode="oversample", epoch=1,
                                                               seed=2))
  copy = pickle.loads(pickle.dumps(schedule))
  assert [copy(i) for i in range(30, 40)] == [schedule(i) for i in range(30, 40)]


def test_bad_mode():
  with pytest.raises(ValueError, match="data.sampling"):
    sampling.epoch_indices([0, 1], [0, 1], mode="weighted")
