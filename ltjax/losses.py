"""Every loss of ltjax as a pure, batched, jittable function (METHODS.md section 2).

Conventions: ``logits`` is ``[B, C]`` (any float dtype: computation is done in
float32 so bf16 logits stay stable), ``labels`` is ``[B]`` int, class counts are
``[C]``. Each function returns the mean over the batch unless it says otherwise.
This module imports nothing of ltjax: it is pure math, tested alone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def per_example_cross_entropy(logits, labels):
  """``-log softmax(z)_y`` for every example, shape ``[B]``."""
  logp = jax.nn.log_softmax(_f32(logits), axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def cross_entropy(logits, labels, class_weights=None):
  """Cross-entropy ``CE = -log softmax(z)_y``, optionally weighted per class.

  With ``class_weights`` w this is the weighted mean ``sum_i w_{y_i} CE_i / sum_i w_{y_i}``
  over the batch, as PyTorch's ``F.cross_entropy(weight=w)`` that LDAM-DRW's reference
  code calls for CE-DRW and LDAM-DRW; without, the plain batch mean.
  """
  ce = per_example_cross_entropy(logits, labels)
  if class_weights is None:
    return jnp.mean(ce)
  w = _f32(class_weights)[labels]
  return jnp.sum(w * ce) / jnp.sum(w)


def balanced_softmax_cross_entropy(logits, labels, class_counts, tau=1.0):
  """Balanced Softmax CE (Ren et al.) / logit adjustment: ``CE(y, z + tau * log n)``.

  ``class_counts`` are the training images per class (or any prior proportional to
  them). Only the loss is adjusted: inference uses the plain logits ``z``.
  """
  return cross_entropy(_f32(logits) + _log_prior_adjustment(class_counts, tau), labels)


def _log_prior_adjustment(class_counts, tau):
  """``tau * log n`` per class; a class without training images gets -inf (prior 0), or 0
  where ``tau`` is 0 (no adjustment: not 0 * -inf)."""
  n = _f32(class_counts)
  return jnp.where(n > 0, tau * jnp.log(jnp.maximum(n, 1.0)), jnp.where(tau > 0, -jnp.inf, 0.0))


def accuracy(logits, labels):
  """Top-1 accuracy of a batch, in [0, 1]."""
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def focal_loss(logits, labels, gamma=2.0, class_weights=None):
  """Focal loss (Lin et al.): ``-(1 - p_y)^gamma log p_y``, the plain batch mean.
  ``gamma = 0`` is cross-entropy.

  With ``class_weights`` w (CB-focal: ``class_balanced_weights``) it is the ``FocalLoss``
  of LDAM-DRW's code (its softmax CB-focal; Cui et al.'s own is sigmoid-based): the
  weighted per-example CE ``c_i = w_{y_i} CE_i`` goes through ``(1 - exp(-c_i))^gamma c_i``
  (the weight is inside the modulating factor too), then the plain mean over the batch.
  """
  ce = per_example_cross_entropy(logits, labels)
  if class_weights is not None:
    ce = _f32(class_weights)[labels] * ce
  if gamma == 0:  # (1 - p)^0 = 1, and no 0 * inf gradient where p rounds to 1
    return jnp.mean(ce)
  # 1 - p_y, kept off 0: below gamma 1, d(x^gamma)/dx is infinite at x = 0 (NaN gradients
  # once an example is fitted to float32 precision); at x = 1e-30 the term is below 1e-15.
  return jnp.mean(jnp.maximum(-jnp.expm1(-ce), 1e-30) ** gamma * ce)


def sigmoid_focal_loss(logits, labels, gamma=1.0, class_weights=None):
  """The CB-focal loss of Cui et al.'s own code (``focal_loss`` of ``src/cifar_main.py``):
  every class a sigmoid, ``sum_i w_{y_i} sum_c (1 - p_ic)^gamma BCE(z_ic, [c = y_i])`` over
  the batch size, where ``p_ic`` is the sigmoid's probability of the right answer for class
  c. ``class_weights`` (the example's class weight multiplies all its C terms) default
  to ones: Lin et al.'s sigmoid focal loss; ``gamma = 0`` is Cui et al.'s CB sigmoid loss.
  Their classifier starts with bias ``-log(C - 1)``, undecayed (``supervised.py``)."""
  z = _f32(logits)
  onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(z, onehot)
  # (1 - p_t)^gamma = exp(-gamma (y z + softplus(-z))), Cui et al.'s stable form.
  modulator = 1.0 if gamma == 0 else jnp.exp(-gamma * (onehot * z + jax.nn.softplus(-z)))
  weights = 1.0 if class_weights is None else _f32(class_weights)[labels][:, None]
  return jnp.sum(weights * modulator * bce) / z.shape[0]


def class_balanced_weights(class_counts, beta=0.9999):
  """Class-balanced weights (Cui et al.): ``w_c ∝ (1 - beta) / (1 - beta^n_c)``, the
  inverse effective number of samples, normalised to sum to C.

  A constant of the training set, computed once on the host in float64: with beta
  near 1, ``1 - beta`` and ``1 - beta^n`` lose about 1e-5 of relative precision in
  float32. Returns a NumPy float32 array to pass to the jitted losses.
  A class without training images (its weight never used: no label is of it) gets 0,
  and the others share the sum C; ``beta = 0`` gives equal weights (1 each)."""
  counts = np.asarray(class_counts, np.float64)
  present = counts > 0
  if not present.any():
    raise ValueError('class_balanced_weights: every class count is 0.')
  if beta == 0:
    w = present.astype(np.float64)
  else:
    effective = -np.expm1(counts[present] * np.log(beta))  # 1 - beta^n
    w = np.zeros_like(counts)
    w[present] = (1.0 - beta) / effective
  return (w * len(counts) / w.sum()).astype(np.float32)


def ldam_margins(class_counts, max_margin=0.5):
  """LDAM margins (Cao et al.): ``m_c ∝ n_c^(-1/4)``, the largest equal to ``max_margin``;
  a class without training images (no label is of it) gets 0."""
  n = _f32(class_counts)
  m = jnp.where(n > 0, jnp.maximum(n, 1.0) ** -0.25, 0.0)
  return m * (max_margin / jnp.max(m))


def ldam_loss(logits, labels, class_counts, max_margin=0.5, scale=30.0, class_weights=None):
  """LDAM: subtract ``m_y`` from the true-class logit, scale by ``s``, then (weighted)
  CE. ``logits`` are those of the normalised classifier of the reference code."""
  margins = ldam_margins(class_counts, max_margin)[labels]
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  return cross_entropy(scale * (_f32(logits) - margins[:, None] * onehot), labels, class_weights)


def kl_divergence(p_target, logits):
  """``KL(p || softmax(logits))`` per example, with ``0 log 0 = 0``."""
  logq = jax.nn.log_softmax(_f32(logits), -1)
  p = _f32(p_target)
  return jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - logq), 0.0), -1)


def distillation_loss(student_logits, teacher_logits, temperature=1.0):
  """Knowledge distillation (Hinton et al.): ``T^2 KL(softmax(z_t/T) || softmax(z_s/T))``.
  The teacher is treated as a constant (no gradient)."""
  t = jax.nn.softmax(jax.lax.stop_gradient(_f32(teacher_logits)) / temperature, -1)
  return temperature ** 2 * jnp.mean(kl_divergence(t, _f32(student_logits) / temperature))


def power_normalize(probs, power):
  """DiVE's flattening of the teacher's distribution: ``t_k^p / sum_j t_j^p``."""
  tp = jnp.power(_f32(probs), power)
  return tp / jnp.sum(tp, -1, keepdims=True)


def dive_teacher_distribution(teacher_logits, temperature=3.0, power=0.5):
  """DiVE's virtual-example distribution ``power_normalize(softmax(z_t / tau), p)``,
  a constant (no gradient reaches the teacher)."""
  t = jax.nn.softmax(jax.lax.stop_gradient(_f32(teacher_logits)) / temperature, -1)
  return power_normalize(t, power)


def dive_distillation_loss(student_logits, teacher_logits, temperature=3.0, power=0.5):
  """DiVE's virtual-example term: ``tau^2 KL(t || softmax(z_s / tau))`` with
  ``t = power_normalize(softmax(z_t / tau), p)``; no power on the student side."""
  t = dive_teacher_distribution(teacher_logits, temperature, power)
  return temperature ** 2 * jnp.mean(kl_divergence(t, _f32(student_logits) / temperature))


DIVE_TARGETS = ('t_tau', 't_tilde')


def dive_student_loss(student_logits, teacher_logits, labels, class_counts, temperature=3.0,
                      power=0.5, alpha=0.5, use_bsce=True, target='t_tau', bsce_tau=1.0):
  """DiVE's student loss (He et al., METHODS.md 2), one value per batch.

  ``target='t_tau'`` (the paper's method): ``(1 - alpha) * hard + alpha * tau^2 *
  KL(t || softmax(z_s / tau))`` with ``t = power_normalize(softmax(z_t / tau), p)`` and
  ``hard`` the BSCE (``use_bsce``: ``CE(y, z_s + bsce_tau * log n)``) or CE of the
  student's logits.

  ``target='t_tilde'`` (the ablation's virtual-example mixture, ltjax's reading): one
  cross-entropy against ``t~ = (1 - alpha) * onehot(y) + alpha * t`` with the same
  flattened teacher ``t``, on the student's logits at temperature 1 (``+ bsce_tau *
  log n`` with ``use_bsce``): hard labels and virtual examples as one label distribution.

  ``power = 1`` is no power normalisation. Returns ``(loss, {'hard': ..., 'distill':
  ...})``, the two terms before weighting (for ``t_tilde``, ``distill`` is the KL of
  ``t`` to the adjusted student at temperature 1).
  """
  if target not in DIVE_TARGETS:
    raise ValueError(f'DiVE target {target!r}; choose one of {DIVE_TARGETS}.')
  z = _f32(student_logits)
  adjusted = z + _log_prior_adjustment(class_counts, bsce_tau) if use_bsce else z
  hard = cross_entropy(adjusted, labels)
  if target == 't_tau':
    distill = dive_distillation_loss(z, teacher_logits, temperature, power)
    return (1 - alpha) * hard + alpha * distill, {'hard': hard, 'distill': distill}
  t = dive_teacher_distribution(teacher_logits, temperature, power)
  if use_bsce and bsce_tau > 0:  # a class without training images has prior 0: no virtual example of it
    t = jnp.where(_f32(class_counts) > 0, t, 0.0)
    t = t / jnp.sum(t, -1, keepdims=True)
  mixture = (1 - alpha) * jax.nn.one_hot(labels, z.shape[-1], dtype=jnp.float32) + alpha * t
  logp = jax.nn.log_softmax(adjusted, -1)
  loss = -jnp.mean(jnp.sum(jnp.where(mixture > 0, mixture * jnp.where(mixture > 0, logp, 0.0), 0.0), -1))
  return loss, {'hard': hard, 'distill': jnp.mean(kl_divergence(t, adjusted))}


def info_nce(query, key, queue, temperature=0.2, labels=None, queue_labels=None):
  """InfoNCE of MoCo (He et al.): each query's positive is its key, negatives are the
  queue of earlier keys. Inputs are L2-normalised here; the loss is CE with the
  positive at index 0 of ``[q.k, q.queue] / T``.

  With ``labels`` and ``queue_labels`` (SSD's variant, as in its official code), queue
  entries that share the query's label are removed from the negatives.
  """
  normalize = lambda x: _f32(x) / jnp.maximum(jnp.linalg.norm(_f32(x), axis=-1, keepdims=True), 1e-12)
  q, k, queue = normalize(query), jax.lax.stop_gradient(normalize(key)), jax.lax.stop_gradient(normalize(queue))
  pos = jnp.sum(q * k, -1, keepdims=True)
  neg = q @ queue.T
  if labels is not None:
    neg = jnp.where(labels[:, None] == queue_labels[None, :], -jnp.inf, neg)
  logits = jnp.concatenate([pos, neg], -1) / temperature
  return cross_entropy(logits, jnp.zeros(q.shape[0], jnp.int32))


def rotation_loss(rotation_logits, rotations):
  """Rotation prediction (Gidaris et al.): 4-way CE on the rotation (0, 1, 2, 3 for 0,
  90, 180 and 270 degrees) of each image, from a rotation head on shared features."""
  return cross_entropy(rotation_logits, rotations)
