"""Decoupled classifier learning (Kang et al.): a CE phase learns the representation,
then a second phase refits only the classifier on the frozen backbone (METHODS.md 2).

- ``crt``: a re-initialised linear classifier, class-balanced sampling.
- ``lws``: the CE classifier frozen, one learned scale per class, class-balanced.
- ``tau_norm``: no training; each class weight vector divided by ``||w_c||^tau``, the
  bias dropped as Kang et al.'s ``tau_norm.py`` does (``loss.tau_norm_bias=True`` keeps
  it, as BagofTricks-LT). Results hold a sweep over tau on the test set: choosing tau on
  it is optimistic, a real choice needs a validation split.

The second phase starts from the CE phase's final checkpoint (``Phase.init_from``), of
this workdir or, with ``stage2.backbone_dir``, of another run (one baseline for every
classifier method, as Kang et al.'s stage-2 configs load their stage-1 model); its
backbone's BatchNorm runs as ``stage2.backbone_bn`` says and only the parameters named by
``trainable`` are updated.
"""
from __future__ import annotations

import jax.numpy as jnp

from ltjax import evaluate, losses
from ltjax.models import build_model
from ltjax.recipes import supervised
from ltjax.train import Phase, sampling


def stage2_train_config(config):
  """``config.train`` with the classifier stage's own schedule: every field of
  ``config.stage2`` that ``config.train`` has (not its sampler or ``backbone_bn``, which
  say how the phase runs); ``batch_size`` 0 keeps the main phase's batch; one lr for all
  (``train.backbone_lr_scale`` is for a backbone that trains)."""
  tc = config.train.copy_and_resolve_references()
  for key, value in config.stage2.items():
    if key in tc and not (key == 'batch_size' and value == 0):
      tc[key] = value
  if 'backbone_lr_scale' in tc:
    tc.backbone_lr_scale = 1.0  # the backbone is frozen here: no parameter group of its own
  return tc


ce_loss = supervised.logits_loss(lambda z, y, epoch: losses.cross_entropy(z, y))


def _backbone_from(earlier, head):
  """The earlier phase's backbone (weights and BatchNorm statistics) under ``head``."""
  return {'params': {'backbone': earlier['params']['backbone'], 'head': head},
          'batch_stats': earlier['batch_stats']}


# The methods whose last phase refits the classifier on a CE phase's backbone.
METHODS = ('crt', 'lws', 'tau_norm')


def _ce_backbone(config) -> dict:
  """Where a classifier phase of crt, lws or tau_norm takes its CE backbone."""
  return dict(init_from='ce', init_path=config.stage2.backbone_dir, init_path_field='stage2.backbone_dir')


def classifier_phase(config, dataset, name, kind, init_from, head_key='head', backbone_bn=None, **source):
  """Phase ``name``: the classifier refit on the frozen backbone of phase ``init_from``
  with ``config.stage2``'s sampler and schedule; ``kind`` ``crt`` (a new linear
  classifier) or ``lws`` (learned scales over that phase's ``head_key`` classifier,
  which stays frozen). SSD's phases II and IV are such phases too. The backbone's
  weights stay frozen; its BatchNorm runs as ``backbone_bn`` (default
  ``config.stage2.backbone_bn``) says."""
  backbone_train = (backbone_bn or config.stage2.backbone_bn) == 'train'
  if kind == 'lws':
    model = build_model(config.model, dataset.num_classes, head='lws', backbone_train=backbone_train)
    init = lambda fresh, earlier: _backbone_from(
        earlier, {'scales': fresh['params']['head']['scales'], 'linear': earlier['params'][head_key]})
    trainable = lambda path: path[:2] == ('head', 'scales')
  elif kind == 'crt':
    model = build_model(config.model, dataset.num_classes, backbone_train=backbone_train)
    init = lambda fresh, earlier: _backbone_from(earlier, fresh['params']['head'])
    trainable = lambda path: path[0] == 'head'
  else:
    raise ValueError(f'classifier refit {kind!r}; choose crt or lws.')
  return Phase(name=name, model=model, loss=ce_loss, **sampling(config.stage2),
               train=stage2_train_config(config), init_from=init_from, init=init, trainable=trainable, **source)


def crt(config, dataset):
  return supervised.ce(config, dataset) + [classifier_phase(config, dataset, 'crt', 'crt', **_ce_backbone(config))]


def lws(config, dataset):
  return supervised.ce(config, dataset) + [classifier_phase(config, dataset, 'lws', 'lws', **_ce_backbone(config))]


def tau_normalize(head_params, tau, keep_bias=False):
  """``w_c / ||w_c||^tau`` for each class column of the linear classifier; its bias set
  to 0 (Kang et al.'s ``tau_norm.py`` scores ``f . w_c / ||w_c||^tau`` alone) unless
  ``keep_bias`` (BagofTricks-LT)."""
  dense = head_params['Dense_0']
  norms = jnp.linalg.norm(dense['kernel'], axis=0, keepdims=True)
  bias = dense['bias'] if keep_bias else jnp.zeros_like(dense['bias'])
  return {'Dense_0': {**dense, 'kernel': dense['kernel'] / norms ** tau, 'bias': bias}}


def tau_norm(config, dataset):
  model = build_model(config.model, dataset.num_classes, backbone_train=False)
  tc = stage2_train_config(config)
  with tc.unlocked():
    tc.epochs = 0  # post hoc: nothing to train
  tau, keep_bias = config.loss.tau_norm_tau, config.loss.tau_norm_bias

  def sweep(variables, earlier, evaluate_fn):
    def at(t, split):
      params = {**earlier['params'], 'head': tau_normalize(earlier['params']['head'], t, keep_bias)}
      res = evaluate_fn({'params': params, 'batch_stats': earlier['batch_stats']}, split=split)
      return {'tau': float(t), **{k: res[k] for k in evaluate.SUMMARY}}

    rows = [at(t, 'test') for t in config.loss.tau_norm_sweep]
    best = max(rows, key=lambda r: r['top1'])  # the first (smallest tau) of equal ones
    out = {'tau': tau, 'tau_sweep': rows,
           'tau_note': f'tau = {tau:g} is the configured value; the best on the test set was '
                       f'tau = {best["tau"]:g} ({best["top1"]:.2f}), an optimistic choice' + (
                           '; best_val_selected is the choice on the validation split.'
                           if config.run.val_every_epochs else ': a real choice of tau needs a '
                           'validation split (run.val_every_epochs, where the dataset has one).')}
    if config.run.val_every_epochs:
      # Kang et al.'s tau_norm.py sweeps tau over the validation split's features (--type val).
      val_rows = [at(t, 'val') for t in config.loss.tau_norm_sweep]
      chosen = max(range(len(rows)), key=lambda i: val_rows[i]['top1'])
      out['tau_val_sweep'] = val_rows
      out['best_val_selected'] = {
          'tau': rows[chosen]['tau'], 'val': {k: val_rows[chosen][k] for k in evaluate.SUMMARY},
          **{k: rows[chosen][k] for k in evaluate.SUMMARY},
          'selected_on': "the validation split (Kang et al.'s tau sweep); the result is top1, at the configured tau"}
    return out

  second = Phase(
      name='tau_norm', model=model, loss=ce_loss, sampler='instance', train=tc, **_ce_backbone(config),
      init=lambda fresh, earlier: _backbone_from(earlier, tau_normalize(earlier['params']['head'], tau, keep_bias)),
      trainable=lambda path: False, extra_eval=sweep)
  return supervised.ce(config, dataset) + [second]
