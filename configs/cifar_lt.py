"""CIFAR-10-LT / CIFAR-100-LT (LDAM-DRW subsets of TFDS cifar10 / cifar100).

  python -m ltjax.main --config configs/cifar_lt.py:dataset=cifar100,imb=100,method=bsce --workdir W

Arguments: dataset (cifar10 | cifar100), imb (imbalance factor), method, schedule, seed,
epochs, smoke. ResNet-32, 200 epochs, batch 128, SGD lr 0.1 momentum 0.9, weight decay
2e-4, a 5-epoch warm-up and two x0.01 decays; ``schedule`` names whose training protocol
(warm-up shape, decay epochs, Nesterov, last batch, classifier init) to follow, as its code runs it:

- ``ldam``: LDAM-DRW (Cao et al.), the CE and LDAM-DRW numbers of their table. Warm-up
  ``lr (e + 1) / 5`` per epoch, lr x0.01 from epoch 160 and again from 180 (0.1 -> 1e-3
  -> 1e-5), plain momentum, the last partial batch kept (ltjax wraps it around).
- ``bbn``: BBN's ``WarmupMultiStepLR``, the DiVE paper's recipe and BagofTricks-LT's
  DiVE configs (teacher and student). Warm-up from lr / 3 per epoch, milestones 120 and
  160 counted from epoch 1 (the decay starts at 0-based epochs 119 and 159), Nesterov,
  the last partial batch dropped.
- ``bag``: BagofTricks-LT's CE and Balanced Softmax CIFAR configs: ``bbn`` with
  milestones 160 and 180. For ``crt``, ``lws`` and ``tau_norm``, its classifier-balancing
  configs too (``BAG_STAGE2``): the CE phase is its baseline, then 30 epochs of
  class-balanced sampling with replacement, lr 0.1 warmed up over 5 epochs, x0.1 at
  epochs 10 and 20, weight decay 5e-4, Nesterov; tau-norm keeps the classifier's bias.
  (Its published numbers are its best test epoch, its tau-norm normalises the baseline's
  best test epoch; ltjax reports and normalises the last.)

SSD (``method=ssd``; the SSD paper's CIFAR recipe is not public): phases I and III on the
schedule above (``bbn`` by default), rotation prediction as the self-supervised task, and
phases II and IV as SSD-LT's stage II (``SSD_STAGE2``: LWS for 5 epochs of class-aware
batches of 512, 2 images of a class a turn, lr 0.2 cosine set once an epoch, weight decay
5e-4, plain momentum); the frozen phase-I network on its running statistics
(``ssd.generator_bn``, ``ssd.teacher_bn``: configs/common.py says why).

Default: ``ldam`` for ce_drw, ldam_drw, focal and cb_focal (LDAM-DRW's code ran them) and cb
(Cui et al.'s own schedule: the same lr, batch, weight decay and decays, a warm-up every step),
``bbn`` for every other method. ``epochs=N`` (or ``--config.train.epochs=N``) shortens the
whole schedule in proportion (warm-up, decay milestones in whole epochs, DRW's epoch, all
scaled by N / 200; a warm-up shorter than 2 epochs rises every step), e.g. for a CPU:
``method=dive,epochs=6``.

DiVE on CIFAR-10/100-LT at IF 10, 50, 100 (paper: tau 3, p 0.5, alpha 0.5):
``configs/cifar_lt.py:dataset=cifar100,imb=50,method=dive``; BagofTricks-LT's tau 2:
add ``--config.dive.temperature=2``.
"""
from configs import common
from ltjax import config_lib

# The training protocol of each reference code (METHODS.md 2); lr 0.1, batch 128, weight
# decay 2e-4, 200 epochs, 5 warm-up epochs and x0.01 decays are common to all three.
# ``milestones`` are the code's own decay epochs; BBN's scheduler counts epochs from 1
# (``first_epoch``), so its decay starts at 0-based epoch ``milestone - 1``.
SCHEDULES = {
    'ldam': dict(warmup='ldam', milestones=(160, 180), first_epoch=0, nesterov=False, drop_last=False,
                 head_init='ldam'),
    'bbn': dict(warmup='bbn', milestones=(120, 160), first_epoch=1, nesterov=True, drop_last=True,
                head_init='torch'),
    'bag': dict(warmup='bbn', milestones=(160, 180), first_epoch=1, nesterov=True, drop_last=True,
                head_init='torch'),
}
# LDAM-DRW's code trained and compared these; the other methods default to the DiVE paper's.
LDAM_METHODS = ('ce_drw', 'ldam_drw', 'focal', 'cb_focal', 'cb')
# BagofTricks-LT's classifier stage (configs/cao_cifar/two_stage/classifier_balance/{cRT,LWS}/
# cifar10_im100.yaml, the same at every dataset and factor; tau_norm trains nothing and
# takes only the kept bias from it, its tau_norm/ configs): its WarmupMultiStepLR counts
# epochs from 1 as the bbn protocol; its SGD is Nesterov; 'balance' sampling draws a class,
# then an image of it, with replacement; the backbone frozen under model.train().
BAG_STAGE2 = dict(epochs=30, lr=0.1, schedule='step', warmup='bbn', warmup_epochs=5.0, lr_boundaries=(10, 20),
                  lr_decay=0.1, first_epoch=1, weight_decay=5e-4, nesterov=True, sampler='class', batch_size=0,
                  backbone_bn='train')

