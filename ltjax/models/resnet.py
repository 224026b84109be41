"""ResNets for 32x32 images (He et al. 2016, section 4.2), as in LDAM-DRW.

ResNet-(6n+2): a 3x3 stem, three stages of n basic blocks with w, 2w, 4w channels
(w = 16 for ResNet-32, n = 5), stride 2 at the start of stages 2 and 3, and the
parameter-free "option A" shortcut (subsample, zero-pad channels) of the
reference code. The backbone returns globally pooled features; the classifier head
lives in ``heads.py``.
"""
from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from ltjax.models import layers


class BasicBlock(nn.Module):
  channels: int
  stride: int = 1
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'
  conv_init: str = 'fan_in'

  @nn.compact
  def __call__(self, x, train: bool):
    y = layers.conv(self.channels, (3, 3), strides=self.stride, padding=1, dtype=self.dtype,
                    impl=self.conv_impl, init=self.conv_init)(x)
    y = layers.batch_norm(use_running_average=not train, dtype=self.dtype)(y)
    y = nn.relu(y)
    y = layers.conv(self.channels, (3, 3), padding=1, dtype=self.dtype, impl=self.conv_impl,
                    init=self.conv_init)(y)
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
  conv_init: str = 'fan_in'  # layers.CONV_INITS: LDAM-DRW's kaiming_normal_

  @nn.compact
  def __call__(self, x, train: bool = True):
    blocks = (self.depth - 2) // 6
    x = layers.conv(self.width, (3, 3), padding=1, dtype=self.dtype, impl=self.conv_impl, init=self.conv_init)(x)
    x = nn.relu(layers.batch_norm(use_running_average=not train, dtype=self.dtype)(x))
    for stage in range(3):
      for block in range(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(self.width * 2 ** stage, stride, self.dtype, self.conv_impl, self.conv_init)(x, train)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


# ---------------------------------------------------------------- ImageNet ResNets
# torchvision's ResNet v1.5 (stride in the 3x3 convolution of a bottleneck), as the
# decoupling (Kang et al.), DiVE and SSD ImageNet-LT / iNaturalist code use it:
# a 7x7 stride-2 stem and 3x3 max-pool, four stages of 64, 128, 256, 512 planes, a
# 1x1 convolution + BatchNorm shortcut where the shape changes.

class ImageNetBasicBlock(nn.Module):
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'
  conv_init: str = 'fan_out'
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda: layers.batch_norm(use_running_average=not train, dtype=self.dtype)
    conv = functools.partial(layers.conv, dtype=self.dtype, impl=self.conv_impl, init=self.conv_init)
    y = conv(self.planes, (3, 3), strides=self.stride, padding=1)(x)
    y = nn.relu(bn()(y))
    y = conv(self.planes, (3, 3), padding=1)(y)
    y = bn()(y)
    return nn.relu(y + _projection(x, self.planes, self.stride, bn, conv))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride, ``groups``) -> 1x1 x4; ResNeXt widens the 3x3 to
  ``planes * base_width / 64 * groups`` channels in ``groups`` groups."""
  planes: int
  stride: int = 1
  groups: int = 1
  base_width: int = 64
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'
  conv_init: str = 'fan_out'
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda: layers.batch_norm(use_running_average=not train, dtype=self.dtype)
    conv = functools.partial(layers.conv, dtype=self.dtype, impl=self.conv_impl, init=self.conv_init)
    width = int(self.planes * self.base_width / 64) * self.groups
    y = conv(width, (1, 1))(x)
    y = nn.relu(bn()(y))
    y = conv(width, (3, 3), strides=self.stride, padding=1, feature_group_count=self.groups)(y)
    y = nn.relu(bn()(y))
    y = conv(self.planes * 4, (1, 1))(y)
    y = bn()(y)
    return nn.relu(y + _projection(x, self.planes * 4, self.stride, bn, conv))


def _projection(x, channels, stride, bn, conv):
  if stride == 1 and x.shape[-1] == channels:
    return x
  return bn()(conv(channels, (1, 1), strides=stride)(x))


class ImageNetResNet(nn.Module):
  """ResNet-10/18/50/101/152 and ResNeXt-50 (32x4d) backbones; returns pooled float32 features
  (512 for basic blocks, 2048 for bottlenecks)."""
  stage_sizes: tuple[int, ...]
  bottleneck: bool = True
  groups: int = 1
  base_width: int = 64
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'
  # layers.CONV_INITS: torchvision's, Kang et al.'s and SSD-LT's fan-out kaiming-normal
  conv_init: str = 'fan_out'

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = layers.conv(64, (7, 7), strides=2, padding=3, dtype=self.dtype, impl=self.conv_impl, init=self.conv_init)(x)
    x = nn.relu(layers.batch_norm(use_running_average=not train, dtype=self.dtype)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        planes = 64 * 2 ** stage
        if self.bottleneck:
          x = Bottleneck(planes, stride, self.groups, self.base_width, self.dtype, self.conv_impl,
                         self.conv_init)(x, train)
        else:
          x = ImageNetBasicBlock(planes, stride, self.dtype, self.conv_impl, self.conv_init)(x, train)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


# name -> (stage sizes, bottleneck, groups, base width)
IMAGENET_RESNETS = {
    'resnet10': ((1, 1, 1, 1), False, 1, 64),
    'resnet18': ((2, 2, 2, 2), False, 1, 64),
    'resnet50': ((3, 4, 6, 3), True, 1, 64),
    'resnet101': ((3, 4, 23, 3), True, 1, 64),
    'resnet152': ((3, 8, 36, 3), True, 1, 64),
    'resnext50_32x4d': ((3, 4, 6, 3), True, 32, 4),
}
