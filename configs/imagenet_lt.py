"""ImageNet-LT (Liu et al.; TFDS ``imagenet_lt``): 1,000 classes, 115,846 training images
(1,280 ... 5 a class), tested on the 50,000 ILSVRC validation images.

  python -m ltjax.main --config configs/imagenet_lt.py:method=dive --workdir W \
      --config.run.data_dir ~/tensorflow_datasets

ResNeXt-50 (32x4d) in bf16, the host pipeline (random resized crop 224, flip, colour
jitter 0.4; centre crop 224 of 256 for testing). Methods: ce, bsce, dive, ssd (and
crt, lws, tau_norm). CE, BSCE and DiVE's teacher and student: 90 epochs, batch 512,
lr 0.2 cosine (set once an epoch), weight decay 5e-4 (Kang et al.); their cRT / LWS: 10 /
5 epochs, class-aware cycles of 4 images a class. SSD: the official recipe, 135 epochs,
batch 256, lr 0.1 cosine, MoCo v2 with a 115,712-key queue; LWS 5 epochs. Arguments:
method, seed, epochs (override the phase length), smoke (tiny images and batches on
the real data), mock (the same on TFDS's mock data: no dataset needed). The validation
split (20 images a class) is evaluated after every epoch (``run.val_every_epochs``), and
the later phase of crt, lws, tau_norm and dive starts from an earlier one's best
validation epoch (``handoff``; SSD: its last, as SSD-LT).

The TFDS data must be prepared by hand (the ILSVRC2012 tars need an image-net.org
account): README "Large datasets".
"""
from configs import large
from ltjax import config_lib


def get_config(arg=None):
  args = config_lib.parse_args(arg, large.LARGE_ARGS)
  c = large.large_config(args, 'imagenet_lt', 'resnext50_32x4d', epochs=90, ssd_epochs=135)
  # Kang et al.'s code (which the BSCE and DiVE numbers follow) evaluates the 20,000-image
  # validation split after every epoch and tests the best epoch's weights: results.json
  # keeps that as best_val_selected beside ltjax's last epoch.
  c.run.val_every_epochs = 1
  # And its stage 2 (cRT, LWS, tau-norm: load_model's state_dict_best) starts from that best
  # epoch, as BALMS's code (BSCE, the DiVE teacher's loss) does; SSD keeps the last epoch
  # (large.BEST_VAL_HANDOFF).
  if c.method in large.BEST_VAL_HANDOFF:
    c.handoff = 'best_val'
  return c
