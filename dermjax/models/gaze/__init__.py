"""Gaze sequences (Esteve-Cogollos & Fernandez-Torres 2020): the paper's project folder.

  model.py        GazeNet (VGG-16-BN encoder, Attentive ConvLSTM scan, decoder, heads), build
  loss.py         the Hungarian-matched structure loss and eq. 14 (loss, loss_stats)
  matchers.py     host (scipy) and device (optax) Hungarian matchers
  balancing.py    eqs. 15-16 and mini-batch balancing
  segmentation.py mAP (eq. 20), structure accuracy, per-structure Jaccard
  evaluation.py   eval_arrays / report hooks
  explain.py      Fig. 7-style explanations
  flops.py        analytic FLOPs of a train step (for MFU)

This module is the model contract (dermjax/models/__init__.py) for `model.name = "gaze"`.
"""

from dermjax.models.gaze.evaluation import eval_arrays, report
from dermjax.models.gaze.explain import explain, gaze_points, saliency
from dermjax.models.gaze.loss import (loss, loss_stats, soft_iou_matrix, structure_loss,
                                      structure_targets)
from dermjax.models.gaze.model import DECODER_BLOCKS, GazeNet, build

__all__ = ["build", "loss", "loss_stats", "eval_arrays", "report", "explain", "saliency", "GazeNet",
           "DECODER_BLOCKS", "gaze_points", "soft_iou_matrix", "structure_loss",
           "structure_targets"]
