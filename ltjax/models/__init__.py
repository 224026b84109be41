"""Models: backbones (``resnet.py``) and heads (``heads.py``), joined by ``Classifier``.

The parameters of a ``Classifier`` are ``{'backbone': ..., 'head': ...}`` (plus
``soft_head`` and ``selfsup_head`` where a recipe asks for them) so that later stages
can freeze the backbone, swap or add heads, or rescale the classifier.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from ltjax.errors import ConfigError
from ltjax.models import layers
from ltjax.models.heads import LinearHead, LWSHead, NormedLinearHead, ProjectionHead, prior_bias_head
from ltjax.models.resnet import IMAGENET_RESNETS, CifarResNet, ImageNetResNet


class Classifier(nn.Module):
  """Outputs ``features``, ``logits`` (``head``), and where present ``soft_logits``
  (SSD's soft-label head) and ``selfsup`` (a self-supervised head: rotation logits or
  a contrastive projection)."""
  backbone: nn.Module
  head: nn.Module
  # False: the backbone always runs in evaluation mode (BatchNorm running statistics),
  # e.g. for tau-norm, or a classifier refit with ``stage2.backbone_bn=eval``.
  backbone_train: bool = True
  soft_head: nn.Module | None = None
  selfsup_head: nn.Module | None = None

  def __call__(self, x, train: bool = True):
    features = self.backbone(x, train=train and self.backbone_train)
    out = {'features': features, 'logits': self.head(features)}
    if self.soft_head is not None:
      out['soft_logits'] = self.soft_head(features)
    if self.selfsup_head is not None:
      out['selfsup'] = self.selfsup_head(features)
    return out


BACKBONES = ('cifar_resnet', *IMAGENET_RESNETS)
# name -> (num_classes, model config) -> head. The cosine classifier has LDAM-DRW's own
# init (NormedLinear's, model.normed_init), whatever the linear classifier's scheme.
HEADS = {'linear': lambda n, mc: LinearHead(n, init_scheme=mc.head_init),
         'normed': lambda n, mc: NormedLinearHead(n, init_scheme=mc.normed_init),
         'lws': lambda n, mc: LWSHead(n, init_scheme=mc.head_init),
         'prior_bias': lambda n, mc: prior_bias_head(n, init_scheme=mc.head_init)}


SELFSUP = ('rotation', 'contrastive')


def build_model(model_config, num_classes: int, head: str = 'linear', backbone_train: bool = True,
                soft_head: bool = False, selfsup: str | None = None, proj_dim: int = 128) -> Classifier:
  """The backbone the config names, with a ``head`` classifier (a recipe's choice), and
  optionally a second linear ``soft_head`` and a ``selfsup`` head: ``rotation`` (4-way
  linear) or ``contrastive`` (MLP projection to ``proj_dim``)."""
  name = model_config.name
  if name not in BACKBONES:
    raise ConfigError(f'unknown model.name {name!r}; choose one of {list(BACKBONES)}.')
  if name == 'cifar_resnet' and ((model_config.depth - 2) % 6 or model_config.depth < 8):
    raise ConfigError(f'model.depth={model_config.depth}: a CIFAR ResNet has depth 6n + 2 '
                      f'(8, 14, 20, 32, 44, 56, 110).')
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
  if model_config.dtype not in dtypes:
    raise ConfigError(f'model.dtype={model_config.dtype!r}; choose float32 or bfloat16 '
                      f'(bfloat16: computation in bf16, parameters and losses in float32).')
  if model_config.conv_init not in layers.CONV_INITS:
    raise ConfigError(f'model.conv_init={model_config.conv_init!r}; choose one of {tuple(layers.CONV_INITS)}.')
  if model_config.conv_impl not in layers.CONV_IMPLS:
    raise ConfigError(f'model.conv_impl={model_config.conv_impl!r}; choose one of {layers.CONV_IMPLS} '
                      f'(auto: taps on CPU, xla on GPU/TPU).')
  dtype, conv_impl = dtypes[model_config.dtype], layers.resolve_conv_impl(model_config.conv_impl)
  if name == 'cifar_resnet':
    backbone = CifarResNet(depth=model_config.depth, width=model_config.width, dtype=dtype, conv_impl=conv_impl,
                           conv_init=model_config.conv_init)
  else:  # model.depth and model.width are the CIFAR ResNet's; these are fixed by name
    stages, bottleneck, groups, base_width = IMAGENET_RESNETS[name]
    backbone = ImageNetResNet(stages, bottleneck, groups, base_width, dtype=dtype, conv_impl=conv_impl,
                              conv_init=model_config.conv_init)
  if selfsup is not None and selfsup not in SELFSUP:
    raise ConfigError(f'self-supervised task {selfsup!r}; choose one of {SELFSUP}.')
  extra = {}
  head_init = model_config.head_init
  if soft_head:
    extra['soft_head'] = LinearHead(num_classes, init_scheme=head_init)
  if selfsup == 'rotation':
    extra['selfsup_head'] = LinearHead(4)
  elif selfsup == 'contrastive':
    extra['selfsup_head'] = ProjectionHead(proj_dim, init_scheme=head_init)
  return Classifier(backbone=backbone, head=HEADS[head](num_classes, model_config), backbone_train=backbone_train,
                    **extra)
