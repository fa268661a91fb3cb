"""The gaze model's train step in plain PyTorch eager: the peer a user would otherwise run.

Same architecture as dermjax.models.gaze (thesis Sec. 3; same widths, T, input size, frozen
encoder, batch): VGG16-BN blocks 1-3 frozen (eval-mode BN, no grad), the Attentive ConvLSTM
unrolled for T steps, the decoder (x2 upsample, skip averaging, conv blocks) and structure
head per step, the diagnosis branch (VGG16-BN blocks 4-5 on the last attended features, GAP,
concatenated with the GAPs of every attended feature map) and the thesis's loss: focal
diagnosis loss + 1 - softIoU and cross-entropy over predicted/true structure pairs matched
per image by scipy's Hungarian solver (linear_sum_assignment) on host. Adam updates every
trainable parameter. Channels-last tensors, fp32 on CPU; `--dtype=bfloat16` runs the
forward pass under torch.autocast (fp32 parameters and loss).

Timed like scripts/profile.py (dermjax.profiling.time_steps: warm-up steps, then per-step
wall times with device synchronisation; median). Synthetic inputs (random image, random
0/1 lesion and attribute masks): speed does not depend on the data.

  python scripts/benchmark_torch.py --image_size=224 --batch_size=8 --num_steps=5
"""

import argparse
import json
import os
import sys

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dermjax import profiling  # noqa: E402  (repo root on the path for `python scripts/...`)

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
  """VGG16-BN blocks 1-3: image -> (block1, block2, block3 pre-pool skips, pool3)."""

  def __init__(self):
    super().__init__()
    self.blocks = nn.ModuleList([vgg_block(1, 3), vgg_block(2, 64), vgg_block(3, 128)])

  def forward(self, x):
    skips = []
    for block in self.blocks:
      x = block(x)
      skips.append(x)
      x = F.max_pool2d(x, 2)
    return skips, x


class AttentiveConvLSTM(nn.Module):
  """SAM's Attentive ConvLSTM (thesis eqs. 1-9) on X' [B, C, h, w], unrolled T steps."""

  def __init__(self, features, hidden, attention, kernel):
    super().__init__()
    pad = kernel // 2
    self.w_a = nn.Conv2d(features, attention, kernel, padding=pad)
    self.u_a = nn.Conv2d(hidden, attention, kernel, padding=pad, bias=False)
    self.v_a = nn.Conv2d(attention, 1, kernel, padding=pad, bias=False)
    self.w = nn.Conv2d(features, 4 * hidden, kernel, padding=pad)
    self.u = nn.Conv2d(hidden, 4 * hidden, kernel, padding=pad, bias=False)
    self.hidden = hidden

  def forward(self, x, num_steps):
    b, _, h, w = x.shape
    state_h = x.new_zeros(b, self.hidden, h, w).contiguous(memory_format=torch.channels_last)
    state_c = torch.zeros_like(state_h)
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


class Decoder(nn.Module):
  """Per step: H_t [B, 256, h, w] + encoder skips -> mask logit [B, 1, 8h, 8w], structure logits [B, S].

  Three blocks, each preceded by a x2 upsample and the average with the encoder block of the
  same size; GAPs before each block (256 + 128 + 64) feed two dense layers.
  """

  def __init__(self, structure_hidden):
    super().__init__()
    self.blocks = nn.ModuleList([
        nn.Sequential(*conv_bn_relu(256, 256), *conv_bn_relu(256, 256), *conv_bn_relu(256, 128)),
        nn.Sequential(*conv_bn_relu(128, 128), *conv_bn_relu(128, 64)),
        nn.Sequential(*conv_bn_relu(64, 64), nn.Conv2d(64, 1, 3, padding=1)),
    ])
    self.fc1 = nn.Linear(256 + 128 + 64, structure_hidden)
    self.fc2 = nn.Linear(structure_hidden, NUM_STRUCTURES)

  def forward(self, h, skips):
    pooled = []
    x = h
    for block, skip in zip(self.blocks, reversed(skips)):
      x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
      x = (x + skip) / 2
      pooled.append(x.mean(dim=(2, 3)))
      x = block(x)
    classes = self.fc2(F.relu(self.fc1(torch.cat(pooled, dim=1))))
    return x, classes


class Diagnosis(nn.Module):
  """VGG16-BN blocks 4-5 (pooled) on X~'_{T-1}, GAP, concat GAPs of all X~'_t, dense -> [B, K]."""

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
  """The whole gaze network; encoder frozen (eval-mode BN, no grad)."""

  def __init__(self, num_steps, *, hidden=256, attention=256, kernel=3, structure_hidden=448,
               num_classes=1, batched_decoder=False):
    super().__init__()
    self.num_steps = num_steps
    self.batched_decoder = batched_decoder
    self.encoder = Encoder()
    self.lstm = AttentiveConvLSTM(256, hidden, attention, kernel)
    self.decoder = Decoder(structure_hidden)
    self.diagnosis = Diagnosis(num_steps, num_classes)
    for p in self.encoder.parameters():
      p.requires_grad_(False)

  def train(self, mode=True):
    super().train(mode)
    self.encoder.eval()  # Frozen BN: running averages.
    return self

  def forward(self, image):
    with torch.no_grad():
      skips, x = self.encoder(image)
    attended, hiddens, attentions = self.lstm(x, self.num_steps)
    if self.batched_decoder:  # The decoder has no recurrence: one pass over B * T maps.
      t = self.num_steps
      masks, classes = self.decoder(torch.cat(hiddens, 0), [s.repeat(t, 1, 1, 1) for s in skips])
      masks, classes = masks.chunk(t, 0), classes.chunk(t, 0)
    else:
      masks, classes = zip(*(self.decoder(h, skips) for h in hiddens))
    return {
        "logits": self.diagnosis(attended),
        "masks": torch.stack(masks, 1)[:, :, 0],        # [B, T, H, W] logits
        "structure_logits": torch.stack(classes, 1),    # [B, T, S]
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


def soft_iou(pred, target, eps=1e-6):
  """[..., H, W] probabilities and 0/1 masks -> [...] soft IoU (thesis eq. 10)."""
  inter = (pred * target).sum(dim=(-2, -1))
  union = pred.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1)) - inter
  return (inter + eps) / (union + eps)


