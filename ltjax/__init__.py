"""ltjax: long-tailed recognition with knowledge distillation (SSD, DiVE) in JAX/Flax."""
__version__ = '0.1.0'
