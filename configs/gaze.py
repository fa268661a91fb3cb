"""Gaze sequences (Esteve-Cogollos 2020) and the thesis's experiments, as one table.

  --config=configs/gaze.py[:<variant>[,cpu|paper]]     (dermjax.config_lib.parse_arg)

  variant          thesis experiment (Sec. 4.1 settings, Table 3 ablations)   fields changed
  thesis           VGG_AttentiveConvLSTM_Deco_GAP_3 = setting 2 (skips +       -
                   frozen ImageNet BN), mini-batch balancing
  skip_bn          setting 1: skips, BN in training mode (encoder weights      frozen_bn False
                   still frozen at rate 0: only its BN statistics move)
  skip_frozenbn    setting 2: skips, frozen ImageNet batch norm                -
  noskip_nobn      setting 3, literal: "without skip connections and batch     skips, batch_norm False,
                   normalization" = plain VGG-16 (no BN in encoder, decoder     pretrained_arch vgg16
                   or blocks 4-5; the thesis code's bn=False), vgg16 weights
  noskip_frozenbn  not a thesis setting: setting 3 read as the 2x2 grid        skips False
                   (no skips x frozen BN), kept for comparison
  noskip_bn        setting 4: no skips, BN in training mode (encoder frozen)   skips, frozen_bn False
  vgg              VGG: VGG-16-BN with torchvision's classifier (fc6/fc7/fc8)  model vgg16, head fc
  vgg_gap          VGG_GAP: GAP of pool5 + one dense layer                     model vgg16, head gap
  attconvlstm      VGG_AttentiveConvLSTM: no decoder, fc classifier            decoder False, head fc
  attconvlstm_gap  VGG_AttentiveConvLSTM_GAP: no decoder, GAP classifier       decoder False
  deco_gap_3       VGG_AttentiveConvLSTM_Deco_GAP_3                            -
  deco_gap_5       ..._Deco_GAP_5: setting 4, w'_i weights (eq. 16)            + presence_inverse
  deco_gap_17      ..._Deco_GAP_17: setting 4, the "X' GAP version", w_i       + diagnosis_input encoder,
                   weights (eq. 15), a dense layer reducing the step GAPs        step_dim 256, presence_others

Deco_GAP_17 (Sec. 4.2): "uses the X' GAP version. In the classifier, a FC layer is introduced
to reduce the dimension of the concatenated X_t GAPs before its concatenation with the
outputs of pool5", against "the X_T GAP version, as explained in Section 3.1.3" of _3/_5,
where (Fig. 4) X~_{T-1} "is passed through the last [VGG] blocks". We read "X' version" as
blocks 4-5 + GAP run on X' (the encoder output, not attention-weighted) instead of X~_{T-1}:
model.diagnosis_input = "encoder" (default "attended"). The per-step GAP(X~_t) are still
concatenated, through a dense layer of width step_dim = 256 (the thesis gives no width; 256
is one step's width). The other reading (GAP(X') as one more concatenated vector) is not
implemented. The thesis code we could read has no _17 classifier to check this against.

Where the thesis text and its public PyTorch code (networks.py: Decoder, Classifier,
AttentiveModel) differ, the text is the default and the code one switch away:
  structure head pool     text: GAP before each decoder block -> model.structure_pool "mean";
                          code: AdaptiveMaxPool2d(1) -> "max".
  structure head          text: "two dense layers" (no activation named); code: Linear,
                          Linear, no activation -> model.structure_hidden_activation "none"
                          (both agree); "relu" is this port's earlier choice.
  matching window         text: Hungarian on the S x T matrix -> loss.match_steps "all";
                          code: present structures only against the first k steps (k =
                          structures present) -> "first_present".
  rotation                text: "random rotations and flippings" (angle unstated); code:
                          multiples of 90 degrees -> data.augment.rotation "k90" (the
                          reading both support); "uniform" for any angle. h/v flips; no
                          zoom/crop (text: resize 256, centre crop 224 only).
  decoder over steps      text: the decoder segments each step's X~_t (Sec. 3.1.2); code: one
                          Decoder call per step in a loop, so its training-mode BN sees one
                          step's batch -> model.decoder_chunk 1 (also the memory mode: the
                          ConvLSTM steps and decoder are rematerialised scans, peak memory
                          flat in T; model.memory_remat False keeps their activations
                          instead, the fastest CPU step of BENCHMARKS.md 2026-12-02). Default 0:
                          all B x T states in one batched decoder call (the text does not
                          say; its training-mode BN then normalises over all T steps).
Other choices, each with its reason:
  eqs. 15-16 scale        L_seg / L_class = mean over the matched pairs of w_s * loss (the
                          thesis: "multiply each of the structures losses by different
                          weights", then average). Eq. 15 is divided by S - 1, as the
                          thesis's Table 2 prints it (weights summing to 1). Mini-batch
                          balancing averages per-structure means (the thesis code exactly).
  encoder BN              settings 1 and 4 ("batch normalization", not frozen) run the encoder's
                          BN in training mode while its weights stay frozen (lr_encoder = 0):
                          model.frozen_bn only says which BN runs on ImageNet statistics,
                          model.freeze_encoder only stops the encoder's gradient.
  diagnosis output        one sigmoid logit with the binary focal loss of eq. 12 (the text
                          says "two (benign and melanoma)" classes; eq. 12 is written for
                          the melanoma probability, which one logit gives directly).
  padding                 reflect padding in the Attentive ConvLSTM and decoder (the thesis
                          code's padding_mode; the text does not say).
  attention               eq. 3 literally, X~_t = A_t * X' (rescale_attention False).
  segmentation mAP        report "seg_map" is the thesis's class-aware eq. 20 (a mask is scored
                          against the GT of its predicted class; every unmatched mask, empty
                          ones too, is a FP); "seg_map_agnostic" the class-agnostic variant.
  normalisation           data.normalization "dataset" in every row, paper scale included:
                          the thesis standardises each RGB channel with the mean / std
                          "computed over the training set" (Sec. 4.1, data pre-processing),
                          although its encoder is ImageNet VGG-16-BN; "imagenet"
                          (torchvision's constants) is one switch away.
Code behaviour deliberately not reproduced:
  structure probabilities the authors' training notebook reads the per-step class
                          probabilities as torch.cat(out_classes, 0).view(B, T, -1): the
                          concatenation is step-major (T blocks of B rows) and the view
                          image-major, so for B > 1 (image b, step t) gets the row of (image
                          (bT + t) mod B, step (bT + t) div B): another pair's probabilities
                          (only the first and last rows are right), in its loss and metrics
                          alike. The port reads each (image, step) pair's own row
                          (structure_logits [B, T, S]); tests/test_gaze_model.py checks a
                          batch against each image alone.

  paper: the thesis's setting: 224 px from 256, T = 5, batch 8, 20 epochs, Adam (.92, .96),
  rates encoder 0 / Attentive ConvLSTM 1e-2 / branches 1e-4, weight decay 1e-6, frozen
  encoder: give its ImageNet weights with --config.model.pretrained=FILE (torchvision vgg16_bn;
  vgg16 for noskip_nobn).
  cpu (the default): the same model CPU-sized for the synthetic ISIC 2017 set (cpu_sized()):
  32 px, T = 3, batch 16, every group at Adam 1e-3 from scratch, 4 epochs (on the hard
  synthetic preset 4 epochs gave test AUC 0.894 +- 0.020 over 3 seeds, RESULTS.md; at 2, one
  seed in three stayed near chance).
  No argument: `thesis,cpu`, the embedded default of `python -m dermjax.main`.
e.g. `configs/gaze.py:thesis,paper`, `configs/gaze.py:deco_gap_17`, `configs/gaze.py:vgg_gap`.
"""

