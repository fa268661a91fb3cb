"""MASLL (Wang, Huang, Lu, Huang), Table I, as one table.

  --config=configs/masll.py:<row>[,<dataset>][,cpu|paper]   (dermjax.config_lib.parse_arg)

  row                 Table I row             model
  resnet101           Resnet101               gap_classifier: ResNet-101 + GAP + dense
  densenet121         Densnet121              gap_classifier: DenseNet-121 + GAP + dense
  masll_resnet101     Proposed method 1       masll, ResNet-101 global and local branches
  masll_densenet121   Proposed method 2       masll, DenseNet-121 global and local branches
  dataset  isic2017 (the paper's; default) | isic2016
  paper    the paper's scale: 256 x 256 inputs (both branches), batch 15, 100 epochs, SGD;
           ImageNet normalisation; MASLL rows crop the local branch from a 512 px copy.
  cpu      (default) the same rows on the synthetic set, CPU-sized: 128 px (a 4 x 4
           stride-32 map, so SLL chooses among 16 cells), both backbones cut to one block per
           stage at base width 32 (backbones.build_backbone), batch 16, 10 epochs, Adam 1e-3
           (L2 1e-4): from scratch, SGD (0.01, no decay) reached test AUC 0.725 on seed 0 of
           the hard preset (issue #22, RESULTS.md); one trial (ZooME's CPU rate), not tuned.

e.g. `configs/masll.py:masll_densenet121,paper`. ImageNet weights: --config.model.pretrained=
<torchvision resnet101 / densenet121 .pth> (pretrained_arch follows the row); both MASLL
branches load the same checkpoint. Results (results/<split>.json, "diagnosis") carry Table
I's AUC `auc`, ACC `accuracy`, SEN at SPE = .95/.90/.85 `sensitivity_at_specificity_{95,90,85}`
and Table II's SEN / SPE at threshold 0.5 `sensitivity` / `specificity`; results/roc_<split>.png
is Fig. 3's curve for this run.

Where the paper is silent, chosen here:
  - classifier: one sigmoid output and binary cross-entropy (the paper: "a linear classifier
    ... melanoma or nonmelanoma", "cross-entropy loss"; two softmax outputs with
    --config.model.num_classes=2 give the same objective, metrics then as melanoma_*).
  - SGD: momentum 0.9, learning rate 1e-3, x0.1 every 30 epochs, weight decay 1e-4 (torch
    fine-tuning defaults; the paper gives no values); best epoch by validation AUC.
  - preprocessing: the whole image resized to 256 x 256 (Sec. III-C "all inputs ... are
    resized to 256 x 256"); augmentation: rotation by any angle in [-180, 180] (reflect
    fill), horizontal and vertical flips, no random crop (none is mentioned).
  - WFI (`model.fusion`): "pooled" (default) concatenates the globally averaged g and l
    (2K channels) because eq. 4 learns a "mutual vector" that weights "each channel";
    "maps" concatenates the feature maps and weights each position (same parameters).
  - `model.share_weights` False (default): separate global / local backbones (Fig. 2 draws
    two branches); True shares one backbone.
  - SLL: the threshold T is the mean of M (eq. 2); a constant M keeps the whole image;
    `model.min_box` (default 0: any box of at least one map cell) can enlarge tiny boxes.
    `model.box_region` "largest" (default, every row): the box of the largest 4-connected
    region of the above-mean cells (ties: the first in raster order), since the paper crops
    "the region with values above the mean", one region; "all" boxes every above-mean cell,
    which on a noisy M spreads the box towards the whole image. The mean box area (a
    fraction of the image) is in the summaries (train/box_area, validation/box_area,
    validation/report/box_area_mean).
  - Where the local crop comes from (`model.crop_source`): the paper crops the box "from the
    dermoscopic image", so that a small lesion is seen at more than the 256 px input's
    resolution (Sec. II-B). Paper rows: "source", a higher-resolution copy of the same crop
    box shipped with every example (data.source_size = 512, uint8; augmented on device by
    the same rotation / flips as the input, dermjax.data.augment), the box mapped onto it
    and cropped and resized to 256 on device (one compilation). 512 is the largest side at
    which no ISIC 2017 image is upsampled (the smallest is 540 x 722); a box covering half
    the image side or more is then seen at full source resolution. CPU rows: "input" (crop
    the augmented 128 px input itself: no extra detail, as before), data.source_size 0;
    `--config.model.crop_source=source --config.data.source_size=128` runs the paper's path
    there too. The baselines ship no copy.
  - Input normalisation (data.normalization): paper rows "imagenet" (torchvision's mean /
    std: both backbones are ImageNet-pretrained and the paper says nothing else); CPU rows
    train from scratch and keep "dataset" (the training split's mean / std).
"""

from dermjax import config_lib
from dermjax.models import masll
from dermjax.models.baselines import gap_classifier

ROWS = ("resnet101", "densenet121", "masll_resnet101", "masll_densenet121")
DATASETS = ("isic2017", "isic2016")


def get_config(arg=None):
  parsed = config_lib.parse_arg(arg, table="configs/masll.py", rows=ROWS, datasets=DATASETS,
                                default_row="masll_resnet101")
  row, paper = parsed.row, parsed.paper
  config = config_lib.base_config()

  data = config.data
  data.layout = parsed.dataset
  data.target = "melanoma"
  data.crop = "resize_center_crop"     # with resize_size == image_size: the whole image.
  data.sampling = "none"
  data.augment.rotation = "uniform"    # any angle in +-max_rotation_deg, resampled.
  data.augment.max_rotation_deg = 180.0
  data.augment.hflip = True
  data.augment.vflip = True
  data.augment.zoom = None
  data.augment.fill = "reflect"

  m = config.model
  m.backbone = row.removeprefix("masll_")
  m.pretrained_arch = m.backbone
  m.num_classes = 1
  if row.startswith("masll_"):
    m.name = "masll"
    m.share_weights = False
    m.fusion = "pooled"
    m.crop_size = 0                    # the input size: both branches see S x S.
    m.min_box = 0.0
    m.crop_source = "input"            # paper rows: "source" (below).
    m.box_region = "largest"           # | "all" (see the docstring).
    m.pretrained_targets = masll.pretrained_targets(share_weights=False)
  else:
    m.name = "gap_classifier"
    m.pretrained_targets = gap_classifier.pretrained_targets()
  config.loss.focal_gamma = 0.0        # cross-entropy.

  o = config.optim
  o.name = "sgd"
  o.momentum = 0.9
  o.nesterov = False
  o.weight_decay = 1e-4
  o.learning_rate = 1e-3
  o.decay_every_epochs = 30
  o.decay_factor = 0.1

  t = config.train
  t.checkpoint_metric = "validation/auc"
  t.checkpoint_mode = "max"
  t.keep_best = ()

  if paper:
    data.image_size = data.resize_size = 256
    data.batch_size = 15
    data.eval_batch_size = 30
    data.normalization = "imagenet"      # ImageNet-pretrained backbones.
    if m.name == "masll":                # the local crop "from the dermoscopic image".
      m.crop_source = "source"
      data.source_size = 512
    t.num_epochs = 100
    return config
  m.blocks_per_stage = 1               # CPU: one block per stage, half width (the docstring).
  m.backbone_width = 32
  o.name, o.learning_rate = "adam", 1e-3   # from scratch (the docstring).
  return config_lib.cpu_sized(config, image_size=128, batch_size=16, num_epochs=10)
