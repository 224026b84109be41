"""ResNets for 32x32 images (He et al. 2016, section 4.2), as in LDAM-DRW.

ResNet-(6n+2): a 3x3 stem, three stages of n basic blocks with w, 2w, 4w channels
(w = 16 for ResNet-32, n = 5), stride 2 at the start of stages 2 and 3, and the
parameter-free "option A" shortcut (subsample, zero-pad channels) of the
reference code. The backbone returns globally pooled features; the classifier head
lives in ``heads.py``.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from ltjax.models import layers


class BasicBlock(nn.Module):
  channels: int
  stride: int = 1
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x, train: bool):
    y = layers.conv(self.channels, (3, 3), strides=self.stride, padding=1, dtype=self.dtype,
                    impl=self.conv_impl)(x)
    y = layers.batch_norm(use_running_average=not train, dtype=self.dtype)(y)
    y = nn.relu(y)
    y = layers.conv(self.channels, (3, 3), padding=1, dtype=self.dtype, impl=self.conv_impl)(y)
    y = layers.batch_norm(use_running_average=not train, dtype=self.dtype)(y)
    if self.stride != 1 or x.shape[-1] != self.channels:
      # Option A: x[:, ::2, ::2] with zero channels added on both sides.
      x = x[:, ::self.stride, ::self.stride, :]
      extra = self.channels - x.shape[-1]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return nn.relu(y + x)


class CifarResNet(nn.Module):
  """Backbone of ResNet-``depth`` (depth = 6n + 2) with base width ``width``."""
  depth: int = 32
  width: int = 16
  dtype: Any = jnp.float32  # computation dtype; parameters stay float32
  conv_impl: str = 'xla'  # see layers.py

  @nn.compact
  def __call__(self, x, train: bool = True):
    blocks = (self.depth - 2) // 6
    x = layers.conv(self.width, (3, 3), padding=1, dtype=self.dtype, impl=self.conv_impl)(x)
    x = nn.relu(layers.batch_norm(use_running_average=not train, dtype=self.dtype)(x))
    for stage in range(3):
      for block in range(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(self.width * 2 ** stage, stride, self.dtype, self.conv_impl)(x, train)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
