"""CIN explanations per test image: the stage-1 lesion area map and crop box, and the
spatial attention map Q (eq. 1) over the crop the classifier saw."""

import os

import numpy as np
from PIL import Image

from dermjax import fileio
from dermjax import visualize
from dermjax.metrics import diagnosis
from dermjax.models.cin import lesion
from dermjax.models.common import crop
from dermjax.models.common import explain as common_explain


def crop_image(image, box, size):
  """Host crop of uint8 [H, W, 3] by a fraction box (top, left, bottom, right) -> uint8
  [size[0], size[1], 3] (bilinear), as the model's on-device crop."""
  h, w = image.shape[:2]
  top, left, bottom, right = (float(v) for v in np.asarray(box).reshape(4))
  region = (left * w, top * h, right * w, bottom * h)
  return np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize(
      (size[1], size[0]), Image.BILINEAR, box=region))


def saliency(outputs, batch, config):
  """The contract's saliency hook: {"q": the spatial attention Q} over the whole image
  [B, S, S] (placed back from the stage-1 crop with crop.uncrop, 0 outside it), or at its
  own resolution without stage 1; none without the attention module."""
  del config
  if "q" not in outputs:
    return {}
  if "crop_box" not in outputs:
    return {"q": outputs["q"]}
  return {"q": crop.uncrop(outputs["q"], outputs["crop_box"], batch["image"].shape[1:3])}


def explain(outputs, batch, images, ids, config, out_dir):
  """PNG per image: image (+ stage-1 box, red) titled with the predicted probability of class
  1 | GT lesion mask | lesion map (with stage 1) | Q over the crop (with the attention
  module); plus <id>_lesion_map.npy, <id>_box.npy (with stage 1) and <id>_q.npy (Q at its
  own resolution)."""
  del config
  os.makedirs(out_dir, exist_ok=True)
  scores = diagnosis.probabilities(np.asarray(outputs["logits"]))
  masks = common_explain.lesion_masks(batch, len(ids))
  for i, example_id in enumerate(ids):
    shown = visualize.upscale(images[i])
    score = scores[i] if scores.ndim == 1 else scores[i].max()
    first = (lesion.box_panel(images[i], [outputs["crop_box"][i]], [(255, 0, 0)])
             if "crop_box" in outputs else shown)
    panels = [visualize.draw_label(first, f"p={float(score):.2f}")]
    if "lesion_map" in outputs:
      if masks is not None and masks[i] is not None:
        panels.append(visualize.overlay_mask(shown, masks[i], color=(0, 255, 0)))
      panels.append(visualize.overlay_heatmap(shown, np.asarray(outputs["lesion_map"][i], np.float32)))
      fileio.save_npy(os.path.join(out_dir, f"{example_id}_lesion_map.npy"),
                      np.asarray(outputs["lesion_map"][i], np.float32))
      fileio.save_npy(os.path.join(out_dir, f"{example_id}_box.npy"), np.asarray(outputs["crop_box"][i], np.float32))
    if "q" in outputs:
      seen = (crop_image(images[i], outputs["crop_box"][i], shown.shape[:2]) if "crop_box" in outputs
              else shown)
      panels.append(visualize.overlay_heatmap(seen, np.asarray(outputs["q"][i], np.float32)))
      fileio.save_npy(os.path.join(out_dir, f"{example_id}_q.npy"), np.asarray(outputs["q"][i], np.float32))
    visualize.save_png(visualize.hstack(panels), os.path.join(out_dir, f"{example_id}.png"))
