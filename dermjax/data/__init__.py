"""ISIC readers, synthetic ISIC data, TFDS builders and the input pipeline."""
