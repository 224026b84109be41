"""Classifier heads on top of pooled backbone features."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from ltjax.models import layers


HEAD_INITS = ('kaiming', 'ldam', 'torch')


def _symmetric_uniform(bound: float):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class LinearHead(nn.Module):
  """A linear classifier ``z = W f + b``. ``init_scheme``: ``kaiming`` (kaiming-normal W, zero
  b), ``ldam`` (LDAM-DRW's resnet32: kaiming-normal W, PyTorch's default b ~ U(+-1/sqrt(d))),
  ``torch`` (PyTorch's ``nn.Linear`` default, BBN's and BagofTricks-LT's classifier:
  W and b ~ U(+-1/sqrt(d))), d the feature width."""
  num_classes: int
  init_scheme: str = 'kaiming'

  @nn.compact
  def __call__(self, features):
    if self.init_scheme not in HEAD_INITS:
      raise ValueError(f'unknown model.head_init {self.init_scheme!r}; choose one of {HEAD_INITS}.')
    bound = 1.0 / float(features.shape[-1]) ** 0.5
    kernel_init = _symmetric_uniform(bound) if self.init_scheme == 'torch' else layers.kaiming_normal
    bias_init = nn.initializers.zeros if self.init_scheme == 'kaiming' else _symmetric_uniform(bound)
    return nn.Dense(self.num_classes, kernel_init=kernel_init, bias_init=bias_init)(features)


class NormedLinearHead(nn.Module):
  """Cosine classifier of LDAM-DRW (``NormedLinear``): ``z_c = f/|f| . w_c/|w_c|``, in
  [-1, 1]; the LDAM loss scales it by s."""
  num_classes: int

  @nn.compact
  def __call__(self, features):
    w = self.param('kernel', nn.initializers.uniform(2.0), (features.shape[-1], self.num_classes))
    w = w - 1.0  # uniform(-1, 1), as the reference's uniform_(-1, 1) before renorm
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
  feature width, as 2048-2048-128 on ResNeXt-50)."""
  dim: int = 128
  hidden: int = 0

  @nn.compact
  def __call__(self, features):
    h = nn.Dense(self.hidden or features.shape[-1], kernel_init=layers.kaiming_normal)(features)
    return nn.Dense(self.dim, kernel_init=layers.kaiming_normal)(nn.relu(h))
