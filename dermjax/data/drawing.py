"""Drawing primitives the synthetic ISIC sets share (dermjax.data.synthetic, synthetic_hard).

numpy only; every function draws from the `rng` (np.random.Generator) it is given.
"""

import math

import numpy as np


def superpixel_grid(rng, height, width, num_segments):
  """Jittered-grid Voronoi partition -> int32 [H, W] indices 0..N-1 (all used).

  Computed on a 2x coarser grid and upsampled, which keeps it fast.
  """
  h, w = (height + 1) // 2, (width + 1) // 2
  cell = math.sqrt(h * w / num_segments)
  rows, cols = math.ceil(h / cell), math.ceil(w / cell)
  seeds = ((np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1)
            + rng.uniform(.15, .85, (rows, cols, 2))) * cell).astype(np.float32)
  yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None]
  ci, cj = (yy // cell).astype(np.int32), (xx // cell).astype(np.int32)
  best = np.full((h, w), np.inf, np.float32)
  label = np.zeros((h, w), np.int32)
  for di in (-1, 0, 1):
    for dj in (-1, 0, 1):
      i, j = np.clip(ci + di, 0, rows - 1), np.clip(cj + dj, 0, cols - 1)
      dist = (yy - seeds[i, j, 0]) ** 2 + (xx - seeds[i, j, 1]) ** 2
      closer = dist < best
      best[closer] = dist[closer]
      label[closer] = (i * cols + j)[closer]
  label = label.repeat(2, 0).repeat(2, 1)[:height, :width]
  _, label = np.unique(label, return_inverse=True)
  return label.reshape(height, width).astype(np.int32)


def smooth_noise(rng, yy, xx, scale, waves=4):
  """Sum of random plane waves -> float32 [H, W] in [-1, 1]; yy [H, 1], xx [1, W]."""
  out = np.zeros((yy.shape[0], xx.shape[1]), np.float32)
  for _ in range(waves):
    k, a = rng.uniform(.5, 3.) / scale, rng.uniform(0, 2 * np.pi)
    u, v = k * np.cos(a) * xx, k * np.sin(a) * yy + rng.uniform(0, 2 * np.pi)
    out += np.sin(v) * np.cos(u) + np.cos(v) * np.sin(u)  # sin(u + v), separably
  return out / waves
