"""Your own long-tailed images: a folder with one subfolder per class.

  python -m ltjax.main --config configs/folder_lt.py:train=DIR,test=DIR,method=dive --workdir W

The host pipeline and recipes of ImageNet-LT (configs/large.py: random resized crop,
flip and colour jitter; resize and centre crop for testing; Kang et al.'s optimiser;
methods ce, bsce, dive, ssd, crt, lws, tau_norm). Arguments: train (the training folder),
test (a test folder with the same classes; without it, ``holdout`` of the smallest
class's count is held out from every class, seeded by ``seed``), val (a validation folder
with the same classes: the best epoch on it is kept and tested, ``best_val_selected``,
and crt's, lws's, tau_norm's and dive's later phase starts from it, ``handoff``;
``run.val_every_epochs``, 1 with it), method, imb (> 1: draw a long-tailed subset of the
training folder, the CIFAR-LT profile), image_size, model
(default resnet50), epochs (default 90), seed, smoke (tiny images, ResNet-8, one epoch a
phase: a CPU check of the whole pipeline).
"""
from configs import large
from ltjax import config_lib


def get_config(arg=None):
  shared = {k: v for k, v in large.LARGE_ARGS.items() if k != 'mock'}  # a folder needs no TFDS mock
  args = config_lib.parse_args(arg, {**shared, 'train': '', 'test': '', 'val': '', 'imb': 0.0, 'holdout': 0.2,
                                     'image_size': 224, 'model': 'resnet50', 'epochs': 90})
  args.mock = False
  c = large.large_config(args, 'folder', args.model, epochs=args.epochs, ssd_epochs=args.epochs)
  c.data.train_dir = args.train
  c.data.test_dir = args.test
  c.data.val_dir = args.val
  if args.val:
    # Choose an epoch on it, and start later phases from it, as configs/imagenet_lt.py.
    c.run.val_every_epochs = 1
    if c.method in large.BEST_VAL_HANDOFF:
      c.handoff = 'best_val'
  c.data.holdout = args.holdout
  c.data.imbalance_factor = args.imb
  c.data.split_seed = args.seed
  if not args.smoke:
    c.data.image_size = args.image_size
    c.data.resize_size = round(args.image_size * 256 / 224)
  else:
    c.model.name = 'cifar_resnet'
    c.model.depth = 8
    c.model.width = 8
    c.model.dtype = 'float32'
    c.model.conv_init = 'fan_in'
  return c
