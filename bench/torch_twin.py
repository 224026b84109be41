"""An independent PyTorch twin of ltjax's CE row: LDAM-DRW's CIFAR training loop, written
out here, on the very data ltjax trains on (its decoded ``.npz`` cache), so that a gap to
the published numbers can be split into "the data" and "ltjax".

Three commands, two interpreters (torch and JAX never share a venv here):

  # the LDAM-DRW recipe (cifar_train.py, --loss_type CE --train_rule None) in PyTorch,
  # optionally shortened to --epochs with the schedule scaled as ltjax scales it
  TORCH_PY bench/torch_twin.py train --cache .device_cache/cifar10_lt_if100_seed0.npz \
      --epochs 16 --seed 0 --out runs/twin/torch_e16_s0.json

  # a finished ltjax phase's weights, as a PyTorch state_dict in an .npz (ltjax's venv)
  .venv/bin/python bench/torch_twin.py export --phase-dir runs/.../ce --out /tmp/ce.npz

  # those weights evaluated by PyTorch on the cache's test split: ltjax's evaluation
  # (BatchNorm running statistics, normalisation, batching) checked independently
  TORCH_PY bench/torch_twin.py evaluate --cache ... --weights /tmp/ce.npz

  # the twins side by side (a Markdown table; any Python): torch JSONs, ltjax workdirs
  python bench/torch_twin.py compare runs/twin/torch_e16_s0.json runs/twin/ltjax_e16_s0

What the twin shares with ltjax: the data (the cache), the model's layout
(``bench/torch_step.py``'s ResNet-32, LDAM-DRW's resnet32), the normalisation
(``trace_common.normalize``, LDAM-DRW's mean and std) and, for reporting, the shot groups
(``ltjax.data.longtail.shot_groups``). What it does its own way, as
the reference does: the initialisation (``kaiming_normal_`` on conv and linear weights,
PyTorch's default linear bias), one ``torch.randperm`` per epoch with the last partial
batch kept (``DataLoader(shuffle=True)``), per-image zero-pad-4 random crop and flip before
normalisation (torchvision's ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``),
``SGD(momentum=0.9, weight_decay=2e-4)``, the lr set once per epoch
(``adjust_learning_rate``), BatchNorm2d, and evaluation in ``model.eval()``.

Shortened runs (``--epochs`` < 200) scale the schedule as ``ltjax.train.schedule_points``
does: boundaries at ``round(b * epochs / 200)``; a warm-up that scales below 2 epochs
rises every step, linearly from ``lr / W`` to ``lr`` over ``W = round(5 * epochs / 200 *
steps_per_epoch)`` steps.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))
sys.path.insert(0, ROOT)  # ltjax.data.longtail needs only NumPy: it runs in the torch venv too

import trace_common  # noqa: E402  (NumPy only: normalisation and the ltjax <-> torch name map)
from ltjax.data.longtail import shot_groups  # noqa: E402

RECIPE = dict(lr=0.1, momentum=0.9, weight_decay=2e-4, batch_size=128, epochs=200,
              warmup_epochs=5, boundaries=(160, 180), decay=0.01)  # cumulative: 1e-3, 1e-5


def lr_at_epoch(epoch: int, step_in_epoch: int, steps_per_epoch: int, epochs: int, r=RECIPE) -> float:
  """LDAM-DRW's ``adjust_learning_rate`` (0-based ``epoch``) for a 200-epoch run; for a
  shortened one, the scaled schedule of the module's docstring."""
  lr, scale = r['lr'], epochs / r['epochs']
  boundaries = [b for b in r['boundaries']] if scale == 1 else [max(round(b * scale), 1) for b in r['boundaries']]
  decayed = lr * r['decay'] ** sum(epoch >= b for b in boundaries)
  warm_epochs = r['warmup_epochs'] * scale
  if scale == 1 or warm_epochs >= 2:  # per epoch, as the reference: (epoch + 1) / 5
    e1 = epoch + 1
    return lr * e1 / warm_epochs if e1 <= warm_epochs else decayed
  warm = int(round(warm_epochs * steps_per_epoch))
  step = epoch * steps_per_epoch + step_in_epoch
  if step < warm:
    return lr / warm + (lr - lr / warm) * step / max(warm - 1, 1)
  return decayed


def load_cache(path):
  d = np.load(path)
  return (d['train_images'], d['train_labels'].astype(np.int64), d['test_images'],
          d['test_labels'].astype(np.int64), int(d['num_classes']))


