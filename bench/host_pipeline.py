"""Images/s of the host input pipeline (ltjax/data/host.py): TFDS read, image decode,
random resized crop to 224 and flip, batching, in grain's reader threads.

  python bench/host_pipeline.py --source jpeg --threads 2
  python bench/host_pipeline.py --source cifar10 --data-dir ../shared/tfds

``jpeg``: ImageNet-sized JPEGs (500x375, quality 90, about 45 KB: real CIFAR-10 images
upscaled, with noise for photo-like entropy when ../shared/tfds is there, else smooth
random fields) decoded by TFDS's own image decoder (``tfds.features.Image``, OpenCV or
PIL), the work ``tfds.data_source`` does per ImageNet-LT record. ``cifar10``: the real
TFDS ArrayRecord source (PNG 32x32), cropped and upscaled to 224. Prints one JSON line.
"""
import argparse
import io
import json
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo's ltjax and configs


class JpegSource:
  """A random-access source of JPEG records decoded on access, as TFDS's are."""

  def __init__(self, n: int, data_dir: str | None, seed: int = 0):
    import tensorflow_datasets as tfds
    from PIL import Image

    self.feature = tfds.features.Image(shape=(None, None, 3))
    rng = np.random.default_rng(seed)
    base = None
    if data_dir and os.path.isdir(os.path.join(data_dir, 'cifar10')):
      src = tfds.data_source('cifar10', split='train', data_dir=data_dir, download=False)
      base = [src[i]['image'] for i in range(64)]
    self.records, self.labels = [], rng.integers(0, 1000, n)
    for i in range(n):
      small = base[i % len(base)] if base else rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
      img = np.asarray(Image.fromarray(small).resize((500, 375), Image.BICUBIC), np.int16)
      img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, format='JPEG', quality=90)
      self.records.append(buf.getvalue())

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return {'image': self.feature.decode_example_np(self.records[i]), 'label': self.labels[i]}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--source', default='jpeg', choices=('jpeg', 'cifar10'))
  ap.add_argument('--data-dir', default=os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'tfds'))
  ap.add_argument('--threads', type=int, default=2)
  ap.add_argument('--workers', type=int, default=0, help='grain worker processes (run.host_workers)')
  ap.add_argument('--batch', type=int, default=64)
  ap.add_argument('--steps', type=int, default=8)
  ap.add_argument('--image-size', type=int, default=224)
  ap.add_argument('--records', type=int, default=512, help='jpeg: how many distinct JPEGs')
  args = ap.parse_args()

  from absl import flags

  flags.FLAGS(['host_pipeline'])  # grain's worker processes read absl flags (ltjax.main parses them)
  from ltjax.data import host
  from ltjax.data.samplers import Sampler

  if args.source == 'jpeg':
    source = JpegSource(args.records, args.data_dir)
    labels = np.asarray(source.labels, np.int32)
    mean_bytes = float(np.mean([len(r) for r in source.records]))
  else:
    import tensorflow_datasets as tfds

    source = tfds.data_source('cifar10', split='train', data_dir=args.data_dir, download=False)
    labels = np.zeros(len(source), np.int32)  # labels do not change the work measured
    mean_bytes = None
  num_classes = int(labels.max()) + 1
  ds = host.HostDataset(args.source, args.source, source, np.arange(len(labels)), labels, source, np.arange(len(labels)),
                        labels, num_classes, 1.0, [], image_size=args.image_size, threads=args.threads,
                        workers=args.workers)
  counts = tuple(int(c) for c in np.bincount(labels, minlength=num_classes))
  sampler = Sampler('instance', len(labels), args.batch, counts, 1)
  it = host.train_iterator(ds, sampler, 0, args.steps + 2)
  next(it), next(it)  # threads started, buffers filled once
  t = time.perf_counter()
  for _ in range(args.steps):
    batch = next(it)
  seconds = time.perf_counter() - t
  print(json.dumps({'bench': 'host_pipeline', 'source': args.source, 'threads': args.threads,
                    'workers': args.workers,
                    'batch': args.batch, 'image_size': args.image_size, 'cpus': os.cpu_count(),
                    'jpeg_bytes': mean_bytes, 'images_per_s': round(args.steps * args.batch / seconds, 1),
                    'shape': list(batch['images'].shape)}))


if __name__ == '__main__':
  main()
