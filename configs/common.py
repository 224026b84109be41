"""The fields every run has, and the papers' values of the shared ones (DiVE's and SSD's
defaults, the decoupled classifier stage): every dataset config starts from
``base_config()`` and sets its own numbers over it.
"""
import ml_collections


def base_config(method: str = 'ce') -> ml_collections.ConfigDict:
  """The fields every run has, with the papers' values where a recipe has one (for
  ``method`` where they differ); the dataset configs set their own numbers over them."""
  c = ml_collections.ConfigDict()
  c.method = method
  c.seed = 0
  # What a later phase takes from an earlier phase of the run (the CE backbone of crt, lws
  # and tau_norm, SSD's phase-I backbone, DiVE's and SSD's teacher): 'last', its last
  # epoch, or 'best_val', its best validation epoch (run.val_every_epochs), as Kang et
  # al.'s stage 2 loads stage 1's state_dict_best. With best_val, run.val_every_epochs
  # decides what later phases train on, so a workdir keeps it.
  c.handoff = 'last'

  # How this run executes (config_lib.RUN_GROUP): may change when a workdir is resumed,
  # never changes a result.
  c.run = ml_collections.ConfigDict()
  c.run.phases = ''  # run only these phases of the recipe (comma list); '' = all
  c.run.num_devices = 0  # 0: every visible device
  c.run.data_dir = ''  # TFDS data_dir; '' = TFDS's default (~/tensorflow_datasets)
  c.run.cache_dir = ''  # keep the decoded LT subset here as .npz; '' = decode from TFDS each run
  c.run.download = False  # let TFDS download and prepare (needs internet and TensorFlow)
  c.run.host_threads = 16  # host pipeline: grain reader threads per process
  c.run.host_workers = 0  # host pipeline: grain worker processes per process (0: threads only)
  c.run.eval_batch_size = 512
  c.run.log_every_steps = 20  # at most: a phase of shorter epochs logs every epoch
  c.run.eval_every_epochs = 0  # 0: evaluate only at the end of each phase
  # Every N epochs (and at the last), evaluate the dataset's validation split and keep the
  # checkpoint of the best epoch (Kang et al.'s selection); its test results land beside the
  # last epoch's as best_val_selected. 0: none (datasets without a validation split).
  c.run.val_every_epochs = 0
  c.run.checkpoint_every_epochs = 1
  c.run.checkpoint_min_seconds = 60.0  # and at most once a minute (0: every due epoch)
  c.run.keep_checkpoints = 2

  c.data = ml_collections.ConfigDict()
  c.data.name = ''
  c.data.imbalance_factor = 100.0
  c.data.split_seed = 0  # np.random.seed of the LDAM-DRW subset (0 in the reference)
  c.data.test_per_class = 0  # embedded datasets: balanced held-out images per class
  # instance | class (with replacement) | class_aware (cycled: Kang et al., SSD-LT) | sqrt | progressive
  c.data.sampler = 'instance'
  # class_aware: consecutive images of a class at its turn (ClassAwareSampler's num_samples_cls).
  c.data.samples_per_class = 4
  # progressive: the class-balanced share in epoch t of T: kang t/(T - 1) (Kang et al.'s code) |
  # bag (t + 1)/T (BagofTricks-LT) | paper t/T (the paper's formula; ltjax before 2026-11-28)
  c.data.progressive_form = 'kang'
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
  c.data.mock_examples = 0  # > 0: tfds.testing.mock_data with this many random records a split
  c.data.file_list = ''  # Places-LT: path or URL of Places_LT_train.txt (OLTR's list)
  c.data.file_list_sha256 = ''  # its checksum, checked when set
  # Places-LT's validation images (run.val_every_epochs): OLTR's Places_LT_val.txt, 20 a class
  # from places365's training split; path or URL, and its checksum.
  c.data.val_file_list = ''
  c.data.val_file_list_sha256 = ''
  # Your own images (data.name = folder; configs/folder_lt.py): folders of class subfolders.
  c.data.train_dir = ''
  c.data.test_dir = ''  # '' = hold out a class-balanced share of train_dir
  c.data.val_dir = ''  # a validation folder (run.val_every_epochs chooses an epoch on it)
  c.data.holdout = 0.2  # that share (of the smallest class, the same number from every class)
  c.data.skip_bad_images = False  # skip (and count) images that cannot be decoded instead of stopping

  c.model = ml_collections.ConfigDict()
  c.model.name = 'cifar_resnet'
  c.model.depth = 32
  c.model.width = 16
  c.model.dtype = 'float32'  # or bfloat16 (parameters stay float32)
  c.model.head_init = 'kaiming'  # linear classifier: kaiming | ldam | torch (ltjax/models/heads.py)
  # LDAM-DRW's cosine classifier: unit (the reference's NormedLinear: columns U(-1, 1) at
  # norm 1) | shifted (ltjax before 2026-11-28, to resume its runs: p ~ U[0, 2), w = p - 1)
  c.model.normed_init = 'unit'
  # kaiming-normal over fan_in (LDAM-DRW's and BagofTricks-LT's ResNet-32) | fan_out
  # (torchvision's, Kang et al.'s and SSD-LT's ImageNet ResNets): ltjax/models/layers.py
  c.model.conv_init = 'fan_in'
  c.model.conv_impl = 'auto'  # xla | taps | auto (the fastest measured): ltjax/models/layers.py
  # An ImageNet ResNet's starting weights in torchvision's layout (.npz, .safetensors or
  # .pth; a path or URL) for every phase that starts afresh, fc left out:
  # ltjax/models/pretrained.py. '' = random init. The sha256 pins it where given.
  c.model.pretrained = ''
  c.model.pretrained_sha256 = ''

  c.loss = ml_collections.ConfigDict()
  c.loss.bsce_tau = 1.0
  c.loss.focal_gamma = 1.0  # focal and CB-focal (1, as LDAM-DRW's comparison)
  # focal, CB-focal and cb: softmax (LDAM-DRW's FocalLoss, CB weight inside the focal factor) |
  # sigmoid (Cui et al.'s own code: a sigmoid a class, bias from -log(C - 1), undecayed)
  c.loss.focal_form = 'softmax'
  c.loss.cb_beta = 0.9999  # class-balanced weights (cb, CB-focal, DRW)
  c.loss.ldam_max_margin = 0.5
  c.loss.ldam_scale = 30.0
  c.loss.drw_epoch = 160  # ce_drw / ldam_drw: class-balanced weights from this epoch on
  c.loss.tau_norm_tau = 1.0
  # tau_norm: False drops the CE classifier's bias (Kang et al.'s tau_norm.py), True keeps
  # it (BagofTricks-LT)
  c.loss.tau_norm_bias = False
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
  c.ssd.student_selfsup = False  # phase III: hard + soft only, as the official stage III (True: + L_self)
  c.ssd.phase4 = True  # phase IV: LWS on the phase-III model
  c.ssd.phase4_head = 'hard'  # which phase-III classifier LWS rescales (the official: the hard head)
  c.ssd.teacher_dir = ''  # '' = phase II of this workdir; else another run's
  # The BatchNorm of the frozen phase-I network: of its backbone while phase II refits the
  # classifier (generator_bn) and of the phase-III teacher (teacher_bn): 'train' (the
  # batch's statistics; running ones re-estimated in phase II) or 'eval' (the running
  # statistics phase I left). The official code (MoCo: the classifier's view alone runs
  # through the query encoder) trains both in 'train' (model.train()): large.py sets it.
  # Rotation runs each image at 0/90/180/270 degrees in one batch, so phase I's classifier
  # learned on features normalised over all four rotations; 'train' would renormalise
  # them over upright images alone (measured on CIFAR-10-LT IF 100, phase I's own model:
  # 67.9 -> 62.1 test, 99.9 -> 96.7 on its training images): 'eval' keeps phase I's.
  c.ssd.generator_bn = 'eval'
  c.ssd.teacher_bn = 'eval'
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
  # Kang et al.'s and SSD-LT's classifier stages cycle through the classes and through
  # each class's images (ClassAwareSampler; ltjax/data/samplers.py), 4 (Kang) or 2 (SSD-LT's
  # stage II) consecutive images of a class at its turn.
  c.stage2.sampler = 'class_aware'
  c.stage2.samples_per_class = 2 if method == 'ssd' else 4
  c.stage2.progressive_form = 'kang'  # as data.progressive_form
  c.stage2.epochs = 10
  c.stage2.batch_size = 0  # 0: the main phase's (train.batch_size)
  # The frozen backbone's BatchNorm while the classifier is refit (crt, lws, SSD's phase IV;
  # SSD's phase II: ssd.generator_bn): 'train' (batch statistics; running statistics
  # re-estimated on this stage's class-balanced batches), as Kang et al.'s code
  # (model.train() on every network) and SSD-LT's stage II; or 'eval'.
  c.stage2.backbone_bn = 'train'
  # crt, lws, tau_norm: '' = refit on the CE phase of this workdir; else on another run's
  # (its CE phase folder, its workdir or an orbax checkpoint folder), with
  # --config.run.phases=crt (lws, tau_norm): one baseline for every classifier method.
  c.stage2.backbone_dir = ''
  c.stage2.lr = 0.1
  c.stage2.schedule = 'cosine'
  c.stage2.warmup_epochs = 0.0
  c.stage2.schedule_epochs = 0  # its own length: no scaling
  c.stage2.first_epoch = 0  # as train.first_epoch (cosine_epoch: Kang et al.'s is 1)
  c.stage2.weight_decay = 2e-4
  # Plain momentum, as Kang et al.'s and SSD-LT's classifier stages (BagofTricks-LT's: Nesterov).
  c.stage2.nesterov = False
  # For a step schedule (BagofTricks-LT's cRT / LWS: configs/cifar_lt.py schedule=bag):
  c.stage2.warmup = 'linear'
  c.stage2.lr_boundaries = ()
  c.stage2.lr_decay = 0.1

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 200
  c.train.batch_size = 128
  c.train.lr = 0.1
  c.train.momentum = 0.9
  c.train.nesterov = False
  # The backbone's lr is train.lr times this (a PyTorch parameter group of its own lr):
  # OLTR fine-tunes a pretrained backbone at 0.001 beside a classifier at 0.1 (0.01).
  c.train.backbone_lr_scale = 1.0
  c.train.weight_decay = 2e-4
  c.train.schedule = 'step'  # step | cosine (every step) | cosine_epoch (once an epoch) | constant
  c.train.warmup_epochs = 5.0
  # linear (every step, lr / steps -> lr) | ldam | bbn (per epoch, as the reference code:
  # ltjax/train.py make_schedule)
  c.train.warmup = 'linear'
  c.train.lr_boundaries = (120, 160)  # epochs from which lr is x lr_decay (cumulative)
  c.train.lr_decay = 0.01
  # How the schedule's reference code numbers its first epoch: a boundary b decays from
  # 0-based epoch b - first_epoch (BBN's WarmupMultiStepLR counts from 1); cosine_epoch
  # sets 0-based epoch e to lr/2 (1 + cos(pi (e + first_epoch) / epochs)) (SSD-LT: 0;
  # Kang et al.'s CosineAnnealingLR, stepped before each epoch: 1).
  c.train.first_epoch = 0
  # The run length that warmup_epochs, lr_boundaries and loss.drw_epoch are written for:
  # a run of another train.epochs scales them by train.epochs / schedule_epochs
  # (ltjax/train.py schedule_points); 0: they are this run's own, never scaled.
  c.train.schedule_epochs = 0
  # Locked: a dataset config that sets a field the base lacks (a typo, an old name) fails
  # at once instead of adding a field that nothing reads.
  c.lock()
  return c
