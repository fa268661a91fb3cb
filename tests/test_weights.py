"""Pretrained-weight import: PyTorch parity for every backbone and format, mismatch reports, graft."""

import os
import runpy

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dermjax import config_lib
from dermjax import weights
from dermjax.models.backbones import BACKBONES, build_backbone
from dermjax.models.backbones.vgg import VGGStages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small inputs keep CI cheap; VGG at 64 px makes pool5 2x2, so the 7x7 adaptive pool really pools.
SIZES = {"vgg16": 64, "vgg16_bn": 64, "resnet18": 64, "resnet50": 32, "resnet101": 32,
         "resnext50_32x4d": 32, "densenet121": 32}


def rel_err(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def to_timm(state, arch):
  """torchvision state dict -> timm names/shapes (timm's VGG conv-ifies the classifier)."""
  if not arch.startswith("vgg"):
    return dict(state)
  renames = {"classifier.0.": ("pre_logits.fc1.", (4096, 512, 7, 7)),
             "classifier.3.": ("pre_logits.fc2.", (4096, 4096, 1, 1)), "classifier.6.": ("head.fc.", None)}
  out = {}
  for key, value in state.items():
    for old, (new, shape) in renames.items():
      if key.startswith(old):
        key = new + key[len(old):]
        value = value.reshape(shape) if shape is not None and key.endswith("weight") else value
    out[key] = value
  return out


def write_checkpoint(model, arch, fmt, directory):
  """Exports the torch model's state dict as `fmt`; returns the file path."""
  import torch  # pylint: disable=g-import-not-at-top
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  state = model.state_dict()
  if fmt == "torchvision.pth":
    path = os.path.join(directory, f"{arch}.pth")
    torch.save(state, path)
  else:
    naming = fmt.split(".")[0]
    path = os.path.join(directory, f"{arch}_{naming}.safetensors")
    state = to_timm(state, arch) if naming == "timm" else state
    save_file({k: v.contiguous() for k, v in state.items()}, path)
  return path


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_parity_with_pytorch(arch, tmp_path):
  """Random torch weights + BN stats, exported as .pth (torchvision) and .safetensors (timm):
  logits and every tapped stage agree with the torch forward pass in eval mode."""
  torch = pytest.importorskip("torch")
  import torch_reference  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = torch_reference.randomize_(torch_reference.build(arch))
  x = np.random.default_rng(0).normal(size=(2, 3, SIZES[arch], SIZES[arch])).astype(np.float32)
  with torch.no_grad():
    ref = {k: v.numpy() for k, v in model.taps(torch.from_numpy(x)).items()}
  module = build_backbone(arch, num_classes=1000)
  apply = jax.jit(lambda v, x: module.apply(v, x))
  formats = ["torchvision.pth", "timm.safetensors"]
  if arch == "vgg16_bn":
    formats.append("torchvision.safetensors")
  for fmt in formats:
    path = write_checkpoint(model, arch, fmt, tmp_path)
    out = apply(weights.load_pretrained(path, arch), jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert set(ref) <= set(out), (fmt, sorted(set(ref) - set(out)))
    for name, expected in ref.items():
      got = np.asarray(out[name])
      got = got.transpose(0, 3, 1, 2) if got.ndim == 4 else got
      assert got.shape == expected.shape, (fmt, name)
      assert rel_err(got, expected) <= 1e-4, (fmt, name, rel_err(got, expected))
    os.remove(path)


def resnet18_state(num_classes=1000):
  """A random resnet18 state dict with the exact torchvision keys and shapes, as numpy."""
  rng = np.random.default_rng(0)
  shapes = {path: shape for (_, path), shape in weights.expected_shapes("resnet18", num_classes).items()}
  state = {}
  for path, prefix, kind in weights.TABLES["resnet18"]("torchvision").body + [("fc", "fc", "dense")]:
    for f in weights.KINDS[kind]:
      if f"{path}/{f.leaf}" in shapes:
        state[f"{prefix}.{f.torch_name}"] = rng.normal(size=f.torch_shape(shapes[f"{path}/{f.leaf}"]))
  return state


def test_mismatch_lists_every_offending_key():
  state = resnet18_state()
  del state["layer1.0.conv1.weight"]
  state["layer2.0.conv1.weight"] = np.zeros((128, 32, 3, 3))
  state["extra.weight"] = np.zeros((3,))
  state["layer1.0.conv1.bias"] = np.zeros((64,))
  with pytest.raises(weights.CheckpointMismatchError) as e:
    weights.convert(state, "resnet18", source="ckpt.pth")
  msg = str(e.value)
  assert "ckpt.pth" in msg and "4 problem(s)" in msg, msg
  assert "missing layer1.0.conv1.weight (64, 64, 3, 3)" in msg
  assert "layer2.0.conv1.weight: checkpoint (128, 32, 3, 3), resnet18 expects (128, 64, 3, 3)" in msg
  assert "unexpected extra.weight (3,)" in msg
  assert "unexpected layer1.0.conv1.bias (64,)" in msg


def test_head_is_optional_and_sized_by_the_checkpoint():
  state = resnet18_state(num_classes=2)
  assert weights.convert(state, "resnet18")["params"]["fc"]["kernel"].shape == (512, 2)
  body = {k: v for k, v in state.items() if not k.startswith("fc.")}
  variables = weights.convert(body, "resnet18")
  assert "fc" not in variables["params"]
  assert variables["batch_stats"]["layer4_1"]["bn2"]["var"].shape == (512,)
  with pytest.raises(weights.CheckpointMismatchError, match="missing fc.bias"):
    weights.convert({**body, "fc.weight": state["fc.weight"]}, "resnet18")


def test_key_normalisation():
  state = {"module.features.denseblock1.denselayer2.norm.1.running_var": 1,
           "module.features.denseblock1.denselayer2.conv.2.weight": 2,
           "module.features.transition1.norm.weight": 3,
           "module.features.norm0.num_batches_tracked": 4}
  assert weights.normalise_keys(state) == {"features.denseblock1.denselayer2.norm1.running_var": 1,
                                           "features.denseblock1.denselayer2.conv2.weight": 2,
                                           "features.transition1.norm.weight": 3}


def test_converted_checkpoint_round_trip_and_file_errors(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  state = resnet18_state()
  src = tmp_path / "resnet18.pth"
  torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state.items()}, "epoch": 3}, src)
  main = runpy.run_path(os.path.join(REPO, "scripts", "convert_weights.py"), run_name="convert")["main"]
  out = main(["--arch=resnet18", f"--src={src}", f"--out={tmp_path / 'conv'}"])
  direct = weights.flatten_variables(weights.load_pretrained(str(src), "resnet18"))
  assert f"{sum(v.size for v in direct.values()):,} values" in capsys.readouterr().out
  for path in (str(tmp_path / "conv"), out):
    loaded = weights.flatten_variables(weights.load_pretrained(path, "resnet18"))
    assert loaded.keys() == direct.keys()
    for k, v in direct.items():
      np.testing.assert_array_equal(loaded[k], v)
  with pytest.raises(ValueError, match="converted for arch 'resnet18'"):
    weights.load_pretrained(str(tmp_path / "conv"), "resnet50")
  (tmp_path / "weights.npz").write_bytes(b"")
  with pytest.raises(ValueError, match="weights.npz: unknown checkpoint type"):
    weights.load_pretrained(str(tmp_path / "weights.npz"), "resnet18")
  with pytest.raises(FileNotFoundError, match="nothing.pth"):
    weights.load_pretrained(str(tmp_path / "nothing.pth"), "resnet18")
  pickled = tmp_path / "pickled.pth"
  torch.save({"model": ml_collections.ConfigDict({"a": 1})}, pickled)
  with pytest.raises(ValueError, match="pickled.pth: not a weights-only"):
    weights.load_pretrained(str(pickled), "resnet18")


