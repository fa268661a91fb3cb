"""Pretrained ImageNet weights: torchvision / timm checkpoints -> dermjax Flax variables.

Sources
  *.pth / *.pt      a torch state dict (optionally under "state_dict" or "model"), read with
                    torch.load(weights_only=True): torch must be installed, nothing is unpickled
                    beyond tensors and plain containers.
  *.safetensors     torchvision or timm key names, read with `safetensors` (no torch needed).
  converted dir     what scripts/convert_weights.py writes: DIR/variables.safetensors holding the
                    dermjax variables as flat float32 tensors named "params/block1/conv1/kernel",
                    with the architecture in the file's metadata (safetensors, not orbax: one
                    memory-mappable file, readable without torch and without JAX).

Mapping: one table per architecture (`TABLES`) of rows (dermjax module path, torch module
prefix, kind); a kind (`KINDS`) lists the tensors of one torch layer and how each becomes a Flax
leaf. Both live in `dermjax.weight_keys` (re-exported here). Key normalisation handles DataParallel's "module." prefix and torchvision's legacy DenseNet names
("denselayer1.norm.1.weight" -> "denselayer1.norm1.weight").

Names: torchvision and timm agree for ResNet/ResNeXt/DenseNet (AlexNet: torchvision only); timm's VGG classifier is
`pre_logits.fc1` (7x7 conv), `pre_logits.fc2` (1x1 conv), `head.fc`, which dermjax maps onto
torchvision's head (`head/fc6..fc8`; the same function at 224 px input).

Every mismatch (missing key, unexpected key, wrong shape) is collected and raised together in a
`CheckpointMismatchError` naming the file, each key and both shapes. A checkpoint's classifier
head is optional (absent -> the tree has no head); its class count is read from the checkpoint.
`graft` copies a pretrained tree into chosen submodules of a model (partial loading is always
explicit), and `apply_pretrained` does both from a model config. `check_pretrained` is the
start-up check of model.pretrained (before any data work): a row that grafts weights and
has none, a path that does not exist, a run of another model or weights converted for
another architecture end there in one line naming the file or run it needs.
"""

import functools
import os
import re
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dermjax import checkpoint
from dermjax.models.backbones import BACKBONES, build_backbone
from dermjax.weight_keys import KINDS, TABLES, Field, Table  # pylint: disable=unused-import

CONVERTED_FILE = "variables.safetensors"
SOURCE_FORMATS = ("torchvision", "timm")
# Torch buffers with no Flax counterpart.
IGNORED_SUFFIXES = (".num_batches_tracked",)


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the architecture / model; the message lists every offending key."""


# ----------------------------------------------------------------------------- reading

_LEGACY_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def read_state_dict(path: str) -> dict:
  """A torch-format checkpoint file -> {key: float32 numpy array} (keys normalised)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
  if path.endswith(".safetensors"):
    state = _read_safetensors(path)
  elif path.endswith((".pth", ".pt", ".bin", ".ckpt")):
    state = _read_torch(path)
  else:
    raise ValueError(f"{path}: unknown checkpoint type; expected .pth/.pt/.bin/.ckpt, .safetensors "
                     f"or a directory written by scripts/convert_weights.py.")
  return normalise_keys(state)


def _read_torch(path: str) -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"{path}: reading .pth needs PyTorch (pip install torch); or convert the file "
                      f"to .safetensors elsewhere.") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises various types for bad / non-weights-only files.
    raise ValueError(f"{path}: not a weights-only torch checkpoint ({e})") from e
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a state dict (mapping of tensors), got {type(obj).__name__}.")
  bad = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
  if bad:
    raise ValueError(f"{path}: entries that are not tensors: {bad}")
  return {k: v.detach().to(torch.float32).numpy() for k, v in obj.items()}


