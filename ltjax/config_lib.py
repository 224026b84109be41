"""What every config file under ``configs/`` shares: the argument string
(``file.py:key=value,flag``) and the base fields that every recipe reads.

Config files call ``parse_args`` then ``base_config`` and set their dataset's numbers;
every number of a paper recipe lives in a config, none in code.
"""
from __future__ import annotations

import ml_collections

from ltjax.errors import ConfigError  # noqa: F401 (configs raise it too)


def parse_args(arg: str | None, defaults: dict) -> ml_collections.ConfigDict:
  """Parses ``'dataset=cifar100,imb=100,smoke'`` against ``defaults`` (name -> default
  value, whose type the given value is converted to). A bare name sets a bool to True."""
  out = dict(defaults)
  for item in filter(None, (s.strip() for s in (arg or '').split(','))):
    key, sep, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f'unknown config argument {key!r} in {arg!r}; valid arguments: '
                       f'{", ".join(sorted(defaults))} (e.g. configs/cifar_lt.py:dataset=cifar100,imb=100).')
    default = defaults[key]
    if isinstance(default, bool):
      if not sep:
        out[key] = True
      elif value.lower() in ('1', 'true', 'yes'):
        out[key] = True
      elif value.lower() in ('0', 'false', 'no'):
        out[key] = False
      else:
        raise ConfigError(f'config argument {key} takes true or false, got {value!r}.')
    elif not sep:
      raise ConfigError(f'config argument {key!r} needs a value, e.g. {key}={default}.')
    else:
      try:
        out[key] = type(default)(value) if default is not None else value
      except ValueError:
        raise ConfigError(f'config argument {key}={value!r} is not a {type(default).__name__}.') from None
  return ml_collections.ConfigDict(out)


