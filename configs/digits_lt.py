"""The embedded default: scikit-learn's 8x8 handwritten digits as a long-tailed problem.

  python -m ltjax.main --config configs/digits_lt.py --workdir runs/digits

50 images per class are held out as a balanced test set; the training set keeps
124 ... 6 images per class (IF 20): 1 many, 5 medium and 4 few classes.
Arguments: imb, method (default dive: a BSCE teacher, then the DiVE student), seed, smoke.
DiVE keeps the paper's tau 3, p 0.5, alpha 0.5; the same 60-epoch schedule for both phases.
"""
from configs import common
from ltjax import config_lib


def get_config(arg=None):
  args = config_lib.parse_args(arg, {'imb': 20.0, 'method': 'dive', 'seed': 0, 'smoke': False})
  c = common.base_config(args.method)
  c.seed = args.seed
  c.data.name = 'digits'
  c.data.imbalance_factor = args.imb
  c.data.test_per_class = 50
  # Digits are not mirror-symmetric: no flip; a 1-pixel jitter of the 8x8 image.
  c.data.augment.pad = 1
  c.data.augment.flip = False
  c.data.augment.mean = (0.30,)
  c.data.augment.std = (0.38,)
  c.data.many_above = 100
  c.data.few_below = 20
  # SSD's contrastive key view: no Gaussian blur on small images (MoCo-on-CIFAR code has none).
  c.ssd.key_view.blur_p = 0.0
  c.model.depth = 8
  c.model.width = 16
  c.train.epochs = 60
  c.train.schedule_epochs = 60  # --config.train.epochs=N scales the points below by N / 60
  c.train.batch_size = 64
  c.run.eval_batch_size = 256
  c.train.lr = 0.1
  c.train.weight_decay = 5e-4
  c.train.warmup_epochs = 2.0
  c.train.lr_boundaries = (40, 50)
  c.train.lr_decay = 0.1
  c.loss.drw_epoch = 48  # DRW in the last fifth, as 160 of 200 on CIFAR
  c.stage2.weight_decay = 5e-4
  c.run.log_every_steps = 10
  if args.smoke:
    c.model.width = 8
    c.train.epochs = 4
    c.train.schedule_epochs = 0
    c.train.warmup_epochs = 1.0
    c.train.lr_boundaries = (3,)
    c.loss.drw_epoch = 3
    c.stage2.epochs = 2
  return c