def _read_safetensors(path: str) -> dict:
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  state = {}
  with safe_open(path, framework="np") as f:
    for key in f.keys():
      try:
        state[key] = np.asarray(f.get_tensor(key), np.float32)
      except TypeError:  # bfloat16 and friends: numpy cannot view them, JAX can.
        with safe_open(path, framework="flax") as g:
          state[key] = np.asarray(g.get_tensor(key), np.float32)
  return state


def safetensors_metadata(path: str) -> dict:
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  with safe_open(path, framework="np") as f:
    return f.metadata() or {}


def normalise_keys(state: Mapping[str, Any]) -> dict:
  """Drops buffers without a Flax counterpart, DataParallel's "module." and legacy DenseNet names."""
  state = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  out = {}
  for key, value in state.items():
    m = _LEGACY_DENSENET.match(key)
    out[m.group(1) + m.group(2) if m else key] = value
  return out


# ----------------------------------------------------------------------------- conversion


@functools.lru_cache(maxsize=32)
def expected_shapes(arch: str, num_classes: Optional[int]) -> dict:
  """{(collection, "a/b/leaf"): shape} of `arch`'s variables (abstract init, nothing computed)."""
  module = build_backbone(arch, num_classes=num_classes)
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
  return {(c, "/".join(p)): tuple(v.shape)
          for c, tree in variables.items()
          for p, v in traverse_util.flatten_dict(tree).items()}


def detect_format(state: Mapping[str, Any], arch: str) -> str:
  """The source format whose table names the most of the checkpoint's keys (ties: torchvision)."""
  def hits(fmt):
    table = TABLES[arch](fmt)
    keys = {f"{prefix}.{f.torch_name}" for _, prefix, kind in table.body + table.head for f in KINDS[kind]}
    return len(keys & set(state))
  return max(SOURCE_FORMATS, key=hits)


def convert(state: Mapping[str, np.ndarray], arch: str, source_format: str = "auto", *,
            source: str = "checkpoint") -> dict:
  """A normalised torch state dict -> {"params": tree, "batch_stats": tree} in dermjax naming.

  Raises CheckpointMismatchError listing every missing / unexpected key and shape mismatch.
  """
  if arch not in TABLES:
    raise ValueError(f"Unknown arch {arch!r}; known: {sorted(TABLES)}")
  if source_format == "auto":
    source_format = detect_format(state, arch)
  if source_format not in SOURCE_FORMATS:
    raise ValueError(f"Unknown source_format {source_format!r}; known: auto, {', '.join(SOURCE_FORMATS)}")
  table = TABLES[arch](source_format)
  head_weight = f"{table.head[-1][1]}.weight"
  num_classes = state[head_weight].shape[0] if head_weight in state else None
  expected = expected_shapes(arch, num_classes)

  out, used, covered, problems = {}, set(), set(), []
  for path, prefix, kind in table.body + table.head:
    for f in KINDS[kind]:
      key, leaf = f"{prefix}.{f.torch_name}", (f.collection, f"{path}/{f.leaf}")
      present = key in state
      used.add(key)
      covered.add(leaf)
      if leaf not in expected:
        if present:
          problems.append(f"unexpected {key} {tuple(state[key].shape)}: {arch} has no {'/'.join(leaf)}")
        continue
      want = f.torch_shape(expected[leaf])
      if not present:
        problems.append(f"missing {key} {want} (for {'/'.join(leaf)} {expected[leaf]})")
      elif tuple(state[key].shape) != want:
        problems.append(f"shape mismatch {key}: checkpoint {tuple(state[key].shape)}, {arch} expects {want}")
      else:
        out[leaf] = np.ascontiguousarray(f.to_flax(np.asarray(state[key], np.float32)))
  problems += [f"unexpected {k} {tuple(state[k].shape)}: not part of {arch} ({source_format} names)"
               for k in sorted(set(state) - used)]
  problems += [f"{'/'.join(leaf)} {shape}: no row in the {arch} table" for leaf, shape in expected.items()
               if leaf not in covered]
  if problems:
    raise CheckpointMismatchError(
        f"{source} does not fit {arch} ({source_format} names), {len(problems)} problem(s):\n  "
        + "\n  ".join(problems))
  return _unflatten(out)


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
  """{(collection, "a/b/leaf"): array} -> {"params": nested, "batch_stats": nested}."""
  variables = {"params": {}, "batch_stats": {}}
  for (collection, path), value in flat.items():
    variables.setdefault(collection, {})[tuple(path.split("/"))] = value
  return {c: traverse_util.unflatten_dict(tree) if tree else {} for c, tree in variables.items()}


