"""The start-up check of model.pretrained: before any data work, in seconds, a row whose
weights are missing or wrong stops with one line saying what it needs (dermjax.main and
dermjax.train call `check_pretrained`)."""

import os

from dermjax import config_lib
from dermjax import faults
from dermjax import weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# torchvision's ImageNet file (IMAGENET1K_V1) of each architecture: what a paper row needs.
TORCHVISION_FILES = {
    "alexnet": "alexnet-owt-7be5be79.pth", "vgg16": "vgg16-397923af.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth", "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth", "resnet101": "resnet101-63fe2227.pth",
    "resnext50_32x4d": "resnext50_32x4d-7cdf4587.pth", "densenet121": "densenet121-a639ec97.pth",
}


def convert_command(arch: str) -> str:
  """The command that converts torchvision's ImageNet file of `arch` into weights/<arch>."""
  return (f"python scripts/convert_weights.py --arch={arch} "
          f"--src={TORCHVISION_FILES.get(arch, arch + '.pth')} --out=weights/{arch}")


def _imagenet_need(arch: str) -> str:
  return (f"ImageNet {arch} weights: bring torchvision's {TORCHVISION_FILES.get(arch, arch)}, "
          f"convert it once ({convert_command(arch)}) and add "
          f"--config.model.pretrained=weights/{arch}")


def _run_model(spec: str) -> str:
  """model.name of the table row `spec` ("configs/<table>.py:<arg>", the path relative to the
  working directory or to the repository)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    path = os.path.join(REPO, path)
  return config_lib.load_config(path, arg or None).model.name


def check_pretrained(model_config):
  """Raises RunError (exit status 2, one line) when model.pretrained cannot be what the row
  grafts: unset although pretrained_targets are given (unless model.from_scratch), a path
  that does not exist, a dermjax run of another model (model.pretrained_run names the row
  whose run is expected; without it ImageNet weights are, or a run of this very model),
  weights where a run is expected, or a converted folder of another architecture. Reads
  at most a config.json or a safetensors header: seconds, before any data work."""
  path = model_config.get("pretrained")
  targets = model_config.get("pretrained_targets") or {}
  arch = model_config.get("pretrained_arch")
  run_spec = model_config.get("pretrained_run")
  expected_run = _run_model(run_spec) if run_spec else None
  need = (f"a finished {expected_run} run: train it first (python -m dermjax.main "
          f"--config={run_spec} --workdir=STAGE1) and add --config.model.pretrained=STAGE1"
          if run_spec else _imagenet_need(arch))
  fail = lambda text: faults.RunError(text, exit_code=2)
  if not path:
    if targets and not model_config.get("from_scratch", False):
      raise fail(f"this row fine-tunes {need} (or pass --config.model.from_scratch=True to "
                 "train from a random initialisation)")
    return
  if not targets:
    raise fail(weights.no_targets(path))
  if not os.path.exists(path):
    raise fail(f"model.pretrained={path} does not exist; this row needs {need}")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    found = config_lib.load_run_config(path).model.name
    if found != (expected_run or model_config.get("name")):
      raise fail(f"model.pretrained={path} is a dermjax run of model {found!r}, but this row "
                 f"(model {model_config.get('name')!r}) needs {need}")
    return
  if run_spec:
    raise fail(f"model.pretrained={path} is not a dermjax run (no checkpoints/ folder); this "
               f"row needs {need}")
  converted = os.path.join(path, weights.CONVERTED_FILE) if os.path.isdir(path) else path
  if os.path.isdir(path) and not os.path.isfile(converted):
    raise fail(f"model.pretrained={path} is a folder with neither {weights.CONVERTED_FILE} "
               f"(scripts/convert_weights.py) nor checkpoints/ (a dermjax run); this row "
               f"needs {need}")
  if converted.endswith(".safetensors"):
    meta = weights.safetensors_metadata(converted)
    if meta.get("format") == "dermjax" and meta.get("arch") != arch:
      raise fail(f"model.pretrained={path} was converted for {meta.get('arch')}, but this row "
                 f"needs {need}")
