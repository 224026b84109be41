"""Places-LT (Liu et al., OLTR): 365 classes, 62,500 training images (4,980 ... 5 a class)
of TFDS ``places365_small``'s training split chosen by OLTR's ``Places_LT_train.txt``,
tested on places365's validation split (36,500).

  python -m ltjax.main --config configs/places_lt.py:method=crt --workdir W \
      --config.run.data_dir ~/tensorflow_datasets \
      --config.data.file_list=PATH_OR_URL/Places_LT_train.txt

ResNet-152 in bf16 from ImageNet-pretrained weights (``model.pretrained``; default
torchvision's ``IMAGENET1K_V1``, whose ``.pth`` needs torch to read: README
"ImageNet-pretrained backbones"), the host pipeline as ImageNet-LT (random resized crop
224, flip, colour jitter 0.4, ImageNet's mean and std; centre crop 224 of 256 for
testing). Methods: ce, and Kang et al.'s crt, lws, tau_norm on its backbone.

- The CE phase is OLTR's Places-LT stage 1 (``config/Places_LT/stage_1.py``), with two
  differences: OLTR starts from ``caffe_resnet152.pth`` (Caffe's ResNet-152 in
  torchvision's names; pass it as ``model.pretrained`` to match), and puts a 2048 -> 512
  ``fc_add`` and ReLU before the classifier, which Kang et al.'s 2048-d Places models and
  ltjax leave out. As OLTR: 30 epochs, batch 128, int(N / 128) steps an epoch, SGD
  momentum 0.9, weight decay 5e-4, the backbone at lr 0.001 and the classifier at 0.1
  (``train.backbone_lr_scale`` 0.01), x0.1 every 10 epochs (``StepLR(10, 0.1)``, stepped
  after each epoch).
- cRT and LWS: Kang et al.'s ``config/Places_LT/cls_crt.yaml`` / ``cls_lws.yaml``: 10 / 5
  epochs, batch 256, lr 0.1, weight decay 5e-4, cosine to 0 stepped before each epoch,
  class-aware cycles of 4 images a class, the backbone fixed with its BatchNorm in
  training mode (``model.train()`` every epoch). tau-norm sweeps tau over 0, 0.1 ... 2.

Arguments: method, seed, epochs (the CE phase's length), scratch (random initial weights:
no pretrained file; the recipe stays the fine-tuning one, backbone lr 0.001 included),
smoke (tiny images and batches on the real data), mock (the same on TFDS's mock data; it
still needs a file list of the mock split's names, as tests/data/test_host.py writes one). Kang et al.'s stage 2 takes the CE model of the best
validation epoch: give OLTR's ``Places_LT_val.txt`` (``--config.data.val_file_list``)
with ``--config.run.val_every_epochs=1 --config.handoff=best_val``.
"""
from configs import large
from ltjax import config_lib
from ltjax.errors import ConfigError

METHODS = ('ce', 'crt', 'lws', 'tau_norm')
ARGS = {**large.LARGE_ARGS, 'scratch': False}
# torchvision's ResNet-152 (ImageNet top-1 78.31); the hash in its name is the start of
# its sha256, checked after the download (model.pretrained_sha256 pins all of it).
TORCHVISION_RESNET152 = 'https://download.pytorch.org/models/resnet152-394f9c45.pth'


def get_config(arg=None):
  args = config_lib.parse_args(arg, ARGS)
  if args.method not in METHODS:
    raise ConfigError(f'method={args.method!r}; configs/places_lt.py has {", ".join(METHODS)} '
                      f'(the published Places-LT recipes: OLTR\'s stage 1, Kang et al.\'s stage 2).')
  scratch = args.scratch or args.smoke or args.mock
  c = large.large_config(args, 'places_lt', 'resnet152', epochs=30, ssd_epochs=30, crt_epochs=10, lws_epochs=5,
                         weight_decay=5e-4)
  c.model.pretrained = '' if scratch else TORCHVISION_RESNET152
  if args.smoke or args.mock:
    return c
  # OLTR's stage 1: batch 128, backbone lr 0.001 beside the classifier's 0.1, StepLR(10, 0.1)
  # stepped after each epoch, epoch_steps = int(N / 128) (the partial batch skipped;
  # large_config: drop_last). epochs=N moves the decays to N / 3 and 2N / 3.
  c.train.batch_size = 128
  c.train.lr = 0.1
  c.train.backbone_lr_scale = 0.01
  c.train.schedule = 'step'
  c.train.schedule_epochs = 30
  c.train.lr_boundaries = (10, 20)
  c.train.lr_decay = 0.1
  c.train.first_epoch = 0
  # Kang et al.'s Places cls_crt.yaml / cls_lws.yaml: batch 256, lr 0.1 (cosine, first_epoch 1).
  c.stage2.batch_size = 256
  c.stage2.lr = 0.1
  return c
