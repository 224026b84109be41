"""One-phase supervised recipes: a loss on the long-tailed training set.

- ``ce``: cross-entropy, instance-balanced sampling.
- ``bsce``: Balanced Softmax CE (Ren et al.), ``CE(y, z + tau log n)``; plain ``z`` at test.
"""
from __future__ import annotations

from ltjax import losses
from ltjax.models import build_model
from ltjax.train import Phase


def _with_accuracy(loss_value, outputs, labels):
  return loss_value, {'accuracy': losses.accuracy(outputs['logits'], labels)}


def ce(config, dataset):
  def loss(outputs, labels):
    return _with_accuracy(losses.cross_entropy(outputs['logits'], labels), outputs, labels)

  model = build_model(config.model, dataset.num_classes)
  return [Phase(name='ce', model=model, loss=loss, sampler=config.data.sampler, train=config.train)]


def bsce(config, dataset):
  counts = dataset.class_counts
  tau = config.loss.bsce_tau

  def loss(outputs, labels):
    value = losses.balanced_softmax_cross_entropy(outputs['logits'], labels, counts, tau)
    return _with_accuracy(value, outputs, labels)

  model = build_model(config.model, dataset.num_classes)
  return [Phase(name='bsce', model=model, loss=loss, sampler=config.data.sampler, train=config.train)]