# SSD-LT's stage II (ssd_stage_ii.py: --epochs 5, -b 512, --lr 0.2, --wd 5e-4, --cos, set
# once an epoch from 0-based epochs by utils.adjust_learning_rate; plain momentum; its
# class-aware epoch is the training set's length; the partial batch dropped), also its
# optional LWS after stage III (ltjax's phase IV). configs/large.py sets the same.
SSD_STAGE2 = dict(epochs=5, batch_size=512, lr=0.2, schedule='cosine_epoch', first_epoch=0, warmup_epochs=0.0,
                  weight_decay=5e-4, nesterov=False)


def get_config(arg=None):
  args = config_lib.parse_args(arg, {'dataset': 'cifar10', 'imb': 100.0, 'method': 'ce', 'schedule': '',
                                     'seed': 0, 'epochs': 200, 'smoke': False})
  if args.dataset not in ('cifar10', 'cifar100'):
    raise config_lib.ConfigError(f'dataset={args.dataset!r}: configs/cifar_lt.py takes cifar10 or cifar100.')
  schedule = args.schedule or ('ldam' if args.method in LDAM_METHODS else 'bbn')
  if schedule not in SCHEDULES:
    raise config_lib.ConfigError(f'schedule={schedule!r}: configs/cifar_lt.py has {", ".join(SCHEDULES)} '
                                 f'(ldam: LDAM-DRW; bbn: BBN and the DiVE paper; bag: BagofTricks-LT).')
  c = common.base_config(args.method)
  c.seed = args.seed
  c.data.name = args.dataset
  c.data.imbalance_factor = args.imb
  protocol = SCHEDULES[schedule]
  if args.epochs < 1:
    raise config_lib.ConfigError(f'epochs={args.epochs}: a schedule needs at least 1 epoch.')
  # The reference codes' own numbers, for their 200 epochs; a run of N epochs (epochs=N,
  # or --config.train.epochs=N) scales them by N / 200 (ltjax/train.py schedule_points).
  c.train.epochs = args.epochs
  c.train.schedule_epochs = 200
  c.train.warmup = protocol['warmup']
  c.train.lr_boundaries = protocol['milestones']
  c.train.first_epoch = protocol['first_epoch']
  c.train.nesterov = protocol['nesterov']
  c.train.lr_decay = 0.01
  c.data.drop_last = protocol['drop_last']
  c.model.head_init = protocol['head_init']  # the classifier's init in that code
  c.loss.drw_epoch = 160  # LDAM-DRW: class-balanced weights from epoch 160 (0-based) of 200
  if args.method == 'ssd':
    c.stage2.update(SSD_STAGE2)
  if schedule == 'bag' and args.method in ('crt', 'lws', 'tau_norm'):
    c.stage2.update(BAG_STAGE2)
    c.loss.tau_norm_bias = True  # its network.py load_model: the weight normalised, the bias kept
  # SSD's contrastive key view: no Gaussian blur on small images (MoCo-on-CIFAR code has none).
  c.ssd.key_view.blur_p = 0.0
  # CIFAR-100 keeps CIFAR-10's mean and std (base_config), as LDAM-DRW, BBN and
  # BagofTricks-LT normalise both.
  if args.smoke:  # about a minute on a 2-core CPU: tiny ResNet, one epoch a phase
    c.model.depth = 8
    c.model.width = 4
    # The imbalance factor stays the one given (the default, 100, has the fewest images:
    # 12,406 on CIFAR-10); smoke never replaces a value the user set.
    c.train.epochs = 1
    c.train.schedule_epochs = 0
    c.train.batch_size = 256
    c.train.warmup_epochs = 0.2
    c.train.warmup = 'linear'
    c.train.lr_boundaries = ()
    c.loss.drw_epoch = 0
    c.stage2.epochs = 1
    c.run.log_every_steps = 5
  return c
