"""Recipes: a method name maps to a function ``(config, dataset) -> [Phase, ...]``.

Adding a method is adding a loss and an entry here; the trainer never branches on
method names.
"""
from __future__ import annotations

from ltjax.errors import ConfigError
from ltjax.recipes import decoupled, dive, ssd, supervised

RECIPES = {
    'ce': supervised.ce,
    'bsce': supervised.bsce,
    'focal': supervised.focal,
    'cb_focal': supervised.cb_focal,
    'cb': supervised.cb,
    'ce_drw': supervised.ce_drw,
    'ldam_drw': supervised.ldam_drw,
    'crt': decoupled.crt,
    'lws': decoupled.lws,
    'tau_norm': decoupled.tau_norm,
    'dive': dive.dive,
    'ssd': ssd.ssd,
}


def phases(config, dataset):
  if config.method not in RECIPES:
    raise ConfigError(f'unknown method {config.method!r}; choose one of {sorted(RECIPES)}.')
  return RECIPES[config.method](config, dataset)
