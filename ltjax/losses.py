"""Every loss of ltjax as a pure, batched, jittable function (METHODS.md section 2).

Conventions: ``logits`` is ``[B, C]`` (any float dtype: computation is done in
float32 so bf16 logits stay stable), ``labels`` is ``[B]`` int, class counts are
``[C]``. Each function returns the mean over the batch unless it says otherwise.
This module imports nothing of ltjax: it is pure math, tested alone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def per_example_cross_entropy(logits, labels):
  """``-log softmax(z)_y`` for every example, shape ``[B]``."""
  logp = jax.nn.log_softmax(_f32(logits), axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def cross_entropy(logits, labels, class_weights=None):
  """Cross-entropy ``CE = -log softmax(z)_y``, optionally weighted per class.

  With ``class_weights`` w this is ``sum_i w_{y_i} CE_i / B`` (PyTorch's
  ``F.cross_entropy(weight=w)`` divides by ``sum_i w_{y_i}`` instead; the
  class-balanced recipes of Cui et al. and LDAM-DRW use the plain mean, as here).
  """
  ce = per_example_cross_entropy(logits, labels)
  if class_weights is not None:
    ce = ce * _f32(class_weights)[labels]
  return jnp.mean(ce)


def balanced_softmax_cross_entropy(logits, labels, class_counts, tau=1.0):
  """Balanced Softmax CE (Ren et al.) / logit adjustment: ``CE(y, z + tau * log n)``.

  ``class_counts`` are the training images per class (or any prior proportional to
  them). Only the loss is adjusted: inference uses the plain logits ``z``.
  """
  log_prior = jnp.log(_f32(class_counts))
  return cross_entropy(_f32(logits) + tau * log_prior, labels)


def accuracy(logits, labels):
  """Top-1 accuracy of a batch, in [0, 1]."""
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
