"""Layer choices shared by every model: the convolution, BatchNorm, initialisers.

The convolution is chosen here, in one place, for every backbone:

- ``xla``: ``lax.conv_general_dilated`` and its XLA gradients (GPU and TPU use it:
  cuDNN / the MXU are fast at all three convolutions of a step).
- ``taps``: the same forward and input gradient, but the weight gradient computed as
  one matrix product per kernel tap, ``dW[i, j] = x_shift(i, j)^T dy``. XLA's CPU
  weight gradient of a small-channel 3x3 convolution is several times slower than
  its forward pass (see bench/README.md); a plain product is what the CPU is fast at.

``conv_impl='auto'`` picks the measured fastest (bench/README.md, ResNet-32, 2-core
CPU): ``taps`` on a single CPU device (57 img/s against 39 for ``xla``), ``xla`` on a
CPU split into 8 devices (70 against 57: the per-device products get too small) and
on every accelerator.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

# PyTorch's kaiming_normal_ (fan_in, ReLU gain), as in the LDAM-DRW ResNets.
kaiming_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
# Convolution inits (model.conv_init): kaiming-normal over the fan-in (k x k x in / groups:
# the CIFAR ResNet-32 of LDAM-DRW and BagofTricks-LT) or the fan-out (k x k x out:
# torchvision's ResNets, and the ResNeXt of Kang et al. and SSD-LT, normal(0, sqrt(2 / n)),
# n = k x k x out_channels). On ResNeXt-50's grouped 3x3 convolutions (out = 32 x in / groups) the
# std differs 5.7x, on its 7x7 stem 4.6x.
CONV_INITS = {'fan_in': kaiming_normal,
              'fan_out': nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')}

class BatchNorm(nn.BatchNorm):
  """flax's ``nn.BatchNorm`` whose running variance averages the *unbiased* batch
  variance, ``var * n / (n - 1)`` with ``n`` the values per channel (batch x H x W), as
  PyTorch's ``BatchNorm2d`` does (flax averages the biased one). Normalisation, the
  running mean and the variables (``scale``, ``bias``; ``batch_stats``: ``mean``,
  ``var``) are flax's own, so layer names and checkpoints are unchanged. Under jax.jit
  with the batch sharded over devices, statistics are over the global batch."""

  @nn.compact
  def __call__(self, x, use_running_average=None, **kwargs):
    training = not nn.merge_param('use_running_average', self.use_running_average, use_running_average)
    update = training and not self.is_initializing() and self.has_variable('batch_stats', 'var')
    before = self.get_variable('batch_stats', 'var') if update else None
    y = super().__call__(x, use_running_average=use_running_average, **kwargs)
    if update:
      # flax stored m * before + (1 - m) * v (v: the biased batch variance); add the
      # (1 - m) * v / (n - 1) that makes it PyTorch's unbiased average.
      n = x.size // x.shape[-1]
      after = self.get_variable('batch_stats', 'var')
      biased = (after - self.momentum * before) / (1 - self.momentum)
      self.put_variable('batch_stats', 'var', after + (1 - self.momentum) * biased / max(n - 1, 1))
    return y


# PyTorch BatchNorm2d defaults: momentum 0.1 on the running stats, eps 1e-5.
batch_norm = functools.partial(BatchNorm, momentum=0.9, epsilon=1e-5)

CONV_IMPLS = ('auto', 'xla', 'taps')
# Tap products win only on large feature maps: per ResNet-32 layer (batch 128, 1 CPU
# device), weight gradient in ms, XLA vs taps: 16->16 @32x32 118 vs 73, 3->16 @32x32
# 28 vs 9, but 32->32 @16x16 19 vs 42 and 64->64 @8x8 11 vs 11 (bench/conv_kernels.py).
TAPS_MIN_OUTPUT_POSITIONS = 32 * 32
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _xla_conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _shifted_taps(x, kh, kw, strides, padding, out_hw):
  """The input window seen by each kernel tap (i, j): ``[N, Ho, Wo, C]`` each."""
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  (sh, sw), (ho, wo) = strides, out_hw
  n, _, _, c = x.shape
  return [lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def tap_grad_conv(x, w, strides, padding):
  """NHWC x HWIO convolution whose weight gradient is one product per kernel tap."""
  return _xla_conv(x, w, strides, padding)


def _tap_fwd(x, w, strides, padding):
  return _xla_conv(x, w, strides, padding), (x, w)


def _tap_bwd(strides, padding, res, g):
  x, w = res
  _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, w, strides, padding), x)
  (dx,) = input_vjp(g)
  kh, kw, cin, cout = w.shape
  g2 = g.reshape(-1, cout)
  taps = _shifted_taps(x, kh, kw, strides, padding, g.shape[1:3])
  dw = jnp.stack([
      lax.dot(t.reshape(-1, cin).T, g2, preferred_element_type=jnp.float32) for t in taps])
  return dx, dw.reshape(kh, kw, cin, cout).astype(w.dtype)


tap_grad_conv.defvjp(_tap_fwd, _tap_bwd)


def taps_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                              rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                              batch_group_count=1, precision=None, preferred_element_type=None,
                              min_output_positions=None):
  """Drop-in for ``lax.conv_general_dilated`` (as flax's ``nn.Conv`` calls it) that
  uses ``tap_grad_conv`` where it applies and is faster (at least
  ``min_output_positions`` output pixels), and XLA's convolution elsewhere."""
  plain = ((lhs_dilation is None or all(d == 1 for d in lhs_dilation))
           and (rhs_dilation is None or all(d == 1 for d in rhs_dilation))
           and feature_group_count == 1 and batch_group_count == 1
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC)
  if not plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision, preferred_element_type)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  if min_output_positions is None:
    min_output_positions = TAPS_MIN_OUTPUT_POSITIONS
  out_hw = [(lhs.shape[1 + i] + sum(padding[i]) - rhs.shape[i]) // window_strides[i] + 1 for i in (0, 1)]
  if out_hw[0] * out_hw[1] < min_output_positions:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, dimension_numbers=dimension_numbers,
                                    precision=precision, preferred_element_type=preferred_element_type)
  return tap_grad_conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))


def resolve_conv_impl(impl: str) -> str:
  if impl not in CONV_IMPLS:
    raise ValueError(f'unknown conv implementation {impl!r}; choose one of {CONV_IMPLS}.')
  if impl == 'auto':
    return 'taps' if jax.default_backend() == 'cpu' and jax.local_device_count() == 1 else 'xla'
  return impl


def conv(features, kernel_size, *, impl: str = 'xla', init: str = 'fan_in', **kwargs):
  """``nn.Conv`` without bias, kaiming-normal init over ``init`` (``CONV_INITS``), and the
  chosen implementation."""
  if init not in CONV_INITS:
    raise ValueError(f'unknown model.conv_init {init!r}; choose one of {tuple(CONV_INITS)}.')
  fn = taps_conv_general_dilated if resolve_conv_impl(impl) == 'taps' else None
  return nn.Conv(features, kernel_size, use_bias=False, kernel_init=CONV_INITS[init],
                 conv_general_dilated=fn, **kwargs)
