"""CIFAR-10-LT / CIFAR-100-LT (LDAM-DRW subsets of TFDS cifar10 / cifar100).

  python -m ltjax.main --config configs/cifar_lt.py:dataset=cifar100,imb=100,method=bsce --workdir W

Arguments: dataset (cifar10 | cifar100), imb (imbalance factor), method, seed, epochs,
smoke. Schedule: ResNet-32, 200 epochs, batch 128, SGD 0.1 momentum 0.9, weight decay
2e-4, 5-epoch linear warm-up, lr x0.01 at epochs 120 and 160 (the BBN / DiVE recipe;
the teacher and the student of DiVE alike). ``epochs=N`` shortens the whole schedule
in proportion (warm-up, decay epochs and DRW's epoch scaled by N / 200), e.g. for a
CPU: ``configs/cifar_lt.py:method=dive,epochs=6``.

DiVE on CIFAR-10/100-LT at IF 10, 50, 100 (paper: tau 3, p 0.5, alpha 0.5):
``configs/cifar_lt.py:dataset=cifar100,imb=50,method=dive``; a public
reimplementation's tau 2: add ``--config.dive.temperature=2``.
"""
from ltjax import config_lib


def get_config(arg=None):
  args = config_lib.parse_args(arg, {'dataset': 'cifar10', 'imb': 100.0, 'method': 'ce',
                                     'seed': 0, 'epochs': 200, 'smoke': False})
  if args.dataset not in ('cifar10', 'cifar100'):
    raise config_lib.ConfigError(f'dataset={args.dataset!r}: configs/cifar_lt.py takes cifar10 or cifar100.')
  c = config_lib.base_config()
  c.method = args.method
  c.seed = args.seed
  c.data.name = args.dataset
  c.data.imbalance_factor = args.imb
  if args.method in ('ce_drw', 'ldam_drw'):  # LDAM-DRW's schedule: x0.1 at 160 and 180
    c.train.lr_boundaries = (160, 180)
    c.train.lr_decay = 0.1
    c.loss.drw_epoch = 160
  if args.epochs != 200:
    if args.epochs < 1:
      raise config_lib.ConfigError(f'epochs={args.epochs}: a schedule needs at least 1 epoch.')
    scale = args.epochs / 200
    c.train.epochs = args.epochs
    c.train.warmup_epochs = round(c.train.warmup_epochs * scale, 3)
    c.train.lr_boundaries = tuple(round(b * scale, 3) for b in c.train.lr_boundaries)
    c.loss.drw_epoch = int(round(c.loss.drw_epoch * scale))
  if args.dataset == 'cifar100':
    c.data.augment.mean = (0.5071, 0.4865, 0.4409)
    c.data.augment.std = (0.2673, 0.2564, 0.2762)
  if args.smoke:  # about a minute on a 2-core CPU: tiny ResNet, 2 short epochs
    c.model.depth = 8
    c.model.width = 4
    c.data.imbalance_factor = max(args.imb, 100.0)  # fewest images: 12,406 on CIFAR-10
    c.train.epochs = 1
    c.train.batch_size = 256
    c.train.warmup_epochs = 0.2
    c.train.lr_boundaries = ()
    c.loss.drw_epoch = 0
    c.stage2.epochs = 1
    c.log_every_steps = 5
  return c
