"""`dermjax_isic`: one TFDS builder, one config per ISIC layout (dermjax.data.isic).

Examples are prepared by dermjax.data.prepare, which hands the builder a `plan`: a
callable `plan(split) -> iterator of (key, example)` and the list of splits. Images are
stored as the original encoded bytes and masks as one PNG whose bit 0 is the lesion and
bit k+1 is schema.ATTRIBUTES[k] (bit 1 + A: the synthetic evidence mask); `dermjax.data.codec.decode` turns an example back into
a record. Build with `file_format="array_record"`; read with `as_data_source`.
"""

import numpy as np
import tensorflow_datasets as tfds

from dermjax.data import isic

VERSION = "1.0.0"


def features():
  scalar = tfds.features.Scalar
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded bytes
      "masks": tfds.features.Tensor(shape=(), dtype=np.object_),  # bit-packed PNG
      "height": scalar(dtype=np.int32),
      "width": scalar(dtype=np.int32),
      "melanoma": scalar(dtype=np.int32),
      "keratosis": scalar(dtype=np.int32),
      "label": scalar(dtype=np.int32),
      "has_lesion_mask": scalar(dtype=np.bool_),
      "has_attributes": scalar(dtype=np.bool_),
      # Optional (datasets prepared before it have no such key; readers use .get).
      "has_evidence_mask": scalar(dtype=np.bool_),
      "age": scalar(dtype=np.float32),
      "sex": scalar(dtype=np.int32),
      "site": scalar(dtype=np.int32),
      "patient_id": tfds.features.Text(),
  })


class DermjaxIsic(tfds.core.GeneratorBasedBuilder):
  """ISIC 2016-2020 in one uniform record format."""

  VERSION = tfds.core.Version(VERSION)
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in isic.LAYOUTS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place the official ISIC files for the layout in the manual dir (see "
      "dermjax.data.isic) and build with dermjax.data.prepare.prepare().")

  plan = None  # set by dermjax.data.prepare before download_and_prepare

  def _info(self):
    return self.dataset_info_from_configs(
        features=features(), homepage="https://challenge.isic-archive.com/data/")

  def _split_generators(self, dl_manager):
    del dl_manager
    if self.plan is None:
      raise ValueError("Build through dermjax.data.prepare.prepare(), which sets `plan`.")
    return {split: self.plan(split) for split in self.plan.splits}

  def _generate_examples(self, **kwargs):
    raise NotImplementedError  # _split_generators returns the generators directly