def flatten_variables(variables: Mapping[str, Any]) -> dict:
  """{"params": nested, ...} -> {(collection, "a/b/leaf"): leaf}."""
  return {(c, "/".join(p)): v for c, tree in variables.items()
          for p, v in traverse_util.flatten_dict(dict(tree)).items()}


# ----------------------------------------------------------------------------- converted checkpoints


def save_converted(variables: Mapping[str, Any], out_dir: str, arch: str, source: str = "") -> str:
  """Writes `variables` as out_dir/variables.safetensors (float32); returns the file's path."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  tensors = {f"{c}/{p}": np.ascontiguousarray(np.asarray(v, np.float32))
             for (c, p), v in flatten_variables(variables).items()}
  path = os.path.join(out_dir, CONVERTED_FILE)
  save_file(tensors, path, metadata={"format": "dermjax", "arch": arch, "source": os.path.basename(source)})
  return path


def load_converted(path: str, arch: str) -> dict:
  """Reads a converted checkpoint (dir or its variables.safetensors), checked against `arch`."""
  if os.path.isdir(path):
    path = os.path.join(path, CONVERTED_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no converted checkpoint (write one with scripts/convert_weights.py).")
  meta = safetensors_metadata(path)
  if meta.get("format") != "dermjax":
    raise ValueError(f"{path}: not a dermjax converted checkpoint (metadata {meta}).")
  if meta.get("arch") != arch:
    raise ValueError(f"{path}: converted for arch {meta.get('arch')!r}, but {arch!r} was asked for.")
  flat = {}
  for key, value in _read_safetensors(path).items():
    collection, _, leaf = key.partition("/")
    flat[(collection, leaf)] = value
  head = TABLES[arch]("torchvision").head[-1][0] + "/kernel"
  num_classes = flat[("params", head)].shape[-1] if ("params", head) in flat else None
  expected = expected_shapes(arch, num_classes)
  problems = [f"missing {'/'.join(k)} {s}" for k, s in expected.items() if k not in flat]
  problems += [f"unexpected {'/'.join(k)} {v.shape}" for k, v in flat.items() if k not in expected]
  problems += [f"shape mismatch {'/'.join(k)}: file {v.shape}, {arch} expects {expected[k]}"
               for k, v in flat.items() if k in expected and tuple(v.shape) != expected[k]]
  if problems:
    raise CheckpointMismatchError(f"{path} does not fit {arch}:\n  " + "\n  ".join(problems))
  return _unflatten(flat)


def load_pretrained(path: str, arch: str, *, source_format: str = "auto") -> dict:
  """Any supported checkpoint -> {"params": tree, "batch_stats": tree} in dermjax naming for `arch`.

  `path`: a converted dir / file, or an original .pth / .safetensors (torchvision or timm names).
  """
  if arch not in BACKBONES:
    raise ValueError(f"Unknown arch {arch!r}; known: {sorted(BACKBONES)}")
  if os.path.isdir(path) or (path.endswith(".safetensors") and os.path.isfile(path)
                             and safetensors_metadata(path).get("format") == "dermjax"):
    return load_converted(path, arch)
  return convert(read_state_dict(path), arch, source_format, source=path)


# ----------------------------------------------------------------------------- grafting


def _split(path: str) -> tuple:
  return tuple(p for p in path.split("/") if p)


def _subtree(tree: Any, parts: tuple) -> Any:
  for p in parts:
    if not isinstance(tree, Mapping) or p not in tree:
      return None
    tree = tree[p]
  return tree


def graft(variables: Mapping[str, Any], pretrained: Mapping[str, Any], targets: Mapping[str, str]) -> dict:
  """Copies pretrained leaves into the model's submodules; returns new variables.

  targets: {model submodule path: path inside `pretrained`} ("/"-separated, "" = root), e.g.
  {"encoder": "", "diagnosis_vgg": ""}. Every leaf (in every collection) under each model
  submodule is replaced by the leaf at the same relative path under the pretrained path; leaves
  outside the targets keep their values and unused pretrained leaves are ignored. Raises
  CheckpointMismatchError listing every missing / mis-shaped leaf with both shapes.
  """
  flat = {c: traverse_util.flatten_dict(dict(tree)) for c, tree in variables.items()}
  problems = []
  for target, src in targets.items():
    t_parts, s_parts = _split(target), _split(src)
    found = False
    for collection, tree in variables.items():
      sub = _subtree(tree, t_parts)
      if sub is None:
        continue
      found = True
      source = _subtree(pretrained.get(collection, {}), s_parts)
      leaves = traverse_util.flatten_dict(dict(sub)) if isinstance(sub, Mapping) else {(): sub}
      for rel, leaf in leaves.items():
        name = "/".join((collection,) + t_parts + rel)
        src_name = "/".join((collection,) + s_parts + rel)
        value = _subtree(source, rel) if source is not None else None
        if value is None or isinstance(value, Mapping):
          problems.append(f"{name} {tuple(leaf.shape)}: pretrained has no {src_name}")
        elif tuple(value.shape) != tuple(leaf.shape):
          problems.append(f"{name}: model {tuple(leaf.shape)}, pretrained {src_name} {tuple(value.shape)}")
        else:
          flat[collection][t_parts + rel] = _like(value, leaf)
    if not found:
      top = sorted({k for tree in variables.values() for k in tree})
      problems.append(f"target {target!r} is not a submodule of the model (top-level: {top})")
  if problems:
    raise CheckpointMismatchError(f"pretrained weights do not fit the model, {len(problems)} problem(s):\n  "
                                  + "\n  ".join(problems))
  return {c: traverse_util.unflatten_dict(tree) if tree else {} for c, tree in flat.items()}


def _like(value, leaf):
  """`value` with `leaf`'s dtype (and sharding, for a jax.Array leaf)."""
  value = np.asarray(value, leaf.dtype)
  if isinstance(leaf, jax.Array):
    return jax.device_put(value, leaf.sharding)
  return value


def apply_pretrained(variables: Mapping[str, Any], model_config) -> dict:
  """Grafts `model_config.pretrained` into `variables` (None -> unchanged).

  Reads model_config.pretrained (an ImageNet checkpoint path, or a dermjax workdir: its best
  checkpoint), .pretrained_arch (a BACKBONES name; unused for a workdir) and
  .pretrained_targets ({submodule path: path in the checkpoint}), see `graft`.
  """
  path = model_config.get("pretrained")
  if not path:
    return variables
  targets = model_config.get("pretrained_targets") or {}
  targets = targets.to_dict() if hasattr(targets, "to_dict") else dict(targets)
  if not targets:
    raise ValueError(no_targets(path))
  if os.path.isdir(os.path.join(path, "checkpoints")):
    pretrained = checkpoint.run_variables(path)
  else:
    pretrained = load_pretrained(path, model_config.pretrained_arch,
                                 source_format=model_config.pretrained_format)
  return graft(variables, pretrained, targets)


def no_targets(path) -> str:
  return (f"model.pretrained={path} is set but model.pretrained_targets is empty; say which "
          "submodule loads which part of the checkpoint, e.g. {'encoder': ''}")