import ml_collections

from dermjax import config_lib
from dermjax.models import baselines

# Optimiser groups: regexes over the "/"-joined parameter path.
ENCODER = r"(^|/)encoder/"
ATTENTIVE = r"(^|/)attentive_convlstm/"
BRANCHES = r"(^|/)(decoder|structure_head|diagnosis_vgg|diagnosis_head)/"


def thesis_config() -> ml_collections.ConfigDict:
  """The thesis's training recipe and full-size architecture (skip + frozen BN, Deco_GAP_3)."""
  config = config_lib.base_config()
  config.data.image_size = 224
  config.data.resize_size = 256
  config.data.batch_size = 8
  config.data.eval_batch_size = 8
  config.data.normalization = "dataset"   # the training set's mean / std (Sec. 4.1), as text.
  aug = config.data.augment
  aug.rotation = "k90"              # thesis code: multiples of 90 degrees ("uniform": any angle).
  aug.hflip = aug.vflip = True
  aug.zoom = None                   # rotations and flips only (Sec. 4.1).

  m = config.model
  m.name = "gaze"
  m.num_classes = 1                 # melanoma vs rest (sigmoid).
  m.timesteps = 5                   # T gazes (the thesis's figures).
  m.decoder = True                  # False: VGG_AttentiveConvLSTM(_GAP) ablations.
  m.skips = True                    # decoder averages with encoder pool3/pool2/pool1.
  m.batch_norm = True               # VGG-16-BN (False: plain VGG-16, pretrained_arch vgg16).
  m.frozen_bn = True                # BN on ImageNet running averages (encoder + blocks 4-5);
                                    # False: batch statistics in training, even when frozen.
  m.freeze_encoder = True           # stop_gradient after blocks 1-3 (lr 0 below); BN unaffected.
  m.head = "gap"                    # diagnosis classifier: "gap" | "fc" (fc6/fc7/fc8).
  m.step_dim = 0                    # >0: dense reduction of the per-step GAPs (model _17).
  m.diagnosis_input = "attended"    # blocks 4-5 on X~_{T-1} | "encoder": on X' (model _17).
  m.structure_pool = "mean"         # per-block pool of the structure head (text); "max": code.
  m.structure_hidden_activation = "none"   # between its two dense layers (code); "relu".
  m.padding = "reflect"             # Attentive ConvLSTM / decoder conv padding (thesis code).
  m.decoder_chunk = 0               # >0: decoder over this many steps at a time, rematerialised.
  m.memory_remat = True             # decoder_chunk > 0: recompute in the backward pass (memory
                                    # flat in T); False: keep activations (faster, BENCHMARKS.md).
  m.rescale_attention = False       # True: X~_t = (h*w) A_t X' (uniform attention = X').
  m.dropout_rate = 0.5              # "fc" head only.
  m.pretrained_arch = "vgg16_bn"
  m.pretrained_targets = ml_collections.ConfigDict({"encoder": "", "diagnosis_vgg": ""})

  lo = config.loss
  lo.focal_gamma = 2.0              # theta of eq. 12.
  lo.alpha, lo.beta, lo.gamma, lo.mu = 0.25, 0.75, 0.75, 0.25   # eq. 14.
  lo.balancing = "batch"            # "none" | "presence_others" (eq. 15) | "presence_inverse" (eq. 16) | "batch"
  lo.matcher = "host"               # "host" (scipy via pure_callback) | "device" (optax).
  lo.match_steps = "all"            # Hungarian over all T steps (text) | "first_present" (code).

  o = config.optim
  o.name = "adam"
  o.b1, o.b2 = 0.92, 0.96
  o.weight_decay = 1e-6
  o.learning_rate = 1e-4
  o.groups = ml_collections.ConfigDict({
      "encoder": (ENCODER, 0.0),
      "attentive_convlstm": (ATTENTIVE, 1e-2),
      "branches": (BRANCHES, 1e-4),
  })
  config.train.num_epochs = 20
  config.train.checkpoint_metric = "validation/loss"
  config.train.checkpoint_mode = "min"
  return config


