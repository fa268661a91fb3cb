"""dermjax: attention-based, explainable skin-lesion diagnosis in JAX/Flax."""

__version__ = "0.1.0"
