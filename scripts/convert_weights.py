r"""Converts a torchvision / timm checkpoint into a dermjax checkpoint directory, once.

  python scripts/convert_weights.py --arch=vgg16_bn --src=vgg16_bn-6c64b313.pth --out=weights/vgg16_bn

writes weights/vgg16_bn/variables.safetensors (the Flax variables, float32, dermjax names);
configs then set model.pretrained="weights/vgg16_bn" (the original file works there too, it is
just converted on every start). --src may be a .pth (needs torch) or a .safetensors file with
torchvision or timm key names; --source_format=auto picks the naming from the keys.
"""

import argparse
import sys

import numpy as np

from dermjax import weights
from dermjax.models.backbones import BACKBONES


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--arch", required=True, choices=sorted(BACKBONES))
  parser.add_argument("--src", required=True, help=".pth / .pt / .safetensors checkpoint")
  parser.add_argument("--out", required=True, help="directory to write variables.safetensors into")
  parser.add_argument("--source_format", default="auto", choices=("auto",) + weights.SOURCE_FORMATS)
  args = parser.parse_args(argv)
  variables = weights.load_pretrained(args.src, args.arch, source_format=args.source_format)
  path = weights.save_converted(variables, args.out, args.arch, source=args.src)
  count = sum(int(np.prod(np.shape(v))) for v in weights.flatten_variables(variables).values())
  print(f"{args.src} -> {path}: {args.arch}, {count:,} values")
  return path


if __name__ == "__main__":
  main(sys.argv[1:])
