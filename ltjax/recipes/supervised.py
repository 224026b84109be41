"""One-phase supervised recipes: a loss on the long-tailed training set (METHODS.md 2).

- ``ce``: cross-entropy.
- ``bsce``: Balanced Softmax CE (Ren et al.), ``CE(y, z + tau log n)``; plain ``z`` at test.
- ``focal``: focal loss (Lin et al.), ``loss.focal_gamma``.
- ``cb_focal``: focal loss with class-balanced weights (Cui et al.), ``loss.cb_beta``.
  ``loss.focal_form``: softmax (LDAM-DRW's) or sigmoid (Cui et al.'s) for both.
- ``cb``: Cui et al.'s class-balanced loss without focusing: their CB softmax (the plain
  batch mean of ``w_y CE``) or, with ``loss.focal_form=sigmoid``, their CB sigmoid
  (``cb_focal`` at gamma 0, whatever ``loss.focal_gamma`` says).
- ``ce_drw``: CE, class-balanced weights from epoch ``loss.drw_epoch`` (deferred re-weighting).
- ``ldam_drw``: LDAM (Cao et al.) on a cosine classifier, margins ``n^(-1/4)`` (largest
  ``loss.ldam_max_margin``), scale ``loss.ldam_scale``, with DRW.

Each recipe is its loss: the trainer and the pipeline are shared.
"""
from __future__ import annotations

import jax.numpy as jnp

from ltjax import losses, train
from ltjax.errors import ConfigError
from ltjax.models import build_model
from ltjax.train import Phase, sampling


def logits_loss(loss_value_fn):
  """A phase's loss from ``loss_value_fn(logits, labels, epoch)``, with batch accuracy."""
  def loss(outputs, labels, epoch):
    value = loss_value_fn(outputs['logits'], labels, epoch)
    return value, {'accuracy': losses.accuracy(outputs['logits'], labels)}

  return loss


def _phase(config, dataset, name, loss_value_fn, head='linear', eval_scale=1.0, decayed=None):
  loss = logits_loss(loss_value_fn)
  model = build_model(config.model, dataset.num_classes, head=head)
  return [Phase(name=name, model=model, loss=loss, train=config.train, eval_scale=eval_scale, decayed=decayed,
                **sampling(config.data))]


def _drw_weights(config, dataset):
  """Per-class weights at an epoch: ones before ``loss.drw_epoch`` (scaled with the run's
  length as the lr schedule is: ``train.scaled_epoch``), class-balanced after."""
  cb = jnp.asarray(losses.class_balanced_weights(dataset.class_counts, config.loss.cb_beta))
  drw_epoch = train.scaled_epoch(config.train, config.loss.drw_epoch)
  return lambda epoch: jnp.where(epoch >= drw_epoch, cb, jnp.ones_like(cb))


def ce(config, dataset):
  return _phase(config, dataset, 'ce', lambda z, y, epoch: losses.cross_entropy(z, y))


def bsce(config, dataset):
  counts, tau = dataset.class_counts, config.loss.bsce_tau
  return _phase(config, dataset, 'bsce',
                lambda z, y, epoch: losses.balanced_softmax_cross_entropy(z, y, counts, tau))


FOCAL_FORMS = ('softmax', 'sigmoid')


def _focal_phase(config, dataset, name, class_weights=None, gamma=None):
  """``loss.focal_form``: ``softmax`` (LDAM-DRW's ``FocalLoss``, its CB-focal baseline) or
  ``sigmoid`` (Cui et al.'s own code: a sigmoid a class, the classifier's bias starting at
  ``-log(C - 1)`` (each class's prior 1/C) and left out of weight decay). ``gamma``:
  ``loss.focal_gamma`` unless given."""
  form = config.loss.focal_form
  gamma = config.loss.focal_gamma if gamma is None else gamma
  if form == 'softmax':
    return _phase(config, dataset, name, lambda z, y, epoch: losses.focal_loss(z, y, gamma, class_weights))
  if form != 'sigmoid':
    raise ConfigError(f'loss.focal_form={form!r}; choose one of {FOCAL_FORMS}.')
  return _phase(config, dataset, name, lambda z, y, epoch: losses.sigmoid_focal_loss(z, y, gamma, class_weights),
                head='prior_bias', decayed=lambda path: not (path[0] == 'head' and path[-1] == 'bias'))


def focal(config, dataset):
  return _focal_phase(config, dataset, 'focal')


def cb_focal(config, dataset):
  w = jnp.asarray(losses.class_balanced_weights(dataset.class_counts, config.loss.cb_beta))
  return _focal_phase(config, dataset, 'cb_focal', w)


def cb(config, dataset):
  """Cui et al.'s ``--loss-type=softmax`` (``tf.losses.softmax_cross_entropy`` with the
  example's class weight: ``mean_i w_{y_i} CE_i``, unlike LDAM-DRW's weighted mean) or
  ``sigmoid`` (``loss.focal_form``), as their ``cifar_im_trainval_cb.sh`` runs them."""
  w = jnp.asarray(losses.class_balanced_weights(dataset.class_counts, config.loss.cb_beta))
  return _focal_phase(config, dataset, 'cb', w, gamma=0.0)


def ce_drw(config, dataset):
  weights = _drw_weights(config, dataset)
  return _phase(config, dataset, 'ce_drw', lambda z, y, epoch: losses.cross_entropy(z, y, weights(epoch)))


def ldam_drw(config, dataset):
  weights = _drw_weights(config, dataset)
  counts, lc = dataset.class_counts, config.loss

  def value(z, y, epoch):
    return losses.ldam_loss(z, y, counts, lc.ldam_max_margin, lc.ldam_scale, weights(epoch))

  # Evaluated (ECE, NLL, predicted probabilities) as the softmax it trains: of s cos.
  return _phase(config, dataset, 'ldam_drw', value, head='normed', eval_scale=lc.ldam_scale)
