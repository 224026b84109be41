"""Layer choices shared by every backbone: convolution, normalisation, initialisers.

The convolution is picked here, in one place, so that a platform-specific
formulation (see the performance issue) changes every model at once.
"""
from __future__ import annotations

import functools

from flax import linen as nn

# PyTorch's kaiming_normal_ (fan_in, ReLU gain), as in the LDAM-DRW ResNets.
kaiming_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')

conv = functools.partial(nn.Conv, use_bias=False, kernel_init=kaiming_normal)

# PyTorch BatchNorm2d defaults: momentum 0.1 on the running stats, eps 1e-5. Under
# jax.jit with a batch sharded over devices, the mean is over the global batch.
batch_norm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
