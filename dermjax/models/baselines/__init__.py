"""Backbone classifiers that several papers' tables use as baselines.

  vgg.py             model name "vgg16": VGG-16 and VGG-16-GAP of AttnMel Tables 1-3 and the
                     gaze thesis's Table 3 (this package's hooks).
  gap_classifier.py  model name "gap_classifier": any `model.backbone` + GAP + dense (MASLL
                     Table I's ResNet101 / DenseNet121).
"""

from dermjax.models.baselines.vgg import (HEADS, VGGClassifier, build, eval_arrays, explain, loss,
                                          pretrained_targets, report, saliency)

__all__ = ["build", "loss", "eval_arrays", "report", "explain", "saliency", "VGGClassifier", "HEADS",
           "pretrained_targets"]