def evaluate(model, test_images, test_labels, train_labels, num_classes, batch=500):
  import torch
  model.eval()
  preds = []
  with torch.no_grad():
    for i in range(0, len(test_images), batch):
      preds.append(model(to_input(test_images[i:i + batch])).argmax(1).numpy())
  model.train()
  pred = np.concatenate(preds)
  per_class = np.array([np.mean(pred[test_labels == c] == c) * 100 for c in range(num_classes)])
  out = {'top1': float(np.mean(pred == test_labels) * 100), 'per_class': per_class.round(2).tolist()}
  for name, classes in shot_groups(np.bincount(train_labels, minlength=num_classes)).items():
    out[name] = float(per_class[classes].mean()) if len(classes) else None
  return out


def to_input(images_uint8):
  """uint8 NHWC -> normalised float32 NCHW (``ToTensor`` + ``Normalize`` with LDAM-DRW's
  CIFAR mean and std, which ``trace_common.normalize`` applies)."""
  import torch
  return torch.from_numpy(trace_common.normalize(images_uint8)).permute(0, 3, 1, 2).contiguous()


def augment(images_uint8, gen):
  """torchvision's ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()`` on each
  uint8 image (zero padding, offsets uniform in 0..8, flip with probability 1/2)."""
  import torch
  b, h, w, _ = images_uint8.shape
  padded = np.zeros((b, h + 8, w + 8, 3), np.uint8)
  padded[:, 4:4 + h, 4:4 + w] = images_uint8
  ij = torch.randint(0, 9, (b, 2), generator=gen).numpy()
  flip = (torch.rand(b, generator=gen) < 0.5).numpy()
  out = np.empty_like(images_uint8)
  for k in range(b):
    crop = padded[k, ij[k, 0]:ij[k, 0] + h, ij[k, 1]:ij[k, 1] + w]
    out[k] = crop[:, ::-1] if flip[k] else crop
  return out


def train(args):
  import torch
  import torch.nn.functional as F
  from torch_step import ResNetCifar

  torch.set_num_threads(args.threads or os.cpu_count())
  torch.manual_seed(args.seed)
  gen = torch.Generator().manual_seed(args.seed)
  train_x, train_y, test_x, test_y, num_classes = load_cache(args.cache)
  model = ResNetCifar(32, 16, num_classes)  # LDAM-DRW's init: kaiming_normal_ weights, default linear bias
  opt = torch.optim.SGD(model.parameters(), lr=RECIPE['lr'], momentum=RECIPE['momentum'],
                        weight_decay=RECIPE['weight_decay'])
  n, bs = len(train_y), RECIPE['batch_size']
  spe = math.ceil(n / bs)  # DataLoader(drop_last=False): the last batch is partial
  history, start = [], time.time()
  for epoch in range(args.epochs):
    perm = torch.randperm(n, generator=gen).numpy()
    losses, correct = [], 0
    for s in range(spe):
      for g in opt.param_groups:
        g['lr'] = lr_at_epoch(epoch, s, spe, args.epochs)
      idx = perm[s * bs:(s + 1) * bs]
      x = to_input(augment(train_x[idx], gen))
      y = torch.from_numpy(train_y[idx])
      logits = model(x)
      loss = F.cross_entropy(logits, y)
      opt.zero_grad()
      loss.backward()
      opt.step()
      losses.append(loss.item())
      correct += (logits.argmax(1) == y).sum().item()
    rec = {'epoch': epoch + 1, 'lr': opt.param_groups[0]['lr'], 'train_loss': float(np.mean(losses)),
           'train_acc': correct / n * 100, 'seconds': round(time.time() - start, 1)}
    if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
      rec['test'] = evaluate(model, test_x, test_y, train_y, num_classes)
    history.append(rec)
    print(json.dumps({k: v for k, v in rec.items() if k != 'test'} | (
        {'top1': rec['test']['top1']} if 'test' in rec else {})), flush=True)
  result = {'framework': f'torch {torch.__version__}', 'cache': os.path.basename(args.cache), 'epochs': args.epochs,
            'seed': args.seed, 'steps_per_epoch': spe, 'recipe': RECIPE, 'final': history[-1]['test'],
            'history': history, 'wall_seconds': round(time.time() - start, 1)}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)
  print('final', json.dumps(result['final']))


