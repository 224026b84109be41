"""bench/jpeg_sensitivity.py's two measurements: the re-encode and the PSNR."""
import importlib.util

import numpy as np

from conftest import REPO


def _module():
  spec = importlib.util.spec_from_file_location('jpeg_sensitivity', REPO / 'bench' / 'jpeg_sensitivity.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_psnr_by_hand_and_reencode_is_lossy_by_quality():
  m = _module()
  a = np.full((2, 8, 8, 3), 100, np.uint8)
  b = a.copy()
  b[0, 0, 0, 0] = 110  # one of 384 values off by 10: mse 100/384
  assert m.psnr(a, a) == float('inf')
  np.testing.assert_allclose(m.psnr(a, b), 10 * np.log10(255 ** 2 / (100 / 384)))
  rng = np.random.default_rng(0)
  ramp = (np.arange(32)[:, None] * 4 + np.arange(32)[None, :] * 3) % 256
  x = np.stack([np.stack([ramp, ramp[::-1], ramp.T], -1)] * 3).astype(np.uint8)
  x = np.clip(x + rng.integers(0, 8, x.shape), 0, 255).astype(np.uint8)
  hi, lo = m.reencode(x, 95), m.reencode(x, 30)
  assert hi.shape == x.shape and hi.dtype == np.uint8
  assert m.psnr(hi, x) > m.psnr(lo, x) + 3
  assert np.array_equal(m.reencode(x[:1], 95), hi[:1])  # per image, deterministic
