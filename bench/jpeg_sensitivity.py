"""How much a trained CIFAR model loses when its test images are JPEG re-encoded once more:
a bound on how much JPEG-sized distortions matter to it, for the gap analysis of the
reproduction (../shared's CIFAR-10 is itself a JPEG q75 re-encode, about 30 dB PSNR from
the original pixels, and the original pixels are not at hand here).

  python bench/jpeg_sensitivity.py --workdir runs/reproduce/cifar10_if100_crt_s0 --phase ce \
      --cache .device_cache/cifar10_lt_if100_seed0.npz [--qualities 95,75,50,30]

Evaluates the phase's last checkpoint (ltjax.predict.Predictor: the same forward as the
run's own evaluation) on the cache's test images as they are, then re-encoded with
Pillow at each quality (4:2:0, Pillow's default), and prints top-1 and the PSNR of each
re-encode against the images as they are. About 10 s an evaluation on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)


def reencode(images: np.ndarray, quality: int) -> np.ndarray:
  from PIL import Image

  out = np.empty_like(images)
  for i, im in enumerate(images):
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, 'JPEG', quality=quality)
    out[i] = np.asarray(Image.open(buf).convert('RGB'))
  return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float('inf') if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--workdir', required=True)
  ap.add_argument('--phase', default='')
  ap.add_argument('--cache', required=True, help="ltjax's decoded cache (.npz with test_images, test_labels)")
  ap.add_argument('--qualities', default='95,75,50,30')
  ap.add_argument('--batch-size', type=int, default=500)
  args = ap.parse_args(argv)
  from ltjax import predict

  model = predict.Predictor(args.workdir, phase=args.phase)
  with np.load(args.cache, allow_pickle=False) as z:
    images, labels = z['test_images'], z['test_labels']

  def top1(x):
    batches = [{'images': x[i:i + args.batch_size]} for i in range(0, len(x), args.batch_size)]
    return 100.0 * float(np.mean(np.asarray(model.logits(batches, len(x))).argmax(-1) == labels))

  base = top1(images)
  print(f'{args.workdir} phase {model.phase}: {len(images)} test images')
  print('| test images | PSNR vs as they are (dB) | top-1 | change |')
  print('|---|---|---|---|')
  print(f'| as they are | - | {base:.2f} | - |', flush=True)
  for q in (int(s) for s in args.qualities.split(',')):
    x = reencode(images, q)
    acc = top1(x)
    print(f'| re-encoded, JPEG q{q} | {psnr(x, images):.1f} | {acc:.2f} | {acc - base:+.2f} |', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
