"""Explanation drawing: upscaling small inputs, mask overlays of other sizes, gaze points."""

import numpy as np

from dermjax import visualize


def test_upscale_small_images_only():
  small = np.zeros((32, 40, 3), np.uint8)
  assert visualize.upscale(small).shape == (192, 240, 3)
  big = np.zeros((224, 300, 3), np.uint8)
  assert visualize.upscale(big) is not None and visualize.upscale(big).shape == big.shape


def test_overlay_mask_is_resized_to_the_image():
  image = np.zeros((64, 64, 3), np.uint8)
  mask = np.zeros((8, 8)); mask[:4, :4] = 1                 # top-left quarter.
  out = visualize.overlay_mask(image, mask, color=(255, 0, 0), alpha=1.0)
  assert out[10, 10, 0] == 255 and out[50, 50, 0] == 0


def test_draw_points_marks_each_point():
  image = np.zeros((100, 100, 3), np.uint8)
  out = visualize.draw_points(image, [(20, 30), (70, 80)])
  assert out[20, 30].any() and out[70, 80].any() and not out[95, 5].any()


def test_draw_box_outlines_the_fraction_rectangle():
  image = np.zeros((40, 80, 3), np.uint8)
  out = visualize.draw_box(image, (0.25, 0.5, 0.75, 1.0), color=(255, 0, 0), width=1)
  red = out[..., 0] == 255
  ys, xs = np.nonzero(red)
  assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 29, 40, 79)
  assert not red[20, 60] and image.sum() == 0   # hollow; the input is not modified.