# Each experiment: the thesis setting with these fields ("section.field": value).
NO_SKIPS_BN = {"model.skips": False, "model.frozen_bn": False}
VARIANTS = {
    "thesis": {},
    "skip_bn": {"model.frozen_bn": False},
    "skip_frozenbn": {},
    "noskip_nobn": {"model.skips": False, "model.batch_norm": False,
                    "model.pretrained_arch": "vgg16"},
    "noskip_frozenbn": {"model.skips": False},
    "noskip_bn": NO_SKIPS_BN,
    "vgg": {"model.name": "vgg16", "model.head": "fc"},
    "vgg_gap": {"model.name": "vgg16", "model.head": "gap"},
    "attconvlstm": {"model.decoder": False, "model.head": "fc"},
    "attconvlstm_gap": {"model.decoder": False},
    "deco_gap_3": {},
    "deco_gap_5": {**NO_SKIPS_BN, "loss.balancing": "presence_inverse"},
    "deco_gap_17": {**NO_SKIPS_BN, "model.diagnosis_input": "encoder", "model.step_dim": 256,
                    "loss.balancing": "presence_others"},
}
ROWS = tuple(VARIANTS)          # the table's rows (tests/test_contract.py runs each).


def cpu_sized(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same model, CPU-sized for the synthetic ISIC 2017 set (the embedded default)."""
  # CPU-sized: the same architecture on small synthetic images. No ImageNet weights here,
  # so the encoder trains from scratch (lr > 0, BN in training mode, no freezing), with
  # larger rates than the thesis's fine-tuning ones. Measured on the shared 2-core CPU: a
  # train step of the full-width VGG-16 model at 64 px / batch 16 / T 3 takes 60-150 s
  # (XLA CPU convolutions under load), at 32 px ~8 s, hence 32 px and few epochs.
  config.data.synthetic_num_images = {"train": 240, "validation": 60, "test": 120}
  config.data.image_size = 32
  config.data.resize_size = 37      # 32 / 0.875, as 224 / 256.
  config.data.batch_size = 16
  config.data.eval_batch_size = 32
  config.model.timesteps = 3
  config.model.frozen_bn = False
  config.model.freeze_encoder = False
  config.model.from_scratch = True  # no weights asked for (dermjax.pretrained.check_pretrained).
  config.optim.learning_rate = 1e-3
  for group, (regex, _) in config.optim.groups.items():
    config.optim.groups[group] = (regex, 1e-3)
  config.train.num_epochs = 4       # the hard preset's 3 seeds all learn at 4 (docstring).
  config.train.log_every_steps = 5
  config.eval.num_visualizations = 4
  return config


def get_config(arg=None) -> ml_collections.ConfigDict:
  """arg "<variant>[,cpu|paper]" (see the table above); no argument: "thesis,cpu"."""
  parsed = config_lib.parse_arg(arg, table="configs/gaze.py", rows=ROWS,
                                default_row="thesis")
  config = config_lib.set_fields(thesis_config(), VARIANTS[parsed.row])
  if config.model.name == "vgg16":  # dermjax/models/baselines: one rate, fc8 new.
    config.optim.groups = ml_collections.ConfigDict()
    config.model.pretrained_targets = baselines.pretrained_targets(config.model.head)
  return config if parsed.paper else cpu_sized(config)
