"""Model registry: `config.model.name` -> the module that defines it.

Every model module exposes
  build(config: ml_collections.ConfigDict) -> flax.linen.Module
      the network; `module.apply(variables, batch, train=...)` takes a batch dict
      (see dermjax.data.schema) and returns a dict of outputs with at least
      "logits": [B, K] diagnosis logits (K = 1: sigmoid melanoma score).
  loss(outputs, batch, config, stats) -> (scalar loss, dict of scalar metrics)
      a pure function; `stats` holds split-level constants (e.g. structure presences).
The registry is a fixed table (no import-time registration), resolved lazily so that
importing one model never imports the others.
"""

import importlib
from types import ModuleType

MODELS = {
    # Gaze sequences (Esteve-Cogollos 2020) and its Table 3 ablations.
    "gaze": "dermjax.models.gaze",
    # AttnMel-CNN (Yan et al. 2019) and its baselines.
    "attnmel": "dermjax.models.attnmel",
    "vgg16": "dermjax.models.baselines",
}


def get(name: str) -> ModuleType:
  """The model module registered as `name`; raises with the known names otherwise."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known models: {sorted(MODELS)}")
  return importlib.import_module(MODELS[name])
