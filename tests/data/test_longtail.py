"""Long-tailed profiles, the exact LDAM-DRW subset (mock CIFAR-100, real CIFAR-10),
shot groups and the embedded digits split."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ltjax.data import cifar, digits, longtail, registry
from ltjax.errors import DatasetNotPreparedError
from tfds_mocks import mock_cifar100

SIZES = {  # METHODS.md section 1
    ('cifar10', 10): 20431, ('cifar10', 50): 13996, ('cifar10', 100): 12406,
    ('cifar100', 10): 19573, ('cifar100', 50): 12608, ('cifar100', 100): 10847,
}


@pytest.mark.parametrize('name,imb', sorted(SIZES))
def test_subset_sizes(name, imb):
  spec = registry.get(name)
  classes, n_max = spec.num_classes, spec.images_per_class
  counts = longtail.longtail_counts(n_max, classes, imb)
  assert sum(counts) == SIZES[name, imb]
  assert counts[0] == n_max and counts[-1] == int(n_max / imb)


@pytest.mark.parametrize('imb,groups', [(100, (35, 35, 30)), (50, (41, 41, 18)), (10, (69, 31, 0))])
def test_cifar100_shot_groups(imb, groups):
  counts = longtail.longtail_counts(500, 100, imb)
  g = longtail.shot_groups(counts)
  assert (len(g['many']), len(g['medium']), len(g['few'])) == groups


def test_shot_group_boundaries():
  g = longtail.shot_groups([101, 100, 20, 19])
  assert list(g['many']) == [0] and list(g['medium']) == [1, 2] and list(g['few']) == [3]


@pytest.mark.parametrize('bad', [0.5, 0, -3, float('nan'), float('inf'), 'ten'])
def test_impossible_imbalance_factor(bad):
  with pytest.raises(ValueError, match='imbalance factor'):
    longtail.longtail_counts(5000, 10, bad)


def test_imbalance_factor_below_one_names_the_fix():
  with pytest.raises(ValueError, match='IF = 100'):
    longtail.check_imbalance_factor(0.01)


def test_imbalance_factor_that_empties_a_class():
  with pytest.raises(ValueError, match='no training image'):
    longtail.longtail_counts(50, 10, 100)


def reference_ldam_subset(labels, counts):
  """LDAM-DRW's gen_imbalanced_data, written as in the reference code."""
  np.random.seed(0)
  keep = []
  for c, n in zip(np.unique(labels), counts):
    idx = np.where(labels == c)[0]
    np.random.shuffle(idx)
    keep.extend(idx[:n].tolist())
  return np.array(keep)


def test_ldam_subset_matches_reference():
  labels = np.random.default_rng(1).permutation(np.repeat(np.arange(10), 300))
  counts = longtail.longtail_counts(300, 10, 20)
  np.testing.assert_array_equal(longtail.ldam_subset(labels, counts), reference_ldam_subset(labels, counts))


@pytest.mark.parametrize('imb', [10, 100])
def test_cifar100_lt_through_tfds(imb):
  source_fn, original_labels = mock_cifar100()
  with tfds.testing.mock_data(as_data_source_fn=source_fn):
    ds = cifar.load_cifar_lt(registry.get('cifar100'), imb)
  assert len(ds.train_labels) == SIZES['cifar100', imb]
  assert list(ds.class_counts) == longtail.longtail_counts(500, 100, imb)
  kept = ds.train_images[:, 0, 0, 0].astype(int) * 256 + ds.train_images[:, 0, 0, 1]
  expected = reference_ldam_subset(original_labels, longtail.longtail_counts(500, 100, imb))
  np.testing.assert_array_equal(kept, expected)
  np.testing.assert_array_equal(ds.train_labels, original_labels[expected])
  assert ds.test_images.shape == (200, 32, 32, 3) and ds.test_images.dtype == np.uint8


def test_cifar100_random_mock_shapes():
  """TFDS's own random mock: ids are not train_NNNNN, which must fail loudly, not silently."""
  with tfds.testing.mock_data(num_examples=8):
    with pytest.raises(ValueError, match='original training order'):
      cifar.load_cifar_lt(registry.get('cifar100'), 100)


def test_dataset_not_prepared(tmp_path):
  with pytest.raises(DatasetNotPreparedError, match='data_dir'):
    cifar.load_cifar_lt(registry.get('cifar10'), 100, data_dir=str(tmp_path))


@pytest.mark.slow  # over 9 s: not in the quick tier
def test_real_cifar10_lt(cifar10_dir):
  ds = cifar.load_cifar_lt(registry.get('cifar10'), 100, data_dir=cifar10_dir)
  assert len(ds.train_labels) == 12406
  assert ds.class_counts[0] == 5000 and ds.class_counts[9] == 50
  assert list(ds.class_counts) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
  assert ds.test_images.shape == (10000, 32, 32, 3) and ds.class_names[0] == 'airplane'
  # Identity: the same images as LDAM's code run on the labels in original id order.
  src = tfds.data_source('cifar10', split='train', data_dir=cifar10_dir, download=False)
  recs = src.__getitems__(list(range(len(src))))
  pos = np.array([int(r['id'].decode().split('_')[1]) for r in recs])
  labels = np.empty(len(recs), int)
  labels[pos] = [r['label'] for r in recs]
  keep = reference_ldam_subset(labels, ds.class_counts)
  np.testing.assert_array_equal(ds.train_index, keep)
  np.testing.assert_array_equal(ds.train_labels, labels[keep])
  record_at = np.empty(len(pos), int)
  record_at[pos] = np.arange(len(pos))
  for k in (0, 4999, 5000, 12405):  # pixels of kept images come from those records
    np.testing.assert_array_equal(ds.train_images[k], recs[record_at[keep[k]]]['image'])


def test_digits_split():
  from sklearn.datasets import load_digits

  ds = digits.load_digits_lt(20)
  assert list(ds.class_counts) == longtail.longtail_counts(124, 10, 20) == [124, 88, 63, 45, 32, 23, 16, 12, 8, 6]
  assert list(np.bincount(ds.test_labels)) == [50] * 10
  assert ds.train_images.shape[1:] == (8, 8, 1) and ds.train_images.max() <= 16
  g = longtail.shot_groups(ds.class_counts)
  assert [len(g[k]) for k in ('many', 'medium', 'few')] == [1, 5, 4]
  assert not set(ds.train_index) & set(ds.test_index)  # held out means held out
  raw = load_digits()
  np.testing.assert_array_equal(ds.train_images[..., 0], raw.images[ds.train_index])
  np.testing.assert_array_equal(ds.train_labels, raw.target[ds.train_index])
  np.testing.assert_array_equal(ds.test_labels, raw.target[ds.test_index])


def test_cache_round_trip_needs_no_tfds(tmp_path):
  source_fn, _ = mock_cifar100()
  with tfds.testing.mock_data(as_data_source_fn=source_fn):
    first = cifar.load_cifar_lt(registry.get('cifar100'), 50, cache_dir=str(tmp_path))
  assert (tmp_path / 'cifar100_lt_if50_seed0.npz').exists()
  # Outside the mock there is no TFDS data at all: only the cache can answer.
  again = cifar.load_cifar_lt(registry.get('cifar100'), 50, data_dir=str(tmp_path / 'nothing'), cache_dir=str(tmp_path))
  for field in ('train_images', 'train_labels', 'test_images', 'test_labels', 'train_index'):
    np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
  assert again.num_classes == 100 and again.class_names == first.class_names
  assert list(again.class_counts) == longtail.longtail_counts(500, 100, 50)
