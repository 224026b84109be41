"""Classifier heads on top of pooled backbone features."""
from __future__ import annotations

from flax import linen as nn

from ltjax.models import layers


class LinearHead(nn.Module):
  """A linear classifier ``z = W f + b`` (kaiming-normal W, zero b)."""
  num_classes: int

  @nn.compact
  def __call__(self, features):
    return nn.Dense(self.num_classes, kernel_init=layers.kaiming_normal)(features)
