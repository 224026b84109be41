"""Where ResNet-32's CPU training time goes: each convolution's forward, input
gradient and weight gradient, in XLA (lax.conv, and the tap-product weight gradient of
ltjax/models/layers.py) and in PyTorch, weighted by how often ResNet-32 uses it.

  python bench/conv_kernels.py                  # JAX kernels (1 CPU device)
  TORCH=1 python bench/conv_kernels.py          # PyTorch kernels (needs torch)

Prints one JSON line per framework: milliseconds per kernel and per training step.
"""
import json
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo's ltjax and configs


# (count in ResNet-32, H=W of the input, C_in, C_out, stride)
SHAPES = [(1, 32, 3, 16, 1), (10, 32, 16, 16, 1), (1, 32, 16, 32, 2), (9, 16, 32, 32, 1),
          (1, 16, 32, 64, 2), (9, 8, 64, 64, 1)]
BATCH = 128


def median_ms(fn, n=7):
  fn()
  ts = []
  for _ in range(n):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return 1000 * statistics.median(ts)


def jax_rows():
  import jax
  import jax.numpy as jnp
  from jax import lax

  from ltjax.models import layers

  rows = []
  for count, hw, cin, cout, s in SHAPES:
    x = jax.random.normal(jax.random.key(0), (BATCH, hw, hw, cin))
    w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * 0.1
    pad = ((1, 1), (1, 1))
    xla = lambda x, w: lax.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    taps = lambda x, w: layers.tap_grad_conv(x, w, (s, s), pad)
    g = jnp.ones(xla(x, w).shape)
    f = jax.jit(xla)
    dx = jax.jit(lambda x, w: jax.vjp(lambda x_: xla(x_, w), x)[1](g)[0])
    dw = jax.jit(lambda x, w: jax.vjp(lambda w_: xla(x, w_), w)[1](g)[0])
    dw_taps = jax.jit(lambda x, w: jax.vjp(lambda w_: taps(x, w_), w)[1](g)[0])
    r = {'count': count, 'shape': f'{cin}->{cout} @{hw} s{s}'}
    for name, fn in [('fwd', f), ('dx', dx), ('dw', dw), ('dw_taps', dw_taps)]:
      r[name] = round(median_ms(lambda: jax.block_until_ready(fn(x, w))), 2)
    rows.append(r)
  return rows


def torch_rows():
  import torch
  import torch.nn.functional as F

  rows = []
  for count, hw, cin, cout, s in SHAPES:
    x = torch.randn(BATCH, cin, hw, hw)
    w = torch.randn(cout, cin, 3, 3) * 0.1
    g = torch.ones_like(F.conv2d(x, w, stride=s, padding=1))
    r = {'count': count, 'shape': f'{cin}->{cout} @{hw} s{s}'}
    with torch.no_grad():
      r['fwd'] = round(median_ms(lambda: F.conv2d(x, w, stride=s, padding=1)), 2)
    r['dx'] = round(median_ms(lambda: torch.nn.grad.conv2d_input(x.shape, w, g, stride=s, padding=1)), 2)
    r['dw'] = round(median_ms(lambda: torch.nn.grad.conv2d_weight(x, w.shape, g, stride=s, padding=1)), 2)
    rows.append(r)
  return rows


def main():
  use_torch = os.environ.get('TORCH') == '1'
  if not use_torch:
    import jax
    jax.config.update('jax_num_cpu_devices', 1)
  rows = torch_rows() if use_torch else jax_rows()
  totals = {k: round(sum(r['count'] * r[k] for r in rows), 1) for k in rows[0] if k not in ('count', 'shape')}
  print(json.dumps({'framework': 'pytorch' if use_torch else 'jax', 'batch': BATCH, 'rows': rows,
                    'ms_per_step': totals}))


if __name__ == '__main__':
  main()
