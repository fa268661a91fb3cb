"""TFDS builder classes (array_record, built through the Python API, no TensorFlow)."""
