"""AttnMel-CNN (Yan, Kawahara, Hamarneh 2019): the paper's project folder.

  model.py   AttnMel / Mel-CNN network, the attention-regularised focal loss (eq. 5), the
             attention-map Jaccard hooks (Table 3) and the overlay explanations (Fig. 3).

Its VGG-16 / VGG-16-GAP baselines are the shared `dermjax.models.baselines` (model name
"vgg16"), which the gaze Table 3 uses too. This module is the model contract
(dermjax/models/__init__.py) for `model.name = "attnmel"`.
"""

from dermjax.models.attnmel.model import (ATTENDED, AttentionBlock, AttnMel, area_downsample,
                                          build, eval_arrays, explain, loss, reference_map, report,
                                          saliency)
from dermjax.models.common import compute_dtype
from dermjax.models.common.explain import lesion_masks, save_overlays

__all__ = ["build", "loss", "eval_arrays", "report", "explain", "saliency", "AttnMel", "AttentionBlock",
           "ATTENDED", "area_downsample", "reference_map", "compute_dtype", "lesion_masks",
           "save_overlays"]
