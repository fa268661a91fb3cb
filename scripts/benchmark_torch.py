"""The gaze model's train step in plain PyTorch eager: the peer a user would otherwise run.

Same architecture as dermjax.models.gaze built by configs/gaze.py "thesis" (thesis Sec. 3;
same widths, T, input size, frozen encoder, batch): VGG16-BN blocks 1-3 frozen (eval-mode
BN, no grad), the Attentive ConvLSTM unrolled for T steps, the decoder (skip averaging with
pool3/pool2/pool1, x2 nearest upsample, conv blocks, reflect padding) and structure head
once per step as the thesis's code does (--batched_decoder: one pass over the T * B hidden
states, as the flax model does), the diagnosis branch (VGG16-BN blocks 4-5 with frozen BN on
the last attended features, GAP, concatenated with the GAPs of every attended feature map)
and the thesis's loss: focal diagnosis loss + 1 - softIoU and cross-entropy over
predicted/true structure pairs matched per image by scipy's Hungarian solver
(linear_sum_assignment) on host, mini-batch balanced. Adam updates every trainable
parameter. Channels-last tensors, fp32 on CPU; `--dtype=bfloat16` runs the forward pass
under torch.autocast (fp32 parameters and loss).

Timed like scripts/profile_step.py (dermjax.profiling.time_steps: warm-up steps, then per-step
wall times with device synchronisation; median). Synthetic inputs (random image, random
0/1 lesion and attribute masks): speed does not depend on the data.

  python scripts/benchmark_torch.py --image_size=224 --batch_size=8 --num_steps=5
      [--compile=both]   # also torch.compile (inductor), timed beside eager in the same run
"""

import argparse
import json
import statistics
import time

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import nn

from dermjax import fileio
from dermjax import profiling
from dermjax.models.gaze import flops as gaze_flops

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
NUM_STRUCTURES = 6
NUM_ATTRIBUTES = 5
GAZE_ATTRIBUTE_INDICES = (0, 1, 2, 3)


def conv_bn_relu(cin, cout, batch_norm=True):
  layers = [nn.Conv2d(cin, cout, 3, padding=1)]
  if batch_norm:
    layers.append(nn.BatchNorm2d(cout))
  layers.append(nn.ReLU(inplace=True))
  return layers


def vgg_block(b, cin):
  """VGG16-BN block b (1..5), not pooled: [B, cin, H, W] -> [B, C_b, H, W]."""
  cout, num_convs = VGG16_BLOCKS[b - 1]
  layers = []
  for _ in range(num_convs):
    layers += conv_bn_relu(cin, cout)
    cin = cout
  return nn.Sequential(*layers)


class Encoder(nn.Module):
  """VGG16-BN blocks 1-3: image -> [pool1, pool2, pool3] (pool3 is X' [B, 256, H/8, W/8])."""

  def __init__(self):
    super().__init__()
    self.blocks = nn.ModuleList([vgg_block(1, 3), vgg_block(2, 64), vgg_block(3, 128)])

  def forward(self, x):
    pools = []
    for block in self.blocks:
      x = F.max_pool2d(block(x), 2)
      pools.append(x)
    return pools


def conv3x3(cin, cout, padding_mode, bias=True):
  return nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding_mode, bias=bias)


class AttentiveConvLSTM(nn.Module):
  """SAM's Attentive ConvLSTM (thesis eqs. 1-9) on X' [B, F, h, w], unrolled T steps.

  As dermjax.models.gaze: W_a * X' computed once; U_a, V_a, U without bias; gates (i, f, o, g).
  """

  def __init__(self, features, padding_mode):
    super().__init__()
    self.w_a = conv3x3(features, features, padding_mode)
    self.u_a = conv3x3(features, features, padding_mode, bias=False)
    self.v_a = conv3x3(features, 1, padding_mode, bias=False)
    self.w = conv3x3(features, 4 * features, padding_mode)
    self.u = conv3x3(features, 4 * features, padding_mode, bias=False)

  def forward(self, x, num_steps):
    b, _, h, w = x.shape
    state_h = torch.zeros_like(x)
    state_c = torch.zeros_like(x)
    wa_x = self.w_a(x)
    attended, hiddens, attentions = [], [], []
    for _ in range(num_steps):
      z = self.v_a(torch.tanh(wa_x + self.u_a(state_h)))              # eq. 1
      a = torch.softmax(z.flatten(1), dim=1).view(b, 1, h, w)          # eq. 2
      xt = a * x                                                       # eq. 3
      i, f, o, g = torch.chunk(self.w(xt) + self.u(state_h), 4, dim=1)
      state_c = torch.sigmoid(f) * state_c + torch.sigmoid(i) * torch.tanh(g)  # eqs. 4-8
      state_h = torch.sigmoid(o) * torch.tanh(state_c)                # eq. 9
      attended.append(xt)
      hiddens.append(state_h)
      attentions.append(a)
    return attended, hiddens, attentions


