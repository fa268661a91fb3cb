"""Gaze explanations (thesis Fig. 7): numbered gaze points, attention maps, per-step masks."""

import os

import numpy as np

from dermjax import visualize
from dermjax.data import schema


def gaze_points(attention, image_shape):
  """Argmax of each attention map, in image pixels: [T, h, w] -> [T, 2] (y, x) float."""
  attention = np.asarray(attention)
  t, h, w = attention.shape
  flat = attention.reshape(t, -1).argmax(-1)
  ys, xs = np.unravel_index(flat, (h, w))
  return np.stack([(ys + 0.5) * image_shape[0] / h, (xs + 0.5) * image_shape[1] / w], -1)


def saliency(outputs, batch, config) -> dict:
  """The contract's saliency hook: {"gaze<t>": attention map of step t, "gaze_mean": their
  mean}, each [B, h, w] over the model input."""
  del batch, config
  attention = outputs["attention"]  # [B, T, h, w]
  maps = {f"gaze{t}": attention[:, t] for t in range(attention.shape[1])}
  maps["gaze_mean"] = attention.mean(axis=1)
  return maps


def explain(outputs, batch, images, ids, config, out_dir) -> None:
  """Fig. 7-style PNG per example: numbered gazes | attention maps | masks with classes.

  Writes <out_dir>/<id>_gaze.png and <id>_gaze.npz (attention, points, masks, classes).
  """

  del batch
  os.makedirs(out_dir, exist_ok=True)
  attention = np.asarray(outputs["attention"], np.float32)
  masks = outputs.get("masks")
  classes = outputs.get("structure_logits")
  score = np.asarray(outputs["logits"], np.float32)
  for b, example_id in enumerate(ids):
    image = visualize.upscale(images[b])  # drawn legibly even for small model inputs.
    points = gaze_points(attention[b], image.shape[:2])
    diag = (f"p={1 / (1 + np.exp(-score[b, 0])):.2f}" if score.shape[-1] == 1
            else f"class {int(score[b].argmax())}")
    panels = [visualize.draw_label(visualize.draw_points(image, points), diag)]
    panels += [visualize.draw_label(visualize.overlay_heatmap(image, a), f"A{t}")
               for t, a in enumerate(attention[b])]
    arrays = {"attention": attention[b], "points": gaze_points(attention[b], images[b].shape[:2])}
    if masks is not None:
      m = np.asarray(masks[b], np.float32)
      cls = np.asarray(classes[b]).argmax(-1)
      panels += [visualize.draw_label(visualize.overlay_mask(image, m[t] > 0.5),
                                      f"M{t} {schema.STRUCTURES[cls[t]]}") for t in range(len(m))]
      arrays.update(masks=(m > 0.5).astype(np.uint8), structures=cls)
    name = str(example_id.decode() if isinstance(example_id, bytes) else example_id)
    visualize.save_png(visualize.hstack(panels), os.path.join(out_dir, f"{name}_gaze.png"))
    np.savez_compressed(os.path.join(out_dir, f"{name}_gaze.npz"), **arrays)
