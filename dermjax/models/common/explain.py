"""Explanation drawing shared by every model: heat-map overlays next to the lesion mask."""

import os

import numpy as np

from dermjax import fileio
from dermjax import visualize
from dermjax.data import augment


def save_overlays(maps: dict, images, ids, out_dir, masks=None):
  """One PNG per example: image | lesion mask (if given) | each map as a heat-map overlay.

  maps: {name: [B, h, w]}; images uint8 [B, H, W, 3]; masks optional [B, H, W] 0/1 (None
  rows skipped). Also writes `<id>_<name>.npy` with each map upsampled to the image.
  """
  os.makedirs(out_dir, exist_ok=True)
  for i, example_id in enumerate(ids):
    image = visualize.upscale(images[i])  # legible even for small model inputs.
    panels = [image]
    if masks is not None and masks[i] is not None:
      panels.append(visualize.overlay_mask(image, masks[i], color=(0, 255, 0)))
    for name, heat in maps.items():
      heat = np.asarray(heat[i], np.float32)
      panels.append(visualize.overlay_heatmap(image, heat))
      fileio.save_npy(os.path.join(out_dir, f"{example_id}_{name}.npy"),
                      visualize.resize_map(heat, np.shape(images[i])[:2]))
    visualize.save_png(visualize.hstack(panels), os.path.join(out_dir, f"{example_id}.png"))


def lesion_masks(batch, count):
  """[count] lesion masks [H, W] from a (numpy) batch, None where not ground truth."""
  if batch is None or "masks" not in batch:
    return None
  masks = np.asarray(batch["masks"])[..., 0]
  has = np.asarray(batch.get("has_lesion_mask", np.ones(len(masks))))
  return [masks[i] if has[i] > 0.5 else None for i in range(count)]


def model_view(images, batch, config):
  """(images, batch) as the model saw them at evaluation: with config.data.augment.crop_size C
  smaller than the host images [B, H, W, 3], their central C x C window, and the batch's
  masks likewise (dermjax.data.augment's eval crop); otherwise unchanged."""
  size = config.data.get("augment", {}).get("crop_size", None)
  if size is None or np.shape(images)[1] <= int(size):
    return images, batch
  size = int(size)
  if batch is not None and "masks" in batch:
    batch = {**batch, "masks": augment.center_crop(np.asarray(batch["masks"]), size)}
  return augment.center_crop(np.asarray(images), size), batch