def base_config() -> ml_collections.ConfigDict:
  """The fields every run has; dataset configs fill in the numbers."""
  c = ml_collections.ConfigDict()
  c.method = 'ce'
  c.phases = ''  # run only these phases of the recipe (comma list); '' = all
  c.seed = 0
  c.num_devices = 0  # 0: every visible device
  c.log_every_steps = 20
  c.eval_every_epochs = 0  # 0: evaluate only at the end of each phase
  c.checkpoint_every_epochs = 1
  c.checkpoint_min_seconds = 60.0  # and at most once a minute (0: every due epoch)
  c.keep_checkpoints = 2

  c.data = ml_collections.ConfigDict()
  c.data.name = ''
  c.data.imbalance_factor = 100.0
  c.data.data_dir = ''  # TFDS data_dir; '' = TFDS's default (~/tensorflow_datasets)
  c.data.cache_dir = ''  # keep the decoded LT subset here as .npz; '' = decode from TFDS each run
  c.data.download = False  # let TFDS download and prepare (needs internet and TensorFlow)
  c.data.split_seed = 0  # np.random.seed of the LDAM-DRW subset (0 in the reference)
  c.data.test_per_class = 0  # embedded datasets: balanced held-out images per class
  c.data.sampler = 'instance'  # instance | class | sqrt | progressive
  c.data.drop_last = False  # drop each epoch's partial last batch (else it wraps around)
  c.data.many_above = 100  # shot groups: many > 100, few < 20 (METHODS.md)
  c.data.few_below = 20
  c.data.augment = ml_collections.ConfigDict()
  c.data.augment.pad = 4  # zero padding before the random crop; 0: no crop
  c.data.augment.flip = True
  c.data.augment.mean = (0.4914, 0.4822, 0.4465)
  c.data.augment.std = (0.2023, 0.1994, 0.2010)
  c.data.augment.jitter = 0.0  # host pipeline: ColorJitter(j, j, j) on the device (ImageNet-LT: 0.4)
  # The host pipeline (ltjax/data/host.py) of the large datasets.
  c.data.image_size = 224  # random resized crop (train) and centre crop (test)
  c.data.resize_size = 256  # test: shorter side resized to this, then the centre crop
  c.data.host_threads = 16  # grain reader threads per process
  c.data.host_workers = 0  # grain worker processes per process (0: threads only)
  c.data.mock_examples = 0  # > 0: tfds.testing.mock_data with this many random records a split
  c.data.file_list = ''  # Places-LT: path or URL of Places_LT_train.txt (OLTR's list)
  c.data.file_list_sha256 = ''  # its checksum, checked when set

  c.model = ml_collections.ConfigDict()
  c.model.name = 'cifar_resnet'
  c.model.depth = 32
  c.model.width = 16
  c.model.dtype = 'float32'  # or bfloat16 (parameters stay float32)
  c.model.head_init = 'kaiming'  # linear classifier: kaiming | ldam | torch (ltjax/models/heads.py)
  c.model.conv_impl = 'auto'  # xla | taps | auto (the fastest measured): ltjax/models/layers.py

  c.loss = ml_collections.ConfigDict()
  c.loss.bsce_tau = 1.0
  c.loss.focal_gamma = 1.0  # focal and CB-focal (1, as LDAM-DRW's comparison)
  c.loss.cb_beta = 0.9999  # class-balanced weights (CB-focal, DRW)
  c.loss.ldam_max_margin = 0.5
  c.loss.ldam_scale = 30.0
  c.loss.drw_epoch = 160  # ce_drw / ldam_drw: class-balanced weights from this epoch on
  c.loss.tau_norm_tau = 1.0
  c.loss.tau_norm_sweep = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)

  # DiVE's student (ltjax/recipes/dive.py); paper defaults. A public reimplementation's
  # CIFAR configs use temperature 2.
  c.dive = ml_collections.ConfigDict()
  c.dive.temperature = 3.0  # tau
  c.dive.power = 0.5  # p of the power normalisation; 1 = none
  c.dive.alpha = 0.5  # weight of the distillation term
  c.dive.use_bsce = True  # the student's hard term: BSCE (True) or CE
  c.dive.target = 't_tau'  # t_tau (the paper) | t_tilde (the ablation's label mixture)
  c.dive.teacher_dir = ''  # '' = the teacher phase of this workdir; else another run's

  # SSD (ltjax/recipes/ssd.py); paper values, CIFAR choices where the paper has none.
  c.ssd = ml_collections.ConfigDict()
  c.ssd.selfsup = 'rotation'  # rotation | contrastive (MoCo v2)
  c.ssd.alpha1 = 1.0  # phase I: alpha1 * CE + alpha2 * self-supervised loss
  c.ssd.alpha2 = 1.0
  c.ssd.proj_dim = 128  # contrastive: MLP projection output
  c.ssd.moco_momentum = 0.999
  c.ssd.queue_size = 4096  # ImageNet-LT official: 115,712 = 452 x 256
  c.ssd.moco_temperature = 0.2
  c.ssd.mask_same_label = True  # drop queue keys of the query's label (official code)
  c.ssd.generator = 'lws'  # phase II: lws | crt, on the frozen phase-I backbone
  c.ssd.distill_temperature = 2.0  # phase III: T of the soft head's T^2 KL
  c.ssd.lambda1 = 1.0  # phase III: lambda1 * hard CE + lambda2 * soft KD
  c.ssd.lambda2 = 1.0
  c.ssd.student_selfsup = True  # phase III keeps the self-supervised loss
  c.ssd.phase4 = True  # phase IV: LWS on the phase-III model
  c.ssd.phase4_head = 'hard'  # which phase-III classifier LWS rescales
  c.ssd.teacher_dir = ''  # '' = phase II of this workdir; else another run's
  # The MoCo v2 key view (contrastive; ltjax/data/augment.py moco_colour), official values
  # in torchvision's float implementation (MoCo v2 blurred with PIL's box approximation):
  # RandomApply(ColorJitter(jitter x3, hue), jitter_p) in torchvision's random order,
  # RandomGrayscale(grayscale_p), RandomApply(GaussianBlur(blur_kernel, blur_sigma), blur_p).
  # CIFAR-sized images (the on-device moco_view) blur only if blur_p > 0: set 0 there.
  c.ssd.key_view = ml_collections.ConfigDict()
  c.ssd.key_view.jitter = 0.4  # brightness, contrast and saturation strength
  c.ssd.key_view.hue = 0.1
  c.ssd.key_view.jitter_p = 0.8
  c.ssd.key_view.grayscale_p = 0.2
  c.ssd.key_view.blur_p = 0.5
  c.ssd.key_view.blur_sigma = (0.1, 2.0)  # uniform per image
  c.ssd.key_view.blur_kernel = 23  # taps, reflect padding (torchvision GaussianBlur for 224 images)
  c.ssd.key_view.random_order = True  # ColorJitter's per-image random order of its four ops

  # The classifier stage of crt / lws (Kang et al.: 10 epochs, class-balanced, cosine).
  c.stage2 = ml_collections.ConfigDict()
  c.stage2.sampler = 'class'
  c.stage2.epochs = 10
  c.stage2.lr = 0.1
  c.stage2.schedule = 'cosine'
  c.stage2.warmup_epochs = 0.0
  c.stage2.weight_decay = 2e-4

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 200
  c.train.batch_size = 128
  c.train.eval_batch_size = 512
  c.train.lr = 0.1
  c.train.momentum = 0.9
  c.train.nesterov = False
  c.train.weight_decay = 2e-4
  c.train.schedule = 'step'  # step | cosine | constant
  c.train.warmup_epochs = 5.0
  # linear (every step, lr / steps -> lr) | ldam | bbn (per epoch, as the reference code:
  # ltjax/train.py make_schedule)
  c.train.warmup = 'linear'
  c.train.lr_boundaries = (120, 160)  # 0-based epochs from which lr is x lr_decay (cumulative)
  c.train.lr_decay = 0.01
  return c


