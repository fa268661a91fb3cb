"""Hungarian matchers: host (scipy) and device (optax) agree with a brute-force optimum."""

import itertools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dermjax.models.gaze import matchers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def brute_force(cost, valid):
  """Optimal [S] assignment (-1 unmatched) over valid rows by enumeration."""
  rows = np.flatnonzero(valid)
  s, t = cost.shape
  best, best_assign = np.inf, np.full(s, -1)
  if len(rows) <= t:
    candidates = ((rows, cols) for cols in itertools.permutations(range(t), len(rows)))
  else:
    candidates = ((np.array(r), range(t)) for r in itertools.permutations(rows, t))
  for r, c in candidates:
    r, c = np.asarray(r, int), np.asarray(list(c), int)
    total = cost[r, c].sum()
    if total < best:
      best, best_assign = total, np.full(s, -1)
      best_assign[r] = c
  return best_assign


def random_problem(seed, batch=8, s=6, t=5):
  rng = np.random.default_rng(seed)
  cost = rng.uniform(size=(batch, s, t)).astype(np.float32)
  valid = rng.uniform(size=(batch, s)) < 0.6
  valid[0] = True            # more valid rows than steps when s > t
  valid[1] = False           # nothing to match
  valid[2, :2] = True
  return cost, valid


@pytest.mark.parametrize("method", matchers.METHODS)
@pytest.mark.parametrize("s,t", [(6, 5), (6, 3), (4, 6)])
def test_match_is_the_brute_force_optimum_under_jit(method, s, t):
  cost, valid = random_problem(s * 10 + t, s=s, t=t)
  got = np.asarray(jax.jit(lambda c, v: matchers.match(c, v, method))(cost, valid))
  for b in range(len(cost)):
    want = brute_force(cost[b], valid[b])
    np.testing.assert_array_equal(got[b], want, err_msg=f"example {b}, valid {valid[b]}")
    assert (got[b] >= 0).sum() == min(valid[b].sum(), t)
    assert np.all(got[b][~valid[b]] == -1)


@pytest.mark.parametrize("method", matchers.METHODS)
def test_match_under_vmap_equals_per_slice(method):
  cost, valid = random_problem(3)
  cost2 = np.stack([cost, cost[::-1]])
  valid2 = np.stack([valid, valid[::-1]])
  got = jax.jit(jax.vmap(lambda c, v: matchers.match(c, v, method)))(cost2, valid2)
  for k in range(2):
    want = [brute_force(c, v) for c, v in zip(cost2[k], valid2[k])]
    np.testing.assert_array_equal(np.asarray(got[k]), np.stack(want))
  # vmap over the batch axis itself (one example per call): unbatched valid broadcast too.
  got1 = jax.vmap(lambda c: matchers.match(c[None], jnp.asarray(valid[:1]), method)[0])(cost)
  want1 = [brute_force(c, valid[0]) for c in cost]
  np.testing.assert_array_equal(np.asarray(got1), np.stack(want1))


def test_host_and_device_agree_on_many_problems():
  host_fn = jax.jit(lambda c, v: matchers.match(c, v, "host"))
  device_fn = jax.jit(lambda c, v: matchers.match(c, v, "device"))
  for seed in range(5):
    cost, valid = random_problem(100 + seed, batch=16)
    host, device = host_fn(cost, valid), device_fn(cost, valid)
    np.testing.assert_array_equal(np.asarray(host), np.asarray(device))


@pytest.mark.parametrize("method", matchers.METHODS)
def test_no_gradient_through_the_assignment(method):
  cost, valid = random_problem(7)

  def matched_cost(c):
    a = matchers.match(c, valid, method)
    return jnp.sum(c * jax.nn.one_hot(a, c.shape[-1]))

  grad = jax.jit(jax.grad(matched_cost))(jnp.asarray(cost))
  one_hot = jax.nn.one_hot(matchers.match(cost, valid, method), cost.shape[-1])
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(one_hot))


@pytest.mark.parametrize("method", matchers.METHODS)
@pytest.mark.parametrize("s,t", [(6, 5), (6, 3), (4, 6)])
def test_first_present_is_the_brute_force_optimum_over_the_first_k_steps(method, s, t):
  """match_steps "first_present" (the thesis code): the k valid rows of an image are matched
  only to steps 0..min(k, T)-1, optimally; checked against brute force on those columns."""
  cost, valid = random_problem(s * 7 + t + 1, batch=10, s=s, t=t)
  got = np.asarray(jax.jit(lambda c, v: matchers.match(c, v, method, "first_present"))(cost, valid))
  for b in range(len(cost)):
    k = min(int(valid[b].sum()), t)
    want = brute_force(cost[b][:, :k], valid[b])
    np.testing.assert_array_equal(got[b], want, err_msg=f"example {b}, valid {valid[b]}")
    assert sorted(got[b][got[b] >= 0].tolist()) == list(range(k))  # exactly the first k steps
  if t >= 5:  # Some images have k < T: there "all" uses a later step, so the option matters.
    full = np.asarray(matchers.match(cost, valid, method, "all"))
    assert not np.array_equal(full, got)


def test_first_present_hand_example():
  """Two present structures whose best masks are steps 2 and 3 of T = 4: "all" takes those,
  "first_present" must use steps 0 and 1 (lesion -> 1, skin -> 0 is the cheaper pairing)."""
  cost = np.full((1, 3, 4), 0.9, np.float32)
  cost[0, 0] = [0.8, 0.5, 0.1, 0.9]   # lesion
  cost[0, 1] = [0.6, 0.7, 0.9, 0.0]   # skin
  valid = np.array([[True, True, False]])
  for method in matchers.METHODS:
    np.testing.assert_array_equal(np.asarray(matchers.match(cost, valid, method, "all")), [[2, 3, -1]])
    np.testing.assert_array_equal(
        np.asarray(matchers.match(cost, valid, method, "first_present")), [[1, 0, -1]])
  with pytest.raises(ValueError, match="match_steps"):
    matchers.match(cost, valid, "device", "last")


def test_unknown_method_is_an_error():
  with pytest.raises(ValueError, match="config.loss.matcher"):
    matchers.match(jnp.zeros((1, 2, 2)), jnp.ones((1, 2), bool), "magic")


def test_sharded_batch_matches_unsharded():
  """8 host devices, batch sharded along "data": both matchers equal the unsharded result."""
  script = textwrap.dedent("""
      import os
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
      os.environ["JAX_PLATFORMS"] = "cpu"
      import jax, numpy as np
      from jax.sharding import NamedSharding, PartitionSpec as P
      from dermjax.models.gaze import matchers
      rng = np.random.default_rng(0)
      cost = rng.uniform(size=(16, 6, 5)).astype(np.float32)
      valid = rng.uniform(size=(16, 6)) < 0.6
      mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
      sh = NamedSharding(mesh, P("data"))
      c, v = jax.device_put(cost, sh), jax.device_put(valid, sh)
      ref = np.asarray(matchers.match(cost, valid, "host"))
      for method in matchers.METHODS:
        out = jax.jit(lambda c, v: matchers.match(c, v, method), out_shardings=sh)(c, v)
        np.testing.assert_array_equal(np.asarray(out), ref)
      print("OK", len(jax.devices()))
  """)
  env = dict(os.environ, PYTHONPATH=REPO)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK 8" in result.stdout
