"""CIN, the Clinical-Inspired Network (Liu et al. 2020): the paper's project folder.

  lesion.py     stage 1, the lesion area attention module (U-Net on ResNet-18 + auxiliary
                L1 on box crops), model name "cin_lesion": build, loss, eval_arrays
                (Jaccard counts), report (Jaccard, ISIC thresholded Jaccard), explain.
  attention.py  the lesion feature attention module: spatial (eq. 1) and correlation
                (eq. 2) blocks, F_A (eq. 3).
  model.py      stage 2: crop by the frozen stage 1, ResNet-18 branches, classifier,
                distinguish module with pairs formed on device, test-time summation.
  loss.py       weighted CE (eq. 4, class weights from stats.json), pair BCE (eq. 5), eq. 6.
  explain.py    stage-1 map + crop box and the spatial attention Q over the crop.

This module is the model contract (dermjax/models/__init__.py) for `model.name = "cin"`
(stage 2); `dermjax.models.cin.lesion` is the one for "cin_lesion". Table: configs/cin.py.
"""

from dermjax.models.cin.attention import (LesionFeatureAttention, combine, correlation_map,
                                          spatial_normalize)
from dermjax.models.cin.explain import explain, saliency
from dermjax.models.cin.lesion import LesionAttention
from dermjax.models.cin.loss import class_weights, loss, loss_stats, train_class_counts
from dermjax.models.cin.model import (CIN, Branch, Distinguish, build, pair_permutation, same_class,
                                      shifted_pairs, summed_logits)

__all__ = ["build", "loss", "loss_stats", "explain", "saliency", "CIN", "Branch", "Distinguish",
           "LesionAttention", "LesionFeatureAttention", "spatial_normalize", "correlation_map",
           "combine", "pair_permutation", "shifted_pairs", "same_class", "summed_logits", "class_weights",
           "train_class_counts"]