def export(args):
  """ltjax's newest checkpoint in ``phase_dir/checkpoints`` -> ``{torch name: array}``."""
  from ltjax import checkpoint

  variables = checkpoint.restore_variables(os.path.join(args.phase_dir, 'checkpoints'))
  flat = {}
  for col in ('params', 'batch_stats'):
    def walk(prefix, tree):
      for k, v in tree.items():
        if isinstance(v, dict):
          walk(f'{prefix}/{k}', v)
        else:
          flat[f'{prefix}/{k}'] = np.asarray(v)
    walk(col, variables[col])
  # The classifier's head may sit under another module name than the trace's head/Dense_0.
  heads = sorted(k for k in flat if k.startswith('params/') and 'backbone' not in k and k.endswith('kernel'))
  if len(heads) != 1:
    raise SystemExit(f'expected one linear head, found {heads}')
  head = heads[0].rsplit('/', 1)[0]
  run = dict(trace_common.RUN, num_classes=flat[heads[0]].shape[-1])
  out = {}
  for name, (torch_name, layout) in trace_common.names(run).items():
    src = name.replace('params/head/Dense_0', head)
    out[torch_name] = trace_common.to_torch(flat[src], layout)
  np.savez(args.out, **out)
  print(f'{len(out)} tensors from {args.phase_dir} -> {args.out}')


def evaluate_weights(args):
  import torch
  from torch_step import ResNetCifar

  train_x, train_y, test_x, test_y, num_classes = load_cache(args.cache)
  model = ResNetCifar(32, 16, num_classes)
  weights = np.load(args.weights)
  state = {k: torch.from_numpy(weights[k]) for k in weights.files}
  state.update({k: v for k, v in model.state_dict().items() if k.endswith('num_batches_tracked')})
  model.load_state_dict(state)
  result = {'test': evaluate(model, test_x, test_y, train_y, num_classes)}
  model.eval()
  with torch.no_grad():
    pred = np.concatenate([model(to_input(train_x[i:i + 500])).argmax(1).numpy() for i in range(0, len(train_x), 500)])
  result['train_top1_no_augment'] = float(np.mean(pred == train_y) * 100)
  print(json.dumps(result))


def run_summary(path: str) -> dict:
  """One run's last-epoch numbers: a ``train`` JSON of this script, or an ltjax workdir."""
  if os.path.isdir(path):
    with open(os.path.join(path, 'results.json')) as f:
      r = json.load(f)
    return {'run': path, 'framework': 'ltjax', 'epochs': r['epochs'], 'seed': r['seed'], 'top1': r['top1'],
            'many': r['many'], 'medium': r['medium'], 'per_class': r['per_class'],
            'train_seconds': r['timing']['train_seconds']}
  with open(path) as f:
    r = json.load(f)
  return {'run': path, 'framework': 'PyTorch twin', 'epochs': r['epochs'], 'seed': r['seed'], **{
      k: r['final'][k] for k in ('top1', 'many', 'medium', 'per_class')}, 'train_seconds': r['wall_seconds']}


def compare(args):
  rows = sorted((run_summary(p) for p in args.runs), key=lambda r: (r['epochs'], r['framework'], r['seed']))
  print('| epochs | run | seed | top-1 | many | medium | per class (largest class first) |')
  print('|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['epochs']} | {r['framework']} | {r['seed']} | {r['top1']:.2f} | {r['many']:.2f} | "
          f"{r['medium']:.2f} | {' '.join(f'{v:.1f}' for v in r['per_class'])} |")


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest='cmd', required=True)
  t = sub.add_parser('train')
  t.add_argument('--cache', required=True)
  t.add_argument('--epochs', type=int, default=200)
  t.add_argument('--seed', type=int, default=0)
  t.add_argument('--eval-every', type=int, default=4)
  t.add_argument('--threads', type=int, default=0)
  t.add_argument('--out', required=True)
  e = sub.add_parser('export')
  e.add_argument('--phase-dir', required=True)
  e.add_argument('--out', required=True)
  v = sub.add_parser('evaluate')
  v.add_argument('--cache', required=True)
  v.add_argument('--weights', required=True)
  c = sub.add_parser('compare')
  c.add_argument('runs', nargs='+', help='train JSONs of this script and ltjax workdirs')
  args = ap.parse_args()
  {'train': train, 'export': export, 'evaluate': evaluate_weights, 'compare': compare}[args.cmd](args)


if __name__ == '__main__':
  main()
