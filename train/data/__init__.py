"""CIFAR-style image classification data, held in memory, augmented on device.

Every source gives the same thing, a `Split`: uint8 images `(N, H, W, C)` and
int32 labels in host memory, with the number of classes, the class names and
the source. CIFAR-10 and CIFAR-100 take 180 MB each, so the training loop
never waits for input: batches are gathered from memory by a permutation,
and the augmentation runs on the device inside the train step.

Sources, named by one string (`config.data.source`):

  tfds:NAME          a prepared tensorflow-datasets dataset (tfds:cifar10,
                     tfds:cifar100, any dataset with a fixed-size 'image' and
                     a 'label'), read from array_record files without
                     TensorFlow; see `train.data.tfds_source`.
  folder:PATH        PATH/<split>/<class>/<image>.png|.jpg, or a .tar,
                     .tar.gz/.tgz or .zip archive of that layout (optionally
                     under one top-level folder); classes in sorted order;
                     see `train.data.folder_source`.
  synthetic:SPEC     deterministic random images, e.g. synthetic:cifar10 or
                     synthetic:num_train=512,num_test=256,image_size=32,
                     num_classes=10,seed=0 (keys: num_train, num_test,
                     image_size, channels, num_classes, seed); see
                     `train.data.synthetic_source`.

The language-model task reads character corpora instead (`text:PATH` or
`tfds:tiny_shakespeare`) into a `TextSplit`; see `train.data.text`.

Decoded `tfds:` and `folder:` data is cached as uncompressed `.npz` files in
`cache_dir` (default `$OPTAX_LCAM_CACHE`, else `$XDG_CACHE_HOME/optax_lcam`,
else `~/.cache/optax_lcam`), named by a digest of the input, written
atomically.

Typical use:

  train = data.load_split(config.data.source, "train")
  for batch in data.train_batches(train, 128, seed=0, epoch=epoch):
    batch = data.shard_for_devices(batch, jax.local_device_count())
    ...  # in the step: images = data.augment(rng, batch["image"],
         #                                  batch["position"])
"""

from train.data.augmentation import augment
from train.data.augmentation import channel_statistics
from train.data.augmentation import crop_and_flip
from train.data.augmentation import crop_and_flip_parameters
from train.data.augmentation import IMAGENET_MEAN
from train.data.augmentation import IMAGENET_STD
from train.data.augmentation import normalization_stats
from train.data.augmentation import NORMALIZATIONS
from train.data.augmentation import normalize
from train.data.batching import Batch
from train.data.batching import check_global_batch_size
from train.data.batching import epoch_permutation
from train.data.batching import eval_batches
from train.data.batching import shard_for_devices
from train.data.batching import steps_per_epoch
from train.data.batching import train_batches
from train.data.cache import default_cache_dir
from train.data.sources import load_split
from train.data.sources import SOURCE_KINDS
from train.data.split import DataError
from train.data.split import DataNotFoundError
from train.data.split import fingerprint
from train.data.split import hold_out
from train.data.split import Split
from train.data.text import load_text_split
from train.data.text import TextSplit

__all__ = [
    "augment",
    "Batch",
    "channel_statistics",
    "check_global_batch_size",
    "crop_and_flip",
    "crop_and_flip_parameters",
    "DataError",
    "DataNotFoundError",
    "default_cache_dir",
    "epoch_permutation",
    "eval_batches",
    "fingerprint",
    "hold_out",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "load_split",
    "normalization_stats",
    "normalize",
    "NORMALIZATIONS",
    "shard_for_devices",
    "SOURCE_KINDS",
    "Split",
    "TextSplit",
    "load_text_split",
    "steps_per_epoch",
    "train_batches",
]
