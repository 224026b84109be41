"""TFDS-shaped stand-ins for datasets this machine does not have (no CIFAR-100 in
../shared/tfds): sources for ``tfds.testing.mock_data(as_data_source_fn=...)``."""
import numpy as np


class _Source(list):
  """A list that answers TFDS data sources' batched ``__getitems__``."""

  def __getitems__(self, keys):
    return [self[k] for k in keys]


def mock_cifar100(num_per_class=500, test_per_class=2):
  """A CIFAR-100-shaped source with shuffled records, ids in original order and images
  that encode their original index (to check which records were kept)."""
  def make(split, n):
    labels = np.random.default_rng(3).permutation(np.repeat(np.arange(100), n))
    records = []
    for pos, y in enumerate(labels):
      img = np.zeros((32, 32, 3), np.uint8)
      img[0, 0, :2] = divmod(pos, 256)
      records.append({'id': f'{split}_{pos:05d}'.encode(), 'label': int(y), 'coarse_label': 0, 'image': img})
    order = np.random.default_rng(4).permutation(len(records))  # TFDS stores records shuffled
    return _Source([records[i] for i in order]), labels

  train, train_labels = make('train', num_per_class)
  test, _ = make('test', test_per_class)
  return (lambda builder, split, **kw: train if split == 'train' else test), train_labels