def focal_loss(logits, labels, gamma):
  """Binary focal loss (thesis eq. 12) on [B, 1] logits; mean over the batch."""
  logits = logits[:, 0]
  labels = labels.float()
  ce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
  p = torch.sigmoid(logits)
  p_t = p * labels + (1 - p) * (1 - labels)
  return ((1 - p_t) ** gamma * ce).mean()


def gaze_loss(outputs, masks, label, *, weights, gamma=2.0, alpha=0.25, beta=0.75, gamma_seg=0.75,
              mu=0.25):
  """Thesis eq. 14. Per image: S x T cost 1 - softIoU over present structures, Hungarian
  matching on host (scipy), then 1 - softIoU and structure CE over the matched pairs,
  weighted per structure by `weights` [S] (presence weighting, eq. 15)."""
  structures = structure_masks(masks)                        # [B, S, H, W]
  probs = torch.sigmoid(outputs["masks"].float())            # [B, T, H, W]
  iou = soft_iou(probs[:, None], structures[:, :, None])     # [B, S, T]
  present = structures.flatten(2).amax(2) > 0.5              # [B, S]
  cost = (1 - iou).detach().cpu().numpy()
  present_np = present.cpu().numpy()
  rows, cols, batch_index = [], [], []
  for b in range(cost.shape[0]):
    s_idx = np.flatnonzero(present_np[b])
    r, c = scipy.optimize.linear_sum_assignment(cost[b][s_idx])
    rows.append(s_idx[r])
    cols.append(c)
    batch_index.append(np.full(len(r), b))
  rows, cols, batch_index = (torch.from_numpy(np.concatenate(v)).long() for v in (rows, cols, batch_index))
  w = weights[rows]
  seg = ((1 - iou[batch_index, rows, cols]) * w).sum() / w.sum()
  cls = (F.cross_entropy(outputs["structure_logits"].float()[batch_index, cols], rows,
                         reduction="none") * w).sum() / w.sum()
  diag = focal_loss(outputs["logits"].float(), label, gamma)
  return alpha * diag + beta * (gamma_seg * seg + mu * cls)


def presence_weights(presence):
  """Thesis eq. 15: w_i = sum_{s != i} P_s / sum_s P_s."""
  presence = np.asarray(presence, np.float64)
  return torch.tensor((presence.sum() - presence) / presence.sum(), dtype=torch.float32)


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
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
  parser.add_argument("--json_out", default="", help="Also write the results here as JSON.")
  return parser.parse_args(argv)


def gaze_flops_per_image(image_size, num_steps):
  """Analytic FLOPs (2 per multiply-add) of one train step per image: convolutions and dense
  layers only, forward + backward (2x forward, except the frozen encoder's forward-only
  pass and no weight gradient needed for the input of the first trainable layer)."""
  def conv(h, cin, cout, k=3):
    return 2.0 * h * h * cin * cout * k * k

  s = image_size
  encoder = (conv(s, 3, 64) + conv(s, 64, 64) + conv(s // 2, 64, 128) + conv(s // 2, 128, 128)
             + conv(s // 4, 128, 256) + 2 * conv(s // 4, 256, 256))
  h = s // 8
  lstm_step = conv(h, 256, 256) + conv(h, 256, 1) + conv(h, 256, 1024) + conv(h, 256, 1024)
  lstm = conv(h, 256, 256) + num_steps * lstm_step
  decoder_step = (2 * conv(s // 4, 256, 256) + conv(s // 4, 256, 128) + conv(s // 2, 128, 128)
                  + conv(s // 2, 128, 64) + conv(s, 64, 64) + conv(s, 64, 1))
  diagnosis = (conv(h, 256, 512) + 2 * conv(h, 512, 512) + 3 * conv(h // 2, 512, 512))
  trainable_forward = lstm + num_steps * decoder_step + diagnosis
  return encoder + 3 * trainable_forward


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
  weights = presence_weights([2000, 2000, 1131, 126, 573, 116]).to(device)  # thesis Table 1

  def step(_):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
      outputs = model(image)
    loss = gaze_loss(outputs, masks, label, weights=weights)
    loss.backward()
    optimizer.step()
    return loss

  _, times = profiling.time_steps(step, None, num_warmup=args.num_warmup, num_timed=args.num_timed,
                                  sync=profiling.torch_sync(str(device)))
  peak = None
  if args.matmul_peak:
    peak = profiling.matmul_peak_torch(args.dtype, device=str(device))
  flops = gaze_flops_per_image(s, args.num_steps) * b
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
      "flops_source": "analytic (convolutions + dense layers)",
      "matmul_peak_tflops": peak / 1e12 if peak else None,
      "memory": {"process_peak_rss_bytes": profiling.peak_memory()["process_peak_rss_bytes"]},
      "machine": profiling.machine_info(torch_device=str(device), jax_devices=False),
      "times_s": times,
  }
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
  print(profiling.format_table(rows))
  print(json.dumps(result, indent=1))
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
