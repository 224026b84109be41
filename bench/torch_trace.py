"""Records PyTorch's training trace that ``tests/test_torch_trace.py`` replays with
ltjax's real train step.

  python bench/torch_trace.py [--out tests/fixtures/torch_resnet32_trace.npz]

From the initial weights and batches of ``bench/trace_common.py`` (NumPy, seeded), it
trains ``bench/torch_step.py``'s ResNet-32 (LDAM-DRW's layout: option-A shortcuts,
BatchNorm2d eps 1e-5 momentum 0.1, linear head with bias) in float32 on the CPU, in
training mode, for 14 steps of ``torch.optim.SGD(momentum=0.9, weight_decay=2e-4)`` on
plain cross-entropy, with each step's learning rate from the formula below (ltjax's
documented ``train.make_schedule``, schedule ``step``, written out independently).

It records (ltjax's names and layout, float32): the loss and lr of every step, the
gradient of every parameter at step 0, SGD's momentum buffer after step 0 of the
tensors of at most 1,024 values (BatchNorm scales and biases, the head, the stem
convolution), the BatchNorm running mean and variance after step 0, the final parameters, the final running mean and variance, and metadata. Needs torch (setup.cfg's ``bench`` extra);
rerun it to refresh the trace.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench import trace_common as tcm  # noqa: E402
from bench.torch_step import ResNetCifar  # noqa: E402

BUF0_MAX_SIZE = 1024  # record the step-0 momentum buffer of tensors up to this size
DEFAULT_OUT = os.path.join(ROOT, 'tests', 'fixtures', 'torch_resnet32_trace.npz')


def lr_at(step, run):
  """ltjax's ``step`` schedule: a per-step linear warm-up over ``warm`` steps from
  lr / warm to lr (reached at step warm - 1), then lr x lr_decay^(boundaries passed),
  a boundary at epoch e being step round(e x steps_per_epoch)."""
  spe, lr = run['steps_per_epoch'], run['lr']
  warm = int(round(run['warmup_epochs'] * spe))
  if step < warm:
    return lr if warm == 1 else lr / warm + (lr - lr / warm) * step / (warm - 1)
  passed = sum(step >= int(round(e * spe)) for e in run['lr_boundaries'])
  return lr * run['lr_decay'] ** passed


def build_model(run, init):
  """The PyTorch ResNet-32 loaded with ltjax's initial variables; checks that its
  state_dict and ltjax's variables name the same tensors with the same shapes."""
  model = ResNetCifar(run['depth'], run['width'], run['num_classes'])
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      assert m.eps == run['bn_eps'] and m.momentum == run['bn_momentum'], m
  sd = model.state_dict()
  mapping = tcm.names(run)
  want = {t for t, _ in mapping.values()}
  have = {k for k in sd if not k.endswith('num_batches_tracked')}
  assert have == want, f'unmapped torch tensors {sorted(have - want)}, missing {sorted(want - have)}'
  new = {}
  for name, (tname, layout) in mapping.items():
    value = torch.from_numpy(tcm.to_torch(init[name], layout))
    assert value.shape == sd[tname].shape, (name, tname, value.shape, sd[tname].shape)
    new[tname] = value
  model.load_state_dict(new, strict=False)  # num_batches_tracked stay 0
  return model


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=DEFAULT_OUT)
  ap.add_argument('--threads', type=int, default=0, help='0: torch default')
  ap.add_argument('--float64', action='store_true',
                  help='train in float64 (a calibration of float32 rounding, not the trace)')
  args = ap.parse_args()
  if args.float64 and os.path.abspath(args.out) == DEFAULT_OUT:
    ap.error('--float64 is a calibration run: give it its own --out, not the test fixture')
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)  # nothing here draws from it; set for good measure
  run = tcm.RUN
  init = tcm.initial_variables(run)
  images, labels = tcm.batches(run)
  dtype = torch.float64 if args.float64 else torch.float32
  model = build_model(run, init).to(dtype)
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=run['lr'], momentum=run['momentum'],
                        weight_decay=run['weight_decay'], nesterov=run['nesterov'])
  mapping = tcm.names(run)
  by_torch = {t: (n, layout) for n, (t, layout) in mapping.items()}
  losses, lrs, grad0, stats0, buf0 = [], [], {}, {}, {}
  for step in range(tcm.num_steps(run)):
    lr = lr_at(step, run)
    for group in opt.param_groups:
      group['lr'] = lr
    x = torch.from_numpy(tcm.normalize(images[step], run)).permute(0, 3, 1, 2).contiguous().to(dtype)
    y = torch.from_numpy(labels[step]).long()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    if step == 0:
      for tname, p in model.named_parameters():
        name, layout = by_torch[tname]
        grad0['grad/' + name] = tcm.from_torch(p.grad.detach().numpy(), layout).astype(np.float32)
    opt.step()
    if step == 0:
      # SGD's momentum buffer after one step (g + weight_decay p), of the small tensors.
      buf0 = {'buf0/' + by_torch[tname][0]: tcm.from_torch(opt.state[p]['momentum_buffer'].numpy(),
                                                            by_torch[tname][1]).astype(np.float32)
              for tname, p in model.named_parameters() if p.numel() <= BUF0_MAX_SIZE}
      # The running statistics after one forward pass: no gradient involved.
      stats0 = {'step0/' + name: tcm.from_torch(value.detach().numpy(), layout).astype(np.float32)
                for tname, value in model.state_dict().items() if tname in by_torch
                for name, layout in [by_torch[tname]] if name.startswith('batch_stats/')}
    losses.append(float(loss.detach()))
    lrs.append(lr)
    print(f'step {step:2d}  lr {lr:.3g}  loss {losses[-1]:.6f}', flush=True)
  final = {'final/' + name: tcm.from_torch(value.detach().numpy(), by_torch[tname][1]).astype(np.float32)
           for tname, value in model.state_dict().items() if tname in by_torch
           for name in [by_torch[tname][0]]}
  meta = {'torch': torch.__version__, 'dtype': str(dtype), 'numpy': np.__version__, 'threads': torch.get_num_threads(),
          'steps': tcm.num_steps(run), 'batch': run['batch_size'],
          'optimizer': 'torch.optim.SGD(momentum, weight_decay, nesterov), lr set per step',
          'run': {k: list(v) if isinstance(v, tuple) else v for k, v in run.items()}}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez_compressed(args.out, loss=np.asarray(losses, np.float32), lr=np.asarray(lrs, np.float64),
                      meta=np.asarray(json.dumps(meta, sort_keys=True)), **grad0, **buf0, **stats0, **final)
  print(f'wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB): {len(grad0)} gradients, '
        f'{len(buf0)} momentum buffers, {len(stats0)} step-0 statistics, {len(final)} final tensors, torch {torch.__version__}')


if __name__ == '__main__':
  main()