# ---------------------------------------------------------------- large datasets
LARGE_METHODS = ('ce', 'bsce', 'dive', 'ssd', 'crt', 'lws', 'tau_norm')
LARGE_ARGS = {'method': 'ce', 'seed': 0, 'epochs': 0, 'smoke': False, 'mock': False}


def large_config(args, dataset: str, model: str, epochs: int, ssd_epochs: int):
  """What the large-dataset configs (imagenet_lt.py, inat18.py) share: the host
  pipeline's augmentation, the decoupling recipe's optimiser, SSD's ImageNet-LT settings,
  and the ``smoke`` / ``mock`` variants. ``args``: parsed ``LARGE_ARGS``."""
  if args.method not in LARGE_METHODS:
    raise ConfigError(f'method={args.method!r}; the large-dataset configs have {", ".join(LARGE_METHODS)}.')
  c = base_config()
  c.method = args.method
  c.seed = args.seed
  c.data.name = dataset
  c.data.imbalance_factor = 0.0  # fixed by the dataset's own split; reported from its counts
  # Random resized crop + flip on the host; ColorJitter(0.4, 0.4, 0.4) on the device.
  c.data.augment.pad = 0
  c.data.augment.jitter = 0.4
  c.data.augment.mean = (0.485, 0.456, 0.406)
  c.data.augment.std = (0.229, 0.224, 0.225)
  c.model.name = model
  c.model.dtype = 'bfloat16'  # bf16 arithmetic, float32 parameters and losses
  # Kang et al. (decoupling), which the DiVE and BSCE large-scale numbers follow: batch
  # 512, SGD 0.2 momentum 0.9, weight decay 5e-4, cosine to 0, no warm-up.
  c.train.epochs = epochs
  c.train.batch_size = 512
  c.train.eval_batch_size = 512
  c.train.lr = 0.2
  c.train.weight_decay = 5e-4
  c.train.schedule = 'cosine'
  c.train.warmup_epochs = 0.0
  c.train.lr_boundaries = ()
  c.checkpoint_min_seconds = 600.0
  c.log_every_steps = 50
  # Classifier stage (cRT / LWS; SSD's phase II and IV): Kang et al. 10 epochs, class-balanced.
  c.stage2.epochs = 10
  c.stage2.lr = 0.2
  c.stage2.weight_decay = 5e-4
  if args.method == 'ssd':
    # SSD's official ImageNet-LT recipe (METHODS.md): MoCo v2 phase I, batch 256,
    # lr 0.1 cosine, weight decay 5e-4, 1.5x the 90 epochs; LWS for 5 epochs, batch
    # 512, lr 0.2 cosine as the soft-label generator.
    c.ssd.selfsup = 'contrastive'
    c.ssd.queue_size = 115_712  # 452 x 256
    c.ssd.proj_dim = 128
    c.train.epochs = ssd_epochs
    c.train.batch_size = 256
    c.train.lr = 0.1
    c.stage2.epochs = 5
  if args.epochs:
    c.train.epochs = args.epochs
  if args.smoke or args.mock:
    # Runs anywhere in a minute or two: tiny images and batches, one epoch a phase;
    # the model stays the config's. mock: TFDS's mock_data instead of the prepared data.
    c.data.image_size = 32
    c.data.resize_size = 36
    c.data.host_threads = 4
    c.train.epochs = 1
    # Linear scaling of the learning rates to the small batch (random labels diverge at 0.2).
    c.train.lr *= 16 / c.train.batch_size
    c.stage2.lr *= 16 / 512
    c.train.batch_size = 16
    c.train.eval_batch_size = 32
    c.stage2.epochs = 1
    c.ssd.queue_size = 64
    c.log_every_steps = 1
    c.checkpoint_min_seconds = 0.0
  if args.mock:
    c.data.mock_examples = 64
  return c