class GazeLike(nn.Module):
  """The gaze model's layout: VGG blocks 1-3 as "encoder", 4-5 as "diagnosis_vgg", a new head."""

  @nn.compact
  def __call__(self, x):
    enc = VGGStages(blocks=(1, 2, 3), name="encoder")(x)
    diag = VGGStages(blocks=(4, 5), name="diagnosis_vgg")(enc["pool3"])
    return {"pool3": enc["pool3"], "pool5": diag["pool5"],
            "logits": nn.Dense(1, name="classifier")(jnp.mean(diag["pool5"], axis=(1, 2)))}


def test_gaze_encoder_and_blocks_4_5_load_from_one_vgg16_bn_checkpoint(tmp_path):
  torch = pytest.importorskip("torch")
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top
  model = torch_reference.randomize_(torch_reference.build("vgg16_bn"))
  path = str(tmp_path / "vgg16_bn.safetensors")
  save_file({k: v.contiguous() for k, v in model.state_dict().items() if k.startswith("features.")}, path)
  x = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    ref = {k: v.numpy() for k, v in model.taps(torch.from_numpy(x)).items()}

  gaze = GazeLike()
  x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
  variables = jax.jit(gaze.init)(jax.random.key(0), x_nhwc)
  config = config_lib.base_config().model   # every model field, as a run has them.
  config.pretrained_arch = "vgg16_bn"
  config.pretrained_targets = {"encoder": "", "diagnosis_vgg": ""}
  assert weights.apply_pretrained(variables, config) is variables
  config.pretrained = path
  loaded = weights.apply_pretrained(variables, config)
  out = jax.jit(gaze.apply)(loaded, x_nhwc)
  for name in ("pool3", "pool5"):
    assert rel_err(np.asarray(out[name]).transpose(0, 3, 1, 2), ref[name]) <= 1e-4, name
  np.testing.assert_array_equal(loaded["params"]["classifier"]["kernel"],
                                variables["params"]["classifier"]["kernel"])
  assert set(loaded["batch_stats"]["diagnosis_vgg"]) == {"block4", "block5"}

  config.pretrained_targets = {}
  with pytest.raises(ValueError, match="pretrained_targets is empty"):
    weights.apply_pretrained(variables, config)


