"""TF-free TensorBoard writer: tensorboard's own reader reads the event files back."""

import json
import os

import numpy as np
from tensorboard.backend.event_processing import event_accumulator

from dermjax import writers


def test_scalars_and_images_read_back(tmp_path):
  writer = writers.SummaryWriter(str(tmp_path))
  writer.write_scalars(1, {"train/loss": 0.5, "train/auc": float("nan")})
  writer.write_scalars(2, {"train/loss": 0.25})
  image = np.zeros((6, 8, 3), np.uint8)
  image[..., 0] = 255
  writer.write_images(2, {"gaze/0": image})
  writer.close()
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"images": 0})
  acc.Reload()
  assert sorted(acc.Tags()["scalars"]) == ["train/auc", "train/loss"]
  loss = acc.Scalars("train/loss")
  assert [(e.step, e.value) for e in loss] == [(1, 0.5), (2, 0.25)]
  images = acc.Images("gaze/0")
  assert len(images) == 1 and (images[0].width, images[0].height) == (8, 6)
  lines = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert lines == [{"step": 1, "train/loss": 0.5, "train/auc": None},
                   {"step": 2, "train/loss": 0.25}]


def test_progress_line():
  progress = writers.Progress(total_steps=100, start_step=0)
  rate, line = progress(10)
  assert rate > 0 and "10/100" in line and "steps/s" in line and "ETA" in line
  assert writers.format_seconds(3725) == "1:02:05" and writers.format_seconds(65) == "1:05"