# Decoder blocks: output channels of each 3x3 conv (dermjax.models.gaze.DECODER_BLOCKS).
DECODER_BLOCKS = ((256, 256, 128), (128, 64), (64, 1))


class Decoder(nn.Module):
  """H [N, 256, h, w] + skips (pool3, pool2, pool1) -> mask logits [N, 1, 8h, 8w], pools [N, 448].

  Each block: average with the skip, global pool, x2 nearest upsample, 3x3 convs + BN + ReLU
  (the last conv gives the mask logits).
  """

  def __init__(self, padding_mode):
    super().__init__()
    blocks, cin = [], 256
    for b, features in enumerate(DECODER_BLOCKS):
      layers = []
      for k, cout in enumerate(features):
        layers.append(conv3x3(cin, cout, padding_mode))
        if not (b == len(DECODER_BLOCKS) - 1 and k == len(features) - 1):
          layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
      blocks.append(nn.Sequential(*layers))
    self.blocks = nn.ModuleList(blocks)

  def forward(self, x, skips):
    pools = []
    for block, skip in zip(self.blocks, skips):
      if skip.shape[0] != x.shape[0]:  # Skips shared by the T steps folded into the batch.
        skip = skip.repeat(x.shape[0] // skip.shape[0], 1, 1, 1)
      x = (x + skip) / 2
      pools.append(x.mean(dim=(2, 3)))
      x = block(F.interpolate(x, scale_factor=2, mode="nearest"))
    return x, torch.cat(pools, dim=1)


class StructureHead(nn.Module):
  """[N, 448] -> [N, S]: dense 224, ReLU, dense S."""

  def __init__(self, features=448):
    super().__init__()
    self.dense1 = nn.Linear(features, features // 2)
    self.dense2 = nn.Linear(features // 2, NUM_STRUCTURES)

  def forward(self, x):
    return self.dense2(F.relu(self.dense1(x)))


class Diagnosis(nn.Module):
  """VGG16-BN blocks 4-5 (pooled) on X~'_{T-1}; concat(GAP(pool5), GAP(X~'_t) for all t) -> dense K."""

  def __init__(self, num_steps, num_classes):
    super().__init__()
    self.blocks = nn.ModuleList([vgg_block(4, 256), vgg_block(5, 512)])
    self.fc = nn.Linear(512 + num_steps * 256, num_classes)

  def forward(self, attended):
    x = attended[-1]
    for block in self.blocks:
      x = F.max_pool2d(block(x), 2)
    features = [x.mean(dim=(2, 3))] + [a.mean(dim=(2, 3)) for a in attended]
    return self.fc(torch.cat(features, dim=1))


class GazeModel(nn.Module):
  """The gaze network as configs/gaze.py "thesis" builds it: frozen encoder (eval-mode BN, no
  grad), frozen BN in the diagnosis VGG blocks, reflect padding in the ConvLSTM and decoder."""

  def __init__(self, num_steps, *, num_classes=1, padding_mode="reflect", frozen_bn=True,
               batched_decoder=False):
    super().__init__()
    self.num_steps = num_steps
    self.batched_decoder = batched_decoder
    self.frozen_bn = frozen_bn
    self.encoder = Encoder()
    self.lstm = AttentiveConvLSTM(256, padding_mode)
    self.decoder = Decoder(padding_mode)
    self.structure_head = StructureHead()
    self.diagnosis = Diagnosis(num_steps, num_classes)
    for p in self.encoder.parameters():
      p.requires_grad_(False)

  def train(self, mode=True):
    super().train(mode)
    self.encoder.eval()  # Frozen encoder: running averages.
    if self.frozen_bn:
      self.diagnosis.eval()  # Frozen BN (no dropout there).
    return self

  def forward(self, image):
    with torch.no_grad():
      pool1, pool2, pool3 = self.encoder(image)
    skips = [pool3, pool2, pool1]
    attended, hiddens, attentions = self.lstm(pool3, self.num_steps)
    b, t = image.shape[0], self.num_steps
    if self.batched_decoder:  # The decoder has no recurrence: one pass over the T * B maps.
      masks, pools = self.decoder(torch.cat(hiddens, 0), skips)
      classes = self.structure_head(pools)
      masks = masks.view(t, b, *masks.shape[2:]).transpose(0, 1)
      classes = classes.view(t, b, -1).transpose(0, 1)
    else:  # One decoder pass per step, as the thesis's code.
      outs = [self.decoder(h, skips) for h in hiddens]
      masks = torch.stack([m[:, 0] for m, _ in outs], 1)
      classes = torch.stack([self.structure_head(p) for _, p in outs], 1)
    return {
        "logits": self.diagnosis(attended),
        "masks": masks,                                  # [B, T, H, W] logits
        "structure_logits": classes,                     # [B, T, S]
        "attention": torch.stack(attentions, 1)[:, :, 0],
    }


def structure_masks(masks):
  """[B, 1 + A, H, W] lesion + attribute 0/1 masks -> [B, S, H, W] (thesis eqs. 17-19)."""
  masks = masks > 0.5
  lesion = masks[:, 0]
  attributes = masks[:, 1:][:, list(GAZE_ATTRIBUTE_INDICES)]
  dermo = attributes.any(dim=1)
  skin = ~(lesion | dermo)
  lesion_ = ~(skin | dermo)
  return torch.cat([lesion_[:, None], skin[:, None], attributes], dim=1).float()


def soft_iou_matrix(probs, structures, eps=1e-6):
  """Eq. 10 for every pair: probs [B, T, H, W], structures [B, S, H, W] -> [B, S, T]."""
  inter = torch.einsum("bthw,bshw->bst", probs, structures)
  union = structures.sum(dim=(2, 3))[:, :, None] + probs.sum(dim=(2, 3))[:, None, :] - inter
  return (inter + eps) / (union + eps)


def focal_loss(logits, labels, gamma):
  """Binary focal loss (thesis eq. 12) on [B, 1] logits; mean over the batch."""
  logits = logits[:, 0]
  labels = labels.float()
  ce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
  p = torch.sigmoid(logits)
  p_t = p * labels + (1 - p) * (1 - labels)
  return ((1 - p_t) ** gamma * ce).mean()


def gaze_loss(outputs, masks, label, *, gamma=2.0, alpha=0.25, beta=0.75, gamma_seg=0.75, mu=0.25):
  """Thesis eq. 14 as dermjax.models.gaze.loss with configs/gaze.py "thesis" (balancing
  "batch"). Per image, the S x T cost 1 - softIoU over the present structures is matched by
  scipy's Hungarian solver on host; 1 - softIoU and the structure CE are averaged over the
  matched pairs, each pair weighted 1 / (times its structure is matched in the batch)."""
  structures = structure_masks(masks)                            # [B, S, H, W]
  probs = torch.sigmoid(outputs["masks"].float())                # [B, T, H, W]
  cost = 1 - soft_iou_matrix(probs, structures)                  # [B, S, T]
  present = (structures.flatten(2).amax(2) > 0.5).cpu().numpy()  # [B, S]
  cost_np = cost.detach().cpu().numpy()
  rows, cols, batch_index = [], [], []
  for b in range(cost_np.shape[0]):
    s_idx = np.flatnonzero(present[b])
    r, c = scipy.optimize.linear_sum_assignment(cost_np[b][s_idx])
    rows.append(s_idx[r])
    cols.append(c)
    batch_index.append(np.full(len(r), b))
  device = cost.device
  rows, cols, batch_index = (torch.from_numpy(np.concatenate(v)).long().to(device)
                             for v in (rows, cols, batch_index))
  counts = torch.bincount(rows, minlength=NUM_STRUCTURES).float()
  w = 1.0 / counts[rows]
  seg = (cost[batch_index, rows, cols] * w).sum() / w.sum()
  cls = (F.cross_entropy(outputs["structure_logits"].float()[batch_index, cols], rows,
                         reduction="none") * w).sum() / w.sum()
  diag = focal_loss(outputs["logits"].float(), label, gamma)
  return alpha * diag + beta * (gamma_seg * seg + mu * cls)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--num_steps", type=int, default=5, help="T, the number of gazes.")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
  parser.add_argument("--num_warmup", type=int, default=2)
  parser.add_argument("--num_timed", type=int, default=3)
  parser.add_argument("--batched_decoder", action="store_true",
                      help="Run the T decoder passes as one batched pass (not in the thesis code).")
  parser.add_argument("--no_channels_last", dest="channels_last", action="store_false")
  parser.add_argument("--matmul_peak", action=argparse.BooleanOptionalAction, default=True,
                      help="Measure the device's matmul peak (for the MFU).")
  parser.add_argument("--matmul_peak_n", type=int, default=2048,
                      help="Size n of the [n, n] @ [n, n] peak products.")
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
  parser.add_argument("--compile", default="off", choices=("off", "on", "both"),
                      help="torch.compile the model (inductor backend; the host Hungarian loss "
                      "stays eager): 'on' times the compiled step only, 'both' eager then "
                      "compiled in one run (results under 'train_step' and 'compiled').")
  parser.add_argument("--compile_mode", default="default",
                      help="torch.compile mode (default | reduce-overhead | max-autotune).")
  parser.add_argument("--json_out", default="", help="Also write the results here as JSON.")
  return parser.parse_args(argv)


def run(args) -> dict:
  """Builds the model, times `num_warmup + num_timed` train steps; returns the results dict."""
  if args.threads:
    torch.set_num_threads(args.threads)
  device = torch.device(args.device)
  torch.manual_seed(0)
  model = GazeModel(args.num_steps, batched_decoder=args.batched_decoder).to(device)
  memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
  model = model.to(memory_format=memory_format).train()
  optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                               betas=(0.92, 0.96), weight_decay=1e-6)
  gen = torch.Generator().manual_seed(0)
  b, s = args.batch_size, args.image_size
  image = torch.randn(b, 3, s, s, generator=gen).to(device, memory_format=memory_format)
  masks = (torch.rand(b, 1 + NUM_ATTRIBUTES, s, s, generator=gen) > 0.7).float().to(device)
  label = (torch.rand(b, generator=gen) > 0.8).long().to(device)

  def make_step(forward):
    def step(_):
      optimizer.zero_grad(set_to_none=True)
      with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
        outputs = forward(image)
      loss = gaze_loss(outputs, masks, label)
      loss.backward()
      optimizer.step()
      return loss
    return step

  def timed(forward):
    """(first step's seconds, incl. compilation; per-step seconds of the timed steps)."""
    step = make_step(forward)
    start = time.perf_counter()
    profiling.torch_sync(str(device))(step(None))
    first = time.perf_counter() - start
    _, times = profiling.time_steps(step, None, num_warmup=max(args.num_warmup - 1, 0),
                                    num_timed=args.num_timed,
                                    sync=profiling.torch_sync(str(device)))
    return first, times

  variants = {"off": ("eager",), "on": ("compiled",), "both": ("eager", "compiled")}[args.compile]
  measured = {}
  for variant in variants:
    forward = model
    if variant == "compiled":
      forward = torch.compile(model, backend="inductor", mode=args.compile_mode)
    measured[variant] = timed(forward)
  peak = None
  if args.matmul_peak:
    peak = profiling.matmul_peak_torch(args.dtype, n=args.matmul_peak_n, device=str(device))
  flops = gaze_flops.gaze_train_flops(s, args.num_steps) * b
  first, times = measured[variants[0]]
  result = {
      "framework": "torch",
      "model": "gaze",
      "image_size": s,
      "batch_size": b,
      "num_steps": args.num_steps,
      "dtype": args.dtype,
      "batched_decoder": args.batched_decoder,
      "channels_last": args.channels_last,
      "train_step": profiling.summarize(times, batch_size=b, flops_per_step=flops, peak_flops=peak),
      "flops_source": "analytic (dermjax.gaze_flops.gaze_train_flops)",
      "matmul_peak_tflops": peak / 1e12 if peak else None,
      "memory": {"process_peak_rss_bytes": profiling.peak_memory()["process_peak_rss_bytes"]},
      "machine": profiling.machine_info(torch_device=str(device), jax_devices=False),
      "times_s": times,
      "first_step_s": first,
      "compiled_model": variants[0] == "compiled",
  }
  if len(variants) == 2:
    first_c, times_c = measured["compiled"]
    result["compiled"] = {
        "backend": "inductor", "mode": args.compile_mode,
        "train_step": profiling.summarize(times_c, batch_size=b, flops_per_step=flops,
                                          peak_flops=peak),
        "times_s": times_c, "first_step_s": first_c,
        "speedup_over_eager": statistics.median(times) / statistics.median(times_c)}
  if device.type == "cuda":
    result["memory"]["device_peak_bytes"] = torch.cuda.max_memory_allocated(device)
  return result


def main(argv=None) -> dict:
  args = parse_args(argv)
  result = run(args)
  ts = result["train_step"]
  rows = [("train step median (s)", ts["median_s"]), ("images/s", ts["images_per_s"])]
  if "mfu" in ts:
    rows += [("achieved TFLOP/s", ts["achieved_tflops"]), ("MFU", ts["mfu"])]
  if "compiled" in result:
    c = result["compiled"]
    rows += [("torch.compile step median (s)", c["train_step"]["median_s"]),
             ("torch.compile images/s", c["train_step"]["images_per_s"]),
             ("torch.compile first step (s)", c["first_step_s"]),
             ("torch.compile speedup over eager", c["speedup_over_eager"])]
  print(profiling.format_table(rows))
  print(json.dumps(result, indent=1))
  if args.json_out:
    fileio.write_json(args.json_out, result)
  return result


if __name__ == "__main__":
  main()
