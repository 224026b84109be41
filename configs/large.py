"""What the large-dataset configs (imagenet_lt.py, inat18.py, places_lt.py) share: the host
pipeline's augmentation, the decoupling recipe's optimiser (Kang et al.), SSD's ImageNet-LT
settings, and the ``smoke`` / ``mock`` variants."""
from configs import common
from ltjax.errors import ConfigError

LARGE_METHODS = ('ce', 'bsce', 'dive', 'ssd', 'crt', 'lws', 'tau_norm')
LARGE_ARGS = {'method': 'ce', 'seed': 0, 'epochs': 0, 'smoke': False, 'mock': False}
# The methods whose later phase starts from an earlier one's best validation epoch where a run
# validates (config.handoff='best_val'): Kang et al.'s stage 2 (load_model's state_dict_best)
# and DiVE's student (its teacher from BALMS's code, the same). SSD-LT's stages pass on
# last_checkpoint.pth.tar; one-phase methods hand nothing on (and keep the default).
BEST_VAL_HANDOFF = ('crt', 'lws', 'tau_norm', 'dive')


def large_config(args, dataset: str, model: str, epochs: int, ssd_epochs: int, crt_epochs: int = 10,
                 lws_epochs: int = 5, weight_decay: float = 5e-4):
  """What the large-dataset configs (imagenet_lt.py, inat18.py, places_lt.py) share: the host
  pipeline's augmentation, the decoupling recipe's optimiser, SSD's ImageNet-LT settings,
  and the ``smoke`` / ``mock`` variants. ``args``: parsed ``LARGE_ARGS``; ``crt_epochs``,
  ``lws_epochs`` and ``weight_decay``: Kang et al.'s for this dataset (their
  ``feat_uniform.yaml``, ``cls_crt.yaml``, ``cls_lws.yaml``)."""
  if args.method not in LARGE_METHODS:
    raise ConfigError(f'method={args.method!r}; the large-dataset configs have {", ".join(LARGE_METHODS)}.')
  c = common.base_config(args.method)
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
  # The reference code's initialisation (Kang et al.'s ResNext / SSD-LT's torchvision ResNeXt:
  # convolutions normal(0, sqrt(2 / (k k out))); classifier and MoCo MLP: nn.Linear's default).
  c.model.conv_init = 'fan_out'
  c.model.head_init = 'torch'
  # Kang et al. (decoupling), which the DiVE and BSCE large-scale numbers follow: batch
  # 512, SGD 0.2 momentum 0.9, weight decay 5e-4 (iNaturalist: 1e-4), no warm-up, cosine
  # to 0 set once an epoch by CosineAnnealingLR(T_max=epochs), stepped before each epoch
  # (first_epoch 1); an epoch is int(N / 512) steps (run_networks.py breaks there: the
  # partial batch is dropped, and so is the class-aware sampler's longer "epoch").
  c.train.epochs = epochs
  c.train.batch_size = 512
  c.run.eval_batch_size = 512
  c.train.lr = 0.2
  c.train.weight_decay = weight_decay
  c.data.drop_last = True
  c.train.schedule = 'cosine_epoch'
  c.train.first_epoch = 1
  c.train.warmup_epochs = 0.0
  c.train.lr_boundaries = ()
  c.run.checkpoint_min_seconds = 600.0
  c.run.log_every_steps = 50
  # Classifier stage (cRT / LWS): Kang et al.'s cls_crt.yaml / cls_lws.yaml: batch 512
  # (the main phase's), lr 0.2, the same per-epoch cosine and epoch length, class-aware
  # cycles of 4 images a class (common.py).
  c.stage2.epochs = lws_epochs if args.method == 'lws' else crt_epochs
  c.stage2.lr = 0.2
  c.stage2.weight_decay = weight_decay
  c.stage2.schedule = 'cosine_epoch'
  c.stage2.first_epoch = 1
  if args.method == 'tau_norm':  # (only it reads the field: other runs' workdirs keep theirs)
    # Kang et al.'s tau_norm.py sweeps np.linspace(0, 2, 21) (on ImageNet-LT the
    # validation split chooses among them, run.val_every_epochs).
    c.loss.tau_norm_sweep = tuple(round(0.1 * i, 1) for i in range(21))
  if args.method == 'ssd':
    # SSD's official ImageNet-LT recipe (METHODS.md): MoCo v2 phase I, batch 256,
    # lr 0.1, weight decay 5e-4, 1.5x the 90 epochs; LWS for 5 epochs, batch 512, lr 0.2
    # as the soft-label generator; cosine set once an epoch from 0-based epochs
    # (adjust_learning_rate, --cos); every stage's DataLoader drops the partial batch
    # (452 steps of 256: the queue's 452 x 256).
    c.ssd.selfsup = 'contrastive'
    c.ssd.generator_bn = 'train'  # stages II and III in model.train(), as the official code
    c.ssd.teacher_bn = 'train'
    c.ssd.queue_size = 115_712  # 452 x 256
    c.ssd.proj_dim = 128
    c.train.epochs = ssd_epochs
    c.train.batch_size = 256
    c.train.lr = 0.1
    c.train.weight_decay = 5e-4
    c.train.first_epoch = 0
    c.stage2.epochs = 5
    c.stage2.batch_size = 512  # the official stage II's, twice phase I's
    c.stage2.weight_decay = 5e-4
    c.stage2.first_epoch = 0
  if args.epochs:
    c.train.epochs = args.epochs
  if args.smoke or args.mock:
    # Runs anywhere in a minute or two: tiny images and batches, one epoch a phase;
    # the model stays the config's. mock: TFDS's mock_data instead of the prepared data.
    c.data.image_size = 32
    c.data.resize_size = 36
    c.run.host_threads = 4
    c.train.epochs = 1
    # Kang's one-epoch cosine (first_epoch 1) would train at lr 0: from epoch 0 instead.
    c.train.first_epoch = 0
    c.stage2.first_epoch = 0
    # Linear scaling of the learning rates to the small batch (random labels diverge at 0.2).
    c.train.lr *= 16 / c.train.batch_size
    c.stage2.lr *= 16 / 512
    c.stage2.batch_size = 0  # the smoke batch below
    c.train.batch_size = 16
    c.run.eval_batch_size = 32
    c.stage2.epochs = 1
    c.ssd.queue_size = 64
    c.run.log_every_steps = 1
    c.run.checkpoint_min_seconds = 0.0
  if args.mock:
    c.data.mock_examples = 64
  return c
