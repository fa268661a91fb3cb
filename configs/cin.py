"""CIN, the Clinical-Inspired Network (Liu et al. 2020, Table 1 ablation, Tables 2-3).

  --config=configs/cin.py:<row>[,<dataset>][,cpu|paper]   (dermjax.config_lib.parse_arg)

  row               model       Table 1 row                         modules
  lesion_attention  cin_lesion  stage 1 (the A module on its own)   U-Net segmenter + aux L1
  baseline          cin         Baseline (ResNet-18)                -
  A                 cin         CIN(A)                              crop by stage 1
  F                 cin         CIN(F)                              lesion feature attention
  D                 cin         CIN(D)                              distinguish module, pairs
  A+F               cin         CIN(A+F)
  A+F+D, cin        cin         CIN (A+F+D), Tables 2-3
  dataset  isic2017 (default) | isic2016
  paper    the whole image resized to 448 x 448, batch 32 (stage 1: batch 16), ImageNet
           normalisation; without it CPU-sized for synthetic data: 128 px, batch 16, 10
           epochs, ResNet-18 cut to one block per stage at base width 32 (stage 1's encoder
           and the branches alike, so the graft fits), same model and loss; stage-2 CPU rows
           predict melanoma (the synthetic sets' only diagnosis signal; the ISIC 2017 paper
           rows keep seborrheic keratosis) and train with Adam 1e-3 (L2 1e-4): from scratch
           the paper rows' SGD 1e-3 left CIN F at test AUC 0.637 +- 0.087 on the hard preset
           (64 px, 4 epochs, RESULTS.md); the rate was ZooME's CPU choice, not tuned here.
           Stage 1 keeps Adam 1e-4 (its lesion Jaccard on the hard test split: 0.85-0.87).

Two stages, chained by one flag (the rows with A need a trained stage 1):

  python -m dermjax.main --config=configs/cin.py:lesion_attention --workdir=W1
  python -m dermjax.main --config=configs/cin.py:cin --workdir=W2 --config.model.pretrained=W1

Sub-task: --config.data.target=melanoma | seborrheic_keratosis (ISIC 2017 sub-task 2, the
Table 1 ablation; the default for isic2017 here) — ISIC 2016 is melanoma (malignant) vs rest.
Seed: --config.seed (model init, pairs, augmentation) and --config.data.seed (order).
Validation: ISIC 2017's official split; on ISIC 2016 (no official one) a random 20% of
the training set, as the paper takes it (data.validation_fraction = 0.2, stratified by
label; the layout's default carve is 1/8), re-drawn with --config.data.split_seed.

Choices where the paper is silent (see also dermjax/models/cin/*.py docstrings):
- Stage 1 is a U-Net on ImageNet ResNet-18 (encoder taps layer1..4, decoder 256/128/64,
  2-class softmax CE), trained on the training split's lesion masks (ISIC 2017 Part 1 masks;
  ISIC 2016 Part 3B: images without masks are left out of the loss). The auxiliary crops
  are of the image times the (predicted / GT) lesion map, so the L1 has a gradient into the
  predicted map (a crop box alone is not differentiable); its two conv blocks (32, 64
  channels, 3x3 conv x2 + max pool each, crops resized to 112 px at paper scale) stay at
  random init (frozen by an lr-0 group) so the L1 cannot collapse to zero features;
  aux_weight 1. Box: map >= 0.5, at least 10% of the side. Checkpoint: best validation
  Jaccard. Adam lr 1e-4, 30 epochs.
- Stage 2 takes config.model.pretrained = the stage-1 workdir, grafting stage 1 whole into
  `lesion_attention` (frozen: optimiser group "stage1", rate 0, and run with running BN
  statistics). One flag carries one checkpoint, so the ResNet-18 of the classifier branches
  is initialised from stage 1's encoder (ImageNet ResNet-18 fine-tuned on the lesion masks;
  pretrained_targets {"branch_a/backbone": "encoder", ...}). Rows without A (baseline, F,
  D) take an ImageNet ResNet-18 checkpoint as config.model.pretrained instead.
- Input: "The images are resized to 448 x 448" (Sec. 3.2): the whole image, squashed to
  448 x 448 (data.resize_size = data.image_size = 448); no authors' code is public to say
  otherwise. The centre crop used before (448 of a 512 resize, 87.5% of each side) is one
  switch away: --config.data.resize_size=512.
- The crop is resampled to the input size (448 px at paper scale) from the 448 px image.
- Input normalisation (data.normalization): paper rows "imagenet" (torchvision's mean / std:
  every ResNet-18 starts from ImageNet weights, directly or through stage 1, and the paper
  says nothing else; both stages use the same, so the graft sees the inputs it was trained
  on); CPU rows train from scratch and keep "dataset" (the training split's mean / std).
- Classifier: GAP of F_A -> FC(256) -> ReLU -> FC(2) softmax; the trainer sees one logit
  log(p_1 / p_0) (model.num_classes = 1), at test time of the branches' mean probability.
  Distinguish: 1x1/3x3/3x3 convs of 256 channels with ReLU, GAP, FC(256), ReLU, dropout
  0.5, FC(1). CPU size: FC / distinguish widths 16, decoder 32/16/8. Attention widths C/8. Eq. 2's
  softmax over all M x M entries as printed (--config.model.correlation_norm=row: per row).
- With D, the two branches have separate weights (the synergic-network design CIN compares
  with; their summed probabilities at test time, Sec. 3.2, would otherwise be one branch's);
  pairs: each image with a uniformly random derangement of the batch (no image with itself),
  drawn on device; at evaluation the fixed shift i -> i + 1, so the reported distinguish loss
  is on real pairs. Eq. 3's alpha / beta are in the loss metrics (train/alpha, ...).
- Eq. 4's class weights: N / (K n_j) from the training split's counts (stats.json).
- Augmentation (the paper names none): any rotation, flips, random zoom 0.8-1 (both stages).
- Optimiser (the paper names none): SGD momentum 0.9, lr 1e-3 x0.1 every 20 epochs (paper),
  weight decay 1e-4, 60 epochs; best epoch by validation AUC.
"""

