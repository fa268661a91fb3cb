"""MASLL, multi-level attentive skin lesion learning (Wang, Huang, Lu, Huang): the paper's
project folder.

  model.py   the MASLL network (global branch, SLL box and on-device crop from the input or
             a higher-resolution source copy, local branch, WFI, classifier), its
             explanations (box, activation map M, crop) and box report.

Its Table I baselines (ResNet101, DenseNet121) are the shared backbone + GAP + dense
classifier `dermjax.models.baselines.gap_classifier` (model name "gap_classifier"). This
module is the model contract (dermjax/models/__init__.py) for `model.name = "masll"`; the
loss is the baseline's (cross-entropy with config.loss.focal_gamma = 0) plus the mean box
area as a metric.
"""

from dermjax.models.masll.model import (CROP_SOURCES, FUSIONS, MASLL, WFI, build, eval_arrays,
                                        explain, loss, pretrained_targets, report, saliency)

__all__ = ["build", "loss", "eval_arrays", "report", "explain", "saliency", "MASLL", "WFI", "FUSIONS",
           "CROP_SOURCES", "pretrained_targets"]
