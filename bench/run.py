"""Side-by-side benchmark: ltjax's train step against the PyTorch reference.

  python bench/run.py                        # ltjax variants + PyTorch (eager, compile)
  python bench/run.py --torch-python PATH    # a Python that has torch (e.g. a 3.11 venv)
  python bench/run.py --epoch DATA_DIR       # + one CIFAR-10-LT IF100 epoch via ltjax.main

Each measurement runs in its own process (JAX fixes its device count at start-up).
Prints images/s (median of timed runs after warm-up, min-max), the JAX compile
time, the ratio ltjax / PyTorch, and ends with `train ratio ltjax/pytorch = X.XX`
(the fastest ltjax variant against PyTorch eager).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# name -> (extra env, args of ltjax_step.py)
LTJAX_VARIANTS = {
    'ltjax-1dev-xla': ({}, ['--devices', '1', '--conv', 'xla']),
    'ltjax-1dev-taps': ({}, ['--devices', '1', '--conv', 'taps']),
    'ltjax-8dev-xla': ({}, ['--devices', '8', '--conv', 'xla']),
    'ltjax-8dev-taps': ({}, ['--devices', '8', '--conv', 'taps']),
}


def run_json(cmd, env=None):
  p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                     env={**os.environ, 'PYTHONPATH': REPO, **(env or {})})
  for line in reversed(p.stdout.splitlines()):
    if line.startswith('{'):
      return json.loads(line)
  raise RuntimeError(f'{" ".join(cmd)} failed:\n{p.stderr[-2000:]}')


def find_torch_python(given):
  for py in filter(None, [given, sys.executable, shutil.which('python3')]):
    if subprocess.run([py, '-c', 'import torch'], capture_output=True).returncode == 0:
      return py
  return None


def epoch_time(data_dir, devices):
  """Wall time of one CIFAR-10-LT IF100 epoch (ResNet-32, batch 128) through ltjax.main."""
  with tempfile.TemporaryDirectory() as tmp:
    cmd = [sys.executable, '-m', 'ltjax.main', '--config', 'configs/cifar_lt.py:dataset=cifar10,imb=100',
           '--workdir', os.path.join(tmp, 'w'), f'--config.run.data_dir={data_dir}',
           '--config.train.epochs=1', '--config.train.warmup_epochs=0', f'--cpu_devices={devices}']
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    if p.returncode:
      raise RuntimeError(p.stderr[-2000:])
    r = json.load(open(os.path.join(tmp, 'w', 'ce', 'results.json')))
  return wall, r['timing']


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--torch-python', default=None, help='Python with torch installed')
  ap.add_argument('--no-compile', action='store_true', help='skip torch.compile')
  ap.add_argument('--epoch', metavar='DATA_DIR', default=None,
                  help='also time one CIFAR-10-LT epoch through ltjax.main (TFDS data_dir)')
  ap.add_argument('--runs', type=int, default=5)
  ap.add_argument('--variants', default=','.join(LTJAX_VARIANTS),
                  help='comma list of ltjax variants: ' + ', '.join(LTJAX_VARIANTS))
  args = ap.parse_args()

  rows = []
  for name in args.variants.split(','):
    env, extra = LTJAX_VARIANTS[name]
    r = run_json([sys.executable, os.path.join(HERE, 'ltjax_step.py'), '--runs', str(args.runs), *extra], env)
    rows.append((name, r))
    print(f'{name:30s} train {r["train_img_s"]:7.1f} img/s ({r["train_min"]}-{r["train_max"]})  '
          f'eval {r["eval_img_s"]:7.1f} img/s  compile {r["compile_s"]:.1f} s', flush=True)
  torch_py = find_torch_python(args.torch_python)
  ref = None
  if torch_py is None:
    print('PyTorch not found: pip install torch==2.13.0 (or pass --torch-python)')
  else:
    for compile_ in ([False] if args.no_compile else [False, True]):
      cmd = [torch_py, os.path.join(HERE, 'torch_step.py'), '--runs', str(args.runs)]
      r = run_json(cmd + (['--compile'] if compile_ else []))
      name = f'pytorch {r["torch"]}' + (' compile' if compile_ else ' eager')
      rows.append((name, r))
      ref = ref or r
      print(f'{name:30s} train {r["train_img_s"]:7.1f} img/s ({r["train_min"]}-{r["train_max"]})  '
            f'eval {r["eval_img_s"]:7.1f} img/s  warm-up {r["warmup_s"]:.1f} s', flush=True)
  best = max((r for n, r in rows if r['framework'] == 'ltjax'), key=lambda r: r['train_img_s'])
  if args.epoch:
    wall, timing = epoch_time(args.epoch, best['devices'])
    steps = timing['steps_run']
    in_step = steps * 128 / best['train_img_s']
    print(f'one CIFAR-10-LT IF100 epoch via ltjax.main ({steps} steps, {best["devices"]} devices): '
          f'{wall:.1f} s wall, data {timing["data_seconds"]:.1f} s, train loop {timing["train_seconds"]:.1f} s '
          f'(first step with compile {timing["first_step_seconds"]:.1f} s), eval {timing["eval_seconds"]:.1f} s; '
          f'outside the step: {100 * (1 - in_step / wall):.0f}% of the wall time')
  if ref is not None:
    print('\n| variant | train img/s | eval img/s | train vs PyTorch eager |\n|---|---|---|---|')
    for name, r in rows:
      print(f'| {name} | {r["train_img_s"]:.1f} | {r["eval_img_s"]:.1f} | {r["train_img_s"] / ref["train_img_s"]:.2f} |')
    print(f'train ratio ltjax/pytorch = {best["train_img_s"] / ref["train_img_s"]:.2f}')


if __name__ == '__main__':
  main()