from dermjax import config_lib

STAGE2 = {  # row -> (A, F, D)
    "baseline": (False, False, False), "A": (True, False, False), "F": (False, True, False),
    "D": (False, False, True), "A+F": (True, True, False), "A+F+D": (True, True, True),
    "cin": (True, True, True),
}
ROWS = ("lesion_attention",) + tuple(r for r in STAGE2 if r != "cin")   # "cin": alias of A+F+D.
# Rows that train from another row's run (model.pretrained = its workdir); scripts/
# compare_models.py runs that row first, per seed.
PRETRAINED_FROM = {row: "lesion_attention" for row, (lesion, _, _) in STAGE2.items() if lesion}
DATASETS = ("isic2017", "isic2016")


# The CPU rows' ResNet-18 (stage 1's encoder and the branches alike, so the graft fits).
CPU_RESNET = dict(blocks_per_stage=1, width=32)


def lesion_config(paper: bool) -> dict:
  """Fields of the stage-1 module (model.lesion), the same in both stages so the graft fits."""
  fields = dict(arch="resnet18", decoder_features=(256, 128, 64) if paper else (32, 16, 8),
                threshold=0.5, min_box=0.1, aux_size=112 if paper else 16,
                aux_features=(32, 64) if paper else (4, 8), aux_input="masked")
  return fields if paper else {**fields, **CPU_RESNET}


def get_config(arg=None):
  parsed = config_lib.parse_arg(arg, table="configs/cin.py", rows=ROWS + ("cin",), datasets=DATASETS)
  row, dataset, paper = parsed.row, parsed.dataset, parsed.paper
  config = config_lib.base_config()
  data = config.data
  data.layout = dataset
  data.target = "seborrheic_keratosis" if dataset == "isic2017" else "melanoma"
  data.validation_fraction = 0.2 if dataset == "isic2016" else None   # the paper's 20%.
  data.crop = "resize_center_crop"
  data.augment.rotation = "uniform"   # the paper names no augmentation: rotation, flips, zoom.
  data.augment.hflip = True
  data.augment.vflip = True
  data.augment.zoom = (0.8, 1.0)

  m = config.model
  m.lesion = lesion_config(paper)
  m.pretrained_arch = "resnet18"
  o, t = config.optim, config.train
  if row == "lesion_attention":
    m.name = "cin_lesion"
    m.pretrained_targets = {"encoder": ""}         # an ImageNet ResNet-18 checkpoint.
    config.loss.aux_weight = 1.0
    o.name = "adam"
    o.learning_rate = 1e-4
    o.groups = {"aux": ("^aux_block", 0.0)}
    t.checkpoint_metric = "validation/report/jaccard"
    t.checkpoint_mode = "max"
    t.keep_best = ()
    epochs, batch = 30, 16
  else:
    use_lesion, use_attention, use_distinguish = STAGE2[row]
    m.name = "cin"
    m.num_classes = 1                 # one score (sigmoid); the heads are 2-way softmax (eq. 4).
    m.use_lesion, m.use_attention, m.use_distinguish = use_lesion, use_attention, use_distinguish
    m.share_branches = False
    m.arch = "resnet18"
    m.hidden = 256 if paper else 16
    m.reduction = 8
    m.correlation_norm = "global"
    m.use_correlation = True        # False: F without its correlation block (benchmarks only).
    m.distinguish_features = 256 if paper else 16
    m.distinguish_hidden = 256 if paper else 16
    m.dropout = 0.5
    branches = ("branch_a", "branch_b") if use_distinguish else ("branch_a",)
    if use_lesion:   # pretrained = the stage-1 workdir (the row whose run it must be):
      m.pretrained_run = f"configs/cin.py:lesion_attention,{dataset}" + (",paper" if paper else "")
      targets = {"lesion_attention": ""}
      targets.update({f"{b}/backbone": "encoder" for b in branches})
      o.groups = {"stage1": ("^lesion_attention/", 0.0)}
    else:            # pretrained = an ImageNet ResNet-18 checkpoint.
      targets = {f"{b}/backbone": "" for b in branches}
    m.pretrained_targets = targets
    config.loss.class_weighting = "balanced"
    config.loss.distinguish_weight = 1.0          # lambda, eq. 6.
    o.name = "sgd"
    o.momentum = 0.9
    o.weight_decay = 1e-4
    o.learning_rate = 1e-3
    o.decay_every_epochs = 20
    o.decay_factor = 0.1
    t.checkpoint_metric = "validation/auc"
    t.checkpoint_mode = "max"
    t.keep_best = ()
    epochs, batch = 60, 32

  if paper:
    data.image_size = data.resize_size = 448     # the whole image (Sec. 3.2); crop: 512.
    data.normalization = "imagenet"              # ImageNet ResNet-18s (stage 1 and 2).
    data.batch_size, data.eval_batch_size = batch, 32
    t.num_epochs = epochs
    return config
  if row != "lesion_attention":
    m.blocks_per_stage, m.backbone_width = CPU_RESNET["blocks_per_stage"], CPU_RESNET["width"]
    data.target = "melanoma"           # the synthetic hard set's label (see the docstring).
    o.name, o.learning_rate = "adam", 1e-3   # from scratch (the docstring).
  return config_lib.cpu_sized(config, image_size=128, batch_size=16, num_epochs=10)