def test_graft_reports_every_missing_or_mismatched_leaf():
  variables = {"params": {"encoder": {"conv": {"kernel": np.zeros((3, 3, 3, 8)), "bias": np.zeros(8)}},
                          "head": {"kernel": np.zeros((8, 2)), "bias": np.zeros(2)}},
               "batch_stats": {"encoder": {"bn": {"mean": np.zeros(8)}}}}
  pretrained = {"params": {"conv": {"kernel": np.ones((3, 3, 3, 8)), "bias": np.ones(8)},
                           "fc": {"kernel": np.ones((8, 1000)), "bias": np.ones(1000)}},
                "batch_stats": {"bn": {"mean": np.ones(8)}}}
  out = weights.graft(variables, pretrained, {"encoder": ""})
  np.testing.assert_array_equal(out["params"]["encoder"]["conv"]["kernel"], 1)
  np.testing.assert_array_equal(out["batch_stats"]["encoder"]["bn"]["mean"], 1)
  np.testing.assert_array_equal(out["params"]["head"]["kernel"], 0)
  np.testing.assert_array_equal(variables["params"]["encoder"]["conv"]["kernel"], 0)  # Not mutated.
  out = weights.graft(variables, pretrained, {"encoder/conv": "conv"})
  np.testing.assert_array_equal(out["batch_stats"]["encoder"]["bn"]["mean"], 0)

  with pytest.raises(weights.CheckpointMismatchError) as e:
    weights.graft(variables, pretrained, {"head": "fc", "encoder": "missing", "decoder": ""})
  msg = str(e.value)
  assert "params/head/kernel: model (8, 2), pretrained params/fc/kernel (8, 1000)" in msg
  assert "params/head/bias: model (2,), pretrained params/fc/bias (1000,)" in msg
  assert "params/encoder/conv/kernel (3, 3, 3, 8): pretrained has no params/missing/conv/kernel" in msg
  assert "batch_stats/encoder/bn/mean (8,): pretrained has no batch_stats/missing/bn/mean" in msg
  assert "target 'decoder' is not a submodule" in msg
  assert "6 problem(s)" in msg


def test_bfloat16_safetensors_are_read_as_float32(tmp_path):
  torch = pytest.importorskip("torch")
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  state = resnet18_state()
  save_file({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in state.items()},
            str(tmp_path / "bf16.safetensors"))
  kernel = weights.load_pretrained(str(tmp_path / "bf16.safetensors"), "resnet18")["params"]["fc"]["kernel"]
  assert kernel.dtype == np.float32
  np.testing.assert_allclose(kernel, state["fc.weight"].T, rtol=1e-2)
