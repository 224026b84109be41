"""iNaturalist 2018 (TFDS ``i_naturalist2018``): 8,142 classes, 437,513 training images
(1,000 ... 2 a class), tested on the official validation split (24,426).

  python -m ltjax.main --config configs/inat18.py:method=dive --workdir W \
      --config.run.data_dir ~/tensorflow_datasets

ResNet-50 in bf16, the host pipeline as ImageNet-LT. CE, BSCE and DiVE: 90 epochs
(DiVE's 69.13; ``epochs=200`` for its 71.71), batch 512, lr 0.2 cosine, weight decay
1e-4 (Kang et al.'s iNaturalist configs); cRT / LWS 30 / 5 epochs; no colour jitter and
iNaturalist's mean and std (their data loader). SSD: its "1x" schedule, 90 epochs
(``epochs=180`` for 2x), MoCo v2, batch 256, lr 0.1, weight decay 5e-4 and colour jitter
as its ImageNet-LT code. Arguments as configs/imagenet_lt.py.
"""
from configs import large
from ltjax import config_lib


def get_config(arg=None):
  args = config_lib.parse_args(arg, large.LARGE_ARGS)
  # Kang et al.'s iNaturalist configs: weight decay 1e-4; cls_crt.yaml 30 epochs, cls_lws.yaml 5.
  c = large.large_config(args, 'inat18', 'resnet50', epochs=90, ssd_epochs=90, crt_epochs=30,
                         weight_decay=1e-4)
  if args.method != 'ssd':  # SSD keeps its (ImageNet-LT) code's views
    # Kang et al.'s data/dataloader.py for iNaturalist18: no colour jitter, the dataset's
    # own mean and standard deviation.
    c.data.augment.jitter = 0.0
    c.data.augment.mean = (0.466, 0.471, 0.380)
    c.data.augment.std = (0.195, 0.194, 0.192)
  return c
