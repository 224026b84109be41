"""ImageNet-pretrained backbones: torchvision's ResNet weights in ltjax's ``ImageNetResNet``.

Kang et al. and OLTR start Places-LT from an ImageNet-pretrained ResNet-152; other
long-tailed work fine-tunes torchvision's ResNet-50. ``model.pretrained`` names such a
file (a path or URL, pinned by ``model.pretrained_sha256``) in torchvision's layout
(``conv1``, ``bn1``, ``layer1.0.conv1`` ... ``layer4.2.downsample.1``, ``fc``), as
torchvision's ``resnet*`` / ``resnext50_32x4d`` state dicts and timm's ``*.tv_in1k``
weights write it, in one of three formats:

- ``.npz``: the state dict's tensors as NumPy arrays under their names (what
  ``python -m ltjax.models.pretrained convert`` writes from a ``.pth``);
- ``.safetensors`` (timm / Hugging Face), read by the ``safetensors`` package, without torch;
- ``.pth`` / ``.pt`` (torchvision's own download), read by torch where it is installed.

Every backbone variable is loaded: convolutions (PyTorch's ``O, I, kh, kw`` to flax's
``kh, kw, I, O``), BatchNorm ``weight``/``bias`` as ``scale``/``bias`` and the running
``mean``/``var`` as ``batch_stats``. The ImageNet classifier (``fc``) is left out: the
head is the new task's. A name the backbone lacks, a missing one, or a shape that does not
fit is an error that lists them (the wrong ``model.name``, or a file of another layout);
a ``module.`` prefix (DataParallel) is removed.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from ltjax import files
from ltjax.errors import ConfigError

FORMATS = ('.npz', '.safetensors', '.pth', '.pt')
_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
       'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of a torchvision-layout weights file (``FORMATS``) as float32 NumPy
  arrays, ``module.`` prefixes removed."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise ConfigError(f'model.pretrained={path!r}: unknown weights format {ext!r}; give one of {FORMATS} '
                      f'(a torchvision .pth converts with `python -m ltjax.models.pretrained convert IN.pth OUT.npz`).')
  if not os.path.exists(path):
    raise ConfigError(f'model.pretrained={path!r}: no such file. Fix: give the path (or URL) of the weights file.')
  if ext == '.npz':
    with np.load(path) as f:
      state = {k: f[k] for k in f.files}
  elif ext == '.safetensors':
    try:
      from safetensors.numpy import load_file
    except ImportError:
      raise ConfigError(f'model.pretrained={path!r} is a .safetensors file, which needs the safetensors '
                        f'package. Fix: pip install safetensors.') from None
    state = load_file(path)
  else:
    try:
      import torch
    except ImportError:
      raise ConfigError(f'model.pretrained={path!r} is a PyTorch file, which needs torch to read. Fix: convert it '
                        f'once where torch is installed (`python -m ltjax.models.pretrained convert {path} '
                        f'OUT.npz`) and pass the .npz, or pip install torch.') from None
    state = torch.load(path, map_location='cpu', weights_only=True)
    state = state.get('state_dict', state)
    state = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
  return {k.removeprefix('module.'): np.asarray(v) for k, v in state.items()}


def check_readable(location: str) -> str:
  """'' if this machine can read ``location``'s format, else why not and the fix (before
  a run downloads it and loads its data)."""
  import importlib.util

  ext = os.path.splitext(location.split('?')[0])[1].lower()
  if ext not in FORMATS:
    return f'unknown weights format {ext!r}; give one of {FORMATS}'
  if ext in ('.pth', '.pt') and importlib.util.find_spec('torch') is None:
    return ('a PyTorch file needs torch to read. Fix: pip install torch, or convert it once where torch is '
            '(python -m ltjax.models.pretrained convert IN.pth OUT.npz) and give the .npz')
  if ext == '.safetensors' and importlib.util.find_spec('safetensors') is None:
    return 'a .safetensors file needs the safetensors package. Fix: pip install safetensors'
  return ''


def torchvision_names(stage_sizes, bottleneck: bool) -> dict[str, tuple[str, ...]]:
  """torchvision module name (``layer2.0.downsample.1``) -> the flax module path inside
  ``ImageNetResNet`` (``('Bottleneck_3', 'BatchNorm_3')``), for every convolution and
  BatchNorm of the backbone."""
  block = 'Bottleneck' if bottleneck else 'ImageNetBasicBlock'
  convs = 3 if bottleneck else 2
  names = {'conv1': ('Conv_0',), 'bn1': ('BatchNorm_0',)}
  index = 0
  for stage, blocks in enumerate(stage_sizes):
    for b in range(blocks):
      prefix = f'layer{stage + 1}.{b}'
      for i in range(convs):
        names[f'{prefix}.conv{i + 1}'] = (f'{block}_{index}', f'Conv_{i}')
        names[f'{prefix}.bn{i + 1}'] = (f'{block}_{index}', f'BatchNorm_{i}')
      if b == 0 and (bottleneck or stage > 0):  # torchvision's downsample: where the shape changes
        names[f'{prefix}.downsample.0'] = (f'{block}_{index}', f'Conv_{convs}')
        names[f'{prefix}.downsample.1'] = (f'{block}_{index}', f'BatchNorm_{convs}')
      index += 1
  return names


def load_backbone(variables: dict, state: dict[str, np.ndarray], stage_sizes, bottleneck: bool,
                  source: str = 'the weights file') -> dict:
  """``variables`` (``{'params': ..., 'batch_stats': ...}`` of an ``ImageNetResNet``) with
  every array replaced by ``state``'s (a torchvision state dict); ``ConfigError`` where
  the two do not fit."""
  names = torchvision_names(stage_sizes, bottleneck)
  out = {col: _copy(variables.get(col, {})) for col in ('params', 'batch_stats')}
  used, problems = set(), []

  def put(col, path, leaf, value, key):
    node = out[col]
    for p in path:
      if p not in node:
        problems.append(f'{key}: the backbone has no {"/".join(path)}')
        return
      node = node[p]
    if leaf not in node:
      problems.append(f'{key}: the backbone has no {"/".join(path)}/{leaf}')
      return
    if tuple(node[leaf].shape) != tuple(value.shape):
      problems.append(f'{key}: shape {tuple(value.shape)} does not fit {"/".join(path)}/{leaf} {tuple(node[leaf].shape)}')
      return
    node[leaf] = np.asarray(value, np.float32)
    used.add(key)

  for tv, path in names.items():
    if tv.split('.')[-1].startswith('conv') or tv.endswith('downsample.0'):
      key = f'{tv}.weight'
      if key not in state:
        problems.append(f'{key}: missing from {source}')
        continue
      put('params', path, 'kernel', np.transpose(state[key], (2, 3, 1, 0)), key)
    else:
      for suffix, (col, leaf) in _BN.items():
        key = f'{tv}.{suffix}'
        if key not in state:
          problems.append(f'{key}: missing from {source}')
          continue
        put(col, path, leaf, state[key], key)
  from flax import traverse_util

  for col in out:  # a variable no torchvision name maps to would stay at its random init
    for path, leaf in traverse_util.flatten_dict(out[col]).items():
      if not isinstance(leaf, np.ndarray):
        problems.append(f'{col}/{"/".join(path)}: no tensor of {source} maps to it')
  ignored = {k for k in state if k.startswith('fc.') or k.endswith('num_batches_tracked')}
  unexpected = sorted(set(state) - used - ignored)
  problems += [f'{k}: not a variable of this backbone' for k in unexpected]
  if problems:
    shown = '\n  '.join(problems[:12]) + (f'\n  ... and {len(problems) - 12} more' if len(problems) > 12 else '')
    raise ConfigError(f'{source} does not fit this backbone ({len(problems)} problems):\n  {shown}\n'
                      f'Fix: set model.name to the network the weights are of (a torchvision-layout ResNet '
                      f'state dict: resnet18/50/101/152, resnext50_32x4d).')
  return out


def into_classifier(variables: dict, model_config, cache_dir: str = '', dataset_name: str = '') -> dict:
  """A ``Classifier``'s ``variables`` with the backbone of ``model_config.pretrained``
  (fetched and checked against ``model_config.pretrained_sha256``); the heads unchanged."""
  from ltjax.models.resnet import IMAGENET_RESNETS

  location = model_config.pretrained
  if model_config.name not in IMAGENET_RESNETS:
    raise ConfigError(f'model.pretrained={location!r} needs an ImageNet ResNet backbone (model.name one of '
                      f'{list(IMAGENET_RESNETS)}), not {model_config.name!r}.')
  path = files.fetch(location, model_config.get('pretrained_sha256', ''), cache_dir,
                     what=f'model.pretrained={location!r}', error=ConfigError)
  if dataset_name == 'imagenet_lt':
    print(f'warning: model.pretrained={location!r} on ImageNet-LT: ImageNet-1k weights were trained on all '
          f'of ILSVRC-2012\'s training images, the tail classes\' too, so the long tail is not long any more; '
          f'published ImageNet-LT numbers train from scratch.', flush=True)
  stages, bottleneck, _, _ = IMAGENET_RESNETS[model_config.name]
  backbone = load_backbone({'params': variables['params']['backbone'],
                            'batch_stats': variables['batch_stats']['backbone']},
                           read_state_dict(path), stages, bottleneck, source=f'model.pretrained={location!r}')
  return {**variables, 'params': {**variables['params'], 'backbone': backbone['params']},
          'batch_stats': {**variables['batch_stats'], 'backbone': backbone['batch_stats']}}


def _copy(tree):
  return {k: _copy(v) if isinstance(v, dict) else v for k, v in dict(tree).items()}


def convert(src: str, dst: str) -> None:
  """Writes ``src`` (any of ``FORMATS``) as an ``.npz`` that needs neither torch nor
  safetensors to read."""
  state = read_state_dict(src)
  files.write_atomic(dst, lambda f: np.savez(f, **state))


if __name__ == '__main__':
  if len(sys.argv) != 4 or sys.argv[1] != 'convert':
    sys.exit('usage: python -m ltjax.models.pretrained convert IN.pth OUT.npz')
  convert(sys.argv[2], sys.argv[3])
  print(f'wrote {sys.argv[3]}')
