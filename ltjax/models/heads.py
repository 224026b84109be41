"""Classifier heads on top of pooled backbone features."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from ltjax.models import layers


HEAD_INITS = ('kaiming', 'ldam', 'torch')


def _symmetric_uniform(bound: float):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def dense(width: int, d_in: int, init_scheme: str, bias: float | None = None) -> nn.Dense:
  """A ``nn.Dense`` layer from ``d_in`` features with ``init_scheme`` (``HEAD_INITS``):
  ``kaiming`` (kaiming-normal W, zero b), ``ldam`` (LDAM-DRW's resnet32: kaiming-normal W,
  PyTorch's default b ~ U(+-1/sqrt(d_in))), ``torch`` (PyTorch's ``nn.Linear`` default,
  BBN's, BagofTricks-LT's, Kang et al.'s and SSD-LT's layers: W and b ~ U(+-1/sqrt(d_in)));
  ``bias`` (a number): every b starts there instead."""
  if init_scheme not in HEAD_INITS:
    raise ValueError(f'unknown model.head_init {init_scheme!r}; choose one of {HEAD_INITS}.')
  bound = 1.0 / float(d_in) ** 0.5
  kernel_init = _symmetric_uniform(bound) if init_scheme == 'torch' else layers.kaiming_normal
  bias_init = nn.initializers.zeros if init_scheme == 'kaiming' else _symmetric_uniform(bound)
  if bias is not None:
    bias_init = nn.initializers.constant(bias)
  return nn.Dense(width, kernel_init=kernel_init, bias_init=bias_init)


class LinearHead(nn.Module):
  """A linear classifier ``z = W f + b``, initialised by ``init_scheme`` (``dense``);
  ``bias`` (a number) starts every b there instead (Cui et al.'s sigmoid classifiers:
  ``-log(C - 1)``, ``prior_bias_head``)."""
  num_classes: int
  init_scheme: str = 'kaiming'
  bias: float | None = None

  @nn.compact
  def __call__(self, features):
    return dense(self.num_classes, features.shape[-1], self.init_scheme, self.bias)(features)


def prior_bias_head(num_classes: int, init_scheme: str = 'kaiming') -> LinearHead:
  """Cui et al.'s classifier for sigmoid losses: every class's bias starts at
  ``-log(C - 1)``, so that each sigmoid first predicts the class prior 1/C."""
  return LinearHead(num_classes, init_scheme, bias=-math.log(num_classes - 1))


NORMED_INITS = ('unit', 'shifted')


def _unit_columns(key, shape, dtype=jnp.float32):
  """LDAM-DRW's ``NormedLinear`` weight: ``uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)``,
  each class's column (``[features, classes]``) drawn from U(-1, 1) and scaled to norm 1."""
  w = jax.random.uniform(key, shape, dtype, -1.0, 1.0)
  norm = jnp.linalg.norm(w, axis=0, keepdims=True)
  return jnp.where(norm > 1e-5, w * (1e-5 / (norm + 1e-7)) * 1e5, w)


class NormedLinearHead(nn.Module):
  """Cosine classifier of LDAM-DRW (``NormedLinear``): ``z_c = f/|f| . w_c/|w_c|``, in
  [-1, 1]; the LDAM loss scales it by s. ``init_scheme``: ``unit`` (the reference: the
  weight itself is the parameter, columns U(-1, 1) at norm 1, so weight decay pulls it
  towards 0) or ``shifted`` (ltjax before 2026-11-28, kept to resume its runs: a
  parameter p ~ U[0, 2) and w = p - 1, so weight decay pulled every w towards -1)."""
  num_classes: int
  init_scheme: str = 'unit'

  @nn.compact
  def __call__(self, features):
    if self.init_scheme not in NORMED_INITS:
      raise ValueError(f'unknown model.normed_init {self.init_scheme!r}; choose one of {NORMED_INITS}.')
    shape = (features.shape[-1], self.num_classes)
    if self.init_scheme == 'unit':
      w = self.param('kernel', _unit_columns, shape)
    else:
      w = self.param('kernel', nn.initializers.uniform(2.0), shape) - 1.0
    f = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
    w = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-12)
    return f @ w


class LWSHead(nn.Module):
  """Learnable weight scaling (Kang et al.): ``z_c = s_c (w_c . f + b_c)``, the linear
  classifier frozen by the recipe and only the scales ``s`` (initialised to 1) trained."""
  num_classes: int
  init_scheme: str = 'kaiming'  # of the linear classifier (LinearHead)

  @nn.compact
  def __call__(self, features):
    scales = self.param('scales', nn.initializers.ones, (self.num_classes,))
    return scales * LinearHead(self.num_classes, self.init_scheme, name='linear')(features)


class ProjectionHead(nn.Module):
  """MoCo v2's MLP projection ``Dense(hidden) - ReLU - Dense(dim)`` (hidden 0: the
  feature width, as 2048-2048-128 on ResNeXt-50), both layers initialised by
  ``init_scheme`` (``dense``; MoCo v2's and SSD-LT's MLP: ``torch``)."""
  dim: int = 128
  hidden: int = 0
  init_scheme: str = 'kaiming'

  @nn.compact
  def __call__(self, features):
    hidden = self.hidden or features.shape[-1]
    h = dense(hidden, features.shape[-1], self.init_scheme)(features)
    return dense(self.dim, hidden, self.init_scheme)(nn.relu(h))
