"""Tests of models/: Wide-ResNets that match the LCAM reference network.

(The character GPT of the same package is tested in ``test_gpt.py``.)

Big models are only ever traced abstractly (``jax.eval_shape``); everything
that runs uses WRN-10-1 (the smallest valid WRN) on 8x8 images, initialised
once per module.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 3)  # two stride-2 stages: 8 -> 8 -> 4 -> 2 pixels
BATCH = 16
DEVICES = 8
AXIS = "batch"


def _abstract_variables(model, image_shape=(32, 32, 3)):
  """Variables of ``model`` as ShapeDtypeStructs, without running init."""
  images = jax.ShapeDtypeStruct((1,) + image_shape, jnp.float32)
  return jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), images)


def _max_relative_error(actual, expected):
  """Largest max|actual - expected| / max|expected| over the leaves."""

  def relative_error(a, e):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    return float(np.max(np.abs(a - e)) / max(np.max(np.abs(e)), 1e-12))

  errors = jax.tree.map(relative_error, actual, expected)
  return max(jax.tree_util.tree_leaves(errors))


@pytest.fixture(scope="module")
def tiny_model():
  return models.create_model("wrn-10-1", NUM_CLASSES)


@pytest.fixture(scope="module")
def tiny_variables(tiny_model):
  init = jax.jit(lambda key, x: tiny_model.init(key, x, train=False))
  return init(jax.random.key(0), jnp.zeros((2,) + IMAGE_SHAPE))


@pytest.fixture(scope="module")
def batch():
  image_key, label_key = jax.random.split(jax.random.key(42))
  images = jax.random.normal(image_key, (BATCH,) + IMAGE_SHAPE)
  labels = jax.random.randint(label_key, (BATCH,), 0, NUM_CLASSES)
  return images, labels


@pytest.fixture(scope="module")
def train_apply(tiny_model):
  """Jitted train-mode apply of the tiny model: (variables, images, mask)."""
  return jax.jit(lambda variables, images, mask: tiny_model.apply(
      variables, images, train=True, mask=mask, mutable=["batch_stats"]))


@pytest.fixture(scope="module")
def eval_apply(tiny_model):
  return jax.jit(lambda variables, images: tiny_model.apply(
      variables, images, train=False))


# --- Architecture -------------------------------------------------------------


@pytest.mark.parametrize("name, num_classes, expected", [
    ("wrn-28-10", 10, 36_479_194),
    ("wrn-28-10", 100, 36_536_884),
    ("wrn-16-8", 10, 10_961_370),
    ("wrn-40-4", 10, 8_949_210),
    ("wrn-16-4", 10, 2_748_890),
    ("wrn-10-1", 10, 77_850),
])
def test_parameter_count_matches_reference(name, num_classes, expected):
  model = models.create_model(name, num_classes)
  variables = _abstract_variables(model)
  assert models.count_params(variables["params"]) == expected


def test_layers_and_shapes_follow_reference():
  """WRN-28-10: 4 blocks in each of 3 groups of widths 160, 320, 640.

  A 1x1 shortcut conv exactly where the shape changes (first block of each
  group), no conv biases, a dense classifier with a bias.
  """
  params = _abstract_variables(models.WRN_28_10(num_classes=10))["params"]
  assert params["stem_conv"]["kernel"].shape == (3, 3, 3, 16)
  assert set(params["stem_conv"]) == {"kernel"}  # no conv bias
  for group, (width, in_width) in enumerate(
      ((160, 16), (320, 160), (640, 320)), start=1):
    for index in range(1, 5):
      block = params[f"group{group}_block{index}"]
      block_in = in_width if index == 1 else width
      assert block["conv1"]["kernel"].shape == (3, 3, block_in, width)
      assert block["conv2"]["kernel"].shape == (3, 3, width, width)
      assert block["bn1"]["scale"].shape == (block_in,)
      assert ("shortcut_conv" in block) == (index == 1)
      if index == 1:
        assert block["shortcut_conv"]["kernel"].shape == (1, 1, in_width, width)
    assert f"group{group}_block5" not in params
  assert params["final_bn"]["scale"].shape == (640,)
  assert params["classifier"]["kernel"].shape == (640, 10)
  assert params["classifier"]["bias"].shape == (10,)


def test_identity_shortcut_when_shape_is_kept(tiny_variables):
  params = tiny_variables["params"]
  assert "shortcut_conv" not in params["group1_block1"]  # 16 -> 16, stride 1
  assert "shortcut_conv" in params["group2_block1"]
  assert "shortcut_conv" in params["group3_block1"]


def test_initialisation_follows_reference(tiny_variables):
  params = tiny_variables["params"]
  kernel = np.asarray(params["group3_block1"]["conv1"]["kernel"])  # 3x3x32x64
  expected_std = np.sqrt(2.0 / (3 * 3 * 64))  # Kaiming normal, fan_out
  assert kernel.std() == pytest.approx(expected_std, rel=0.03)
  # Plain (not truncated) normal: about 1.2 % of the values beyond 2.5 std.
  assert np.mean(np.abs(kernel) > 2.5 * expected_std) > 0.006
  shortcut = np.asarray(params["group3_block1"]["shortcut_conv"]["kernel"])
  assert shortcut.std() == pytest.approx(np.sqrt(2.0 / 64), rel=0.05)
  dense = np.asarray(params["classifier"]["kernel"])
  bound = 1.0 / np.sqrt(dense.shape[0])  # PyTorch's default nn.Linear init
  assert np.abs(dense).max() <= bound
  assert np.abs(dense).max() > 0.9 * bound
  np.testing.assert_array_equal(params["classifier"]["bias"], 0.0)
  np.testing.assert_array_equal(params["final_bn"]["scale"], 1.0)
  np.testing.assert_array_equal(params["final_bn"]["bias"], 0.0)
  final_stats = tiny_variables["batch_stats"]["final_bn"]
  np.testing.assert_array_equal(final_stats["mean"], 0.0)
  np.testing.assert_array_equal(final_stats["var"], 1.0)


def _torch_style_conv(x, kernel, stride, padding):
  """PyTorch Conv2d (no bias) in float64 NHWC: pad every side, then stride."""
  x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  size = kernel.shape[0]
  out_h = (x.shape[1] - size) // stride + 1
  out_w = (x.shape[2] - size) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
  for i in range(size):
    for j in range(size):
      patch = x[:, i:i + stride * (out_h - 1) + 1:stride,
                j:j + stride * (out_w - 1) + 1:stride, :]
      out += patch @ kernel[i, j]
  return out


def _torch_style_train_bn(x, bn_params):
  """PyTorch BatchNorm2d in training mode: biased batch variance, eps 1e-5."""
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  normalised = (x - mean) / np.sqrt(var + 1e-5)
  return normalised * bn_params["scale"] + bn_params["bias"]


def _reference_tiny_forward(params, images):
  """The reference's WideResNet.forward for depth 10, written out in numpy."""
  params = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
  relu = lambda x: np.maximum(x, 0.0)
  x = _torch_style_conv(np.asarray(images, np.float64),
                        params["stem_conv"]["kernel"], 1, 1)
  for group, stride in ((1, 1), (2, 2), (3, 2)):
    block = params[f"group{group}_block1"]
    out_planes = block["conv1"]["kernel"].shape[-1]
    activated = relu(_torch_style_train_bn(x, block["bn1"]))
    if x.shape[-1] == out_planes:
      shortcut = x
    else:
      shortcut = _torch_style_conv(
          activated, block["shortcut_conv"]["kernel"], stride, 0)
    y = _torch_style_conv(activated, block["conv1"]["kernel"], stride, 1)
    y = relu(_torch_style_train_bn(y, block["bn2"]))
    x = shortcut + _torch_style_conv(y, block["conv2"]["kernel"], 1, 1)
  x = relu(_torch_style_train_bn(x, params["final_bn"]))
  features = x.mean(axis=(1, 2))
  classifier = params["classifier"]
  return features @ classifier["kernel"] + classifier["bias"]


def test_forward_matches_reference_written_in_numpy(
    tiny_variables, batch, train_apply):
  """Catches e.g. 'SAME' padding (asymmetric at stride 2) or a misplaced BN."""
  images, _ = batch
  logits, _ = train_apply(tiny_variables, images, None)
  expected = _reference_tiny_forward(tiny_variables["params"], images)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


# --- dtypes -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtypes_of_params_statistics_activations_and_logits(dtype):
  model = models.create_model("wrn-10-1", NUM_CLASSES, dtype=dtype)
  variables = _abstract_variables(model, IMAGE_SHAPE)
  images = jax.ShapeDtypeStruct((4,) + IMAGE_SHAPE, jnp.float32)
  (logits, state) = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, capture_intermediates=True,
                               mutable=["batch_stats", "intermediates"]),
      variables, images)
  assert logits.shape == (4, NUM_CLASSES)
  assert logits.dtype == jnp.float32
  for leaf in jax.tree_util.tree_leaves(variables):
    assert leaf.dtype == jnp.float32
  for leaf in jax.tree_util.tree_leaves(state["batch_stats"]):
    assert leaf.dtype == jnp.float32
  intermediates = state["intermediates"]
  assert intermediates["stem_conv"]["__call__"][0].dtype == dtype
  block = intermediates["group2_block1"]
  assert block["conv1"]["__call__"][0].dtype == dtype
  assert block["bn2"]["__call__"][0].dtype == dtype
  assert block["__call__"][0].shape == (4, 4, 4, 32)


def test_bfloat16_forward_is_close_to_float32(
    tiny_variables, batch, eval_apply):
  images, _ = batch
  model = models.create_model("wrn-10-1", NUM_CLASSES, dtype=jnp.bfloat16)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      tiny_variables, images)
  assert logits.dtype == jnp.float32
  expected = eval_apply(tiny_variables, images)
  np.testing.assert_allclose(logits, expected, rtol=0.1, atol=0.1)
  assert not np.allclose(logits, expected, rtol=1e-6, atol=1e-6)


# --- Train and eval modes -----------------------------------------------------


def test_train_mode_updates_every_running_statistic(
    tiny_variables, batch, train_apply):
  images, _ = batch
  _, updates = train_apply(tiny_variables, images, None)
  old = jax.tree_util.tree_leaves(tiny_variables["batch_stats"])
  new = jax.tree_util.tree_leaves(updates["batch_stats"])
  assert len(new) == len(old) == 2 * 7  # 7 BatchNorms: 2 per block, 1 final
  for old_leaf, new_leaf in zip(old, new):
    assert not np.allclose(old_leaf, new_leaf)


def test_train_mode_uses_batch_statistics(tiny_variables, batch, train_apply):
  """Changing the other examples of the batch changes an example's logits."""
  images, _ = batch
  logits, _ = train_apply(tiny_variables, images, None)
  changed = images.at[1:].multiply(3.0)
  logits_changed, _ = train_apply(tiny_variables, changed, None)
  assert not np.allclose(logits[0], logits_changed[0], atol=1e-4)


def test_eval_mode_uses_running_statistics(
    tiny_variables, batch, train_apply, eval_apply):
  images, _ = batch
  logits = eval_apply(tiny_variables, images)
  # Each example on its own: independent of the rest of the batch.
  np.testing.assert_allclose(
      eval_apply(tiny_variables, images[:1])[0], logits[0],
      rtol=1e-5, atol=1e-6)
  # Depends on the running statistics.
  _, updates = train_apply(tiny_variables, images, None)
  updated = {**tiny_variables, "batch_stats": updates["batch_stats"]}
  assert not np.allclose(eval_apply(updated, images), logits, atol=1e-4)


def test_eval_mode_mutates_nothing(tiny_model, tiny_variables, batch):
  images, _ = batch
  _, state = tiny_model.apply(tiny_variables, images[:2], train=False,
                              mutable=["batch_stats"])
  assert jax.tree_util.tree_all(jax.tree.map(
      np.array_equal, state["batch_stats"], tiny_variables["batch_stats"]))


# --- Dropout ------------------------------------------------------------------


@pytest.fixture(scope="module")
def dropout_model():
  return models.create_model("wrn-10-1", NUM_CLASSES, dropout_rate=0.3)


def test_dropout_is_driven_by_the_rng_in_training(
    dropout_model, tiny_variables, batch):
  images, _ = batch
  apply = jax.jit(lambda key: dropout_model.apply(
      tiny_variables, images, train=True, rngs={"dropout": key},
      mutable=["batch_stats"])[0])
  first = apply(jax.random.key(1))
  np.testing.assert_array_equal(apply(jax.random.key(1)), first)
  assert not np.allclose(apply(jax.random.key(2)), first, atol=1e-4)
  with pytest.raises(flax.errors.InvalidRngError):
    dropout_model.apply(tiny_variables, images, train=True,
                        mutable=["batch_stats"])


def test_dropout_is_off_in_evaluation(
    dropout_model, tiny_variables, batch, eval_apply):
  images, _ = batch
  logits = jax.jit(lambda v, x: dropout_model.apply(v, x, train=False))(
      tiny_variables, images)
  np.testing.assert_allclose(
      logits, eval_apply(tiny_variables, images), rtol=1e-6, atol=1e-6)


def _mapped(fn, devices):
  """``fn`` of a batch, pmapped over ``devices`` devices' equal parts of it."""
  mapped = jax.pmap(fn, axis_name=AXIS, devices=jax.devices()[:devices])

  def apply(x):
    out = mapped(x.reshape((devices, -1) + x.shape[1:]))
    return out.reshape((x.shape[0],) + out.shape[2:])

  return apply


def test_dropout_masks_do_not_depend_on_the_device_layout():
  x = 1.0 + jax.random.uniform(jax.random.key(3), (BATCH, 4, 4, 2))
  key = jax.random.key(1)

  def dropout(axis_name):
    layer = models.ExampleDropout(rate=0.5, axis_name=axis_name)
    return lambda x: layer.apply({}, x, deterministic=False,
                                 rngs={"dropout": key})

  expected = jax.jit(dropout(None))(x)
  assert 0.3 < float(jnp.mean(expected == 0.0)) < 0.7
  mesh = jax.make_mesh((DEVICES,), (AXIS,), devices=jax.devices()[:DEVICES])
  sharded = jax.device_put(x, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(AXIS)))
  np.testing.assert_array_equal(jax.jit(dropout(None))(sharded), expected)
  for devices in (2, DEVICES):
    np.testing.assert_array_equal(
        _mapped(dropout(AXIS), devices)(x), expected, err_msg=str(devices))


def test_dropout_gives_the_same_logits_on_1_2_and_8_devices(tiny_variables,
                                                            batch):
  images, _ = batch
  key = jax.random.key(5)

  def logits(**fields):
    model = models.create_model("wrn-10-1", NUM_CLASSES, dropout_rate=0.3,
                                **fields)
    return lambda x: model.apply(tiny_variables, x, train=True,
                                 rngs={"dropout": key},
                                 mutable=["batch_stats"])[0]

  expected = jax.jit(logits())(images)
  for devices in (2, DEVICES):
    # Only the order of BatchNorm's sums differs.
    np.testing.assert_allclose(
        _mapped(logits(bn_axis_name=AXIS), devices)(images), expected,
        rtol=1e-5, atol=1e-5, err_msg=str(devices))


# --- Mask ---------------------------------------------------------------------


def _padded(images, real, garbage):
  """The first ``real`` images, then garbage ones up to BATCH, and the mask."""
  shape = (BATCH - real,) + IMAGE_SHAPE
  if garbage == "noise":
    padding = 1e3 * jax.random.normal(jax.random.key(7), shape)
  else:
    padding = jnp.full(shape, jnp.nan)
  return jnp.concatenate([images[:real], padding]), jnp.arange(BATCH) < real


@pytest.mark.parametrize("garbage", ["noise", "nan"])
def test_mask_excludes_padding_from_batch_statistics(
    tiny_model, tiny_variables, batch, train_apply, garbage):
  images, _ = batch
  real = 11
  unpadded = jax.jit(lambda v, x: tiny_model.apply(
      v, x, train=True, mutable=["batch_stats"]))
  expected_logits, expected = unpadded(tiny_variables, images[:real])
  padded, mask = _padded(images, real, garbage)
  logits, updates = train_apply(tiny_variables, padded, mask)
  np.testing.assert_allclose(
      logits[:real], expected_logits, rtol=1e-5, atol=1e-5)
  assert _max_relative_error(
      updates["batch_stats"], expected["batch_stats"]) < 1e-5


def test_all_true_mask_equals_no_mask(tiny_variables, batch, train_apply):
  images, _ = batch
  logits, updates = train_apply(tiny_variables, images, None)
  masked_logits, masked_updates = train_apply(
      tiny_variables, images, jnp.ones(BATCH, bool))
  np.testing.assert_allclose(masked_logits, logits, rtol=1e-5, atol=1e-6)
  assert _max_relative_error(masked_updates, updates) < 1e-5


def test_batch_norm_matches_pytorch_statistics():
  """Biased variance normalises; the unbiased one enters the running average."""
  x = np.random.default_rng(0).normal(2.0, 3.0, size=(6, 3, 3, 4))
  x = x.astype(np.float32)
  mask = np.array([True, True, False, True, False, True])
  bn = models.BatchNorm()
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  y, updates = bn.apply(variables, x, use_running_average=False, mask=mask,
                        mutable=["batch_stats"])
  real = x[mask].astype(np.float64)
  mean, var = real.mean(axis=(0, 1, 2)), real.var(axis=(0, 1, 2))
  np.testing.assert_allclose(
      y[mask], (real - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
  count = real.size // 4
  np.testing.assert_allclose(
      updates["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(
      updates["batch_stats"]["var"], 0.9 + 0.1 * var * count / (count - 1),
      rtol=1e-5)


def test_batch_without_real_examples_keeps_running_statistics():
  x = jnp.ones((4, 2, 2, 3))
  bn = models.BatchNorm()
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  running = {"mean": jnp.full(3, 1.5), "var": jnp.full(3, 2.0)}
  variables = {**variables, "batch_stats": running}
  y, updates = bn.apply(variables, x, use_running_average=False,
                        mask=jnp.zeros(4, bool), mutable=["batch_stats"])
  assert np.all(np.isfinite(y))
  np.testing.assert_array_equal(updates["batch_stats"]["mean"], 1.5)
  np.testing.assert_array_equal(updates["batch_stats"]["var"], 2.0)


# --- Several devices ----------------------------------------------------------


def _loss_and_grads(model, variables, images, labels, mask, axis_name=None):
  """Mean cross-entropy over the real examples of the (global) batch.

  Returns:
    The loss, the logits, the new batch statistics and the gradients.
  """
  is_real = jnp.ones(images.shape[0], bool) if mask is None else mask

  def loss_fn(params):
    logits, updates = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, images,
        train=True, mask=mask, mutable=["batch_stats"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    real_count = jnp.sum(is_real)
    if axis_name is not None:
      real_count = jax.lax.psum(real_count, axis_name)
    loss = jnp.sum(jnp.where(is_real, losses, 0.0)) / real_count
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      variables["params"])
  if axis_name is not None:
    # Each device's loss is its share of the global mean: the sums are global.
    loss, grads = jax.lax.psum((loss, grads), axis_name)
  return loss, logits, updates["batch_stats"], grads


def _shard(x):
  return x.reshape((DEVICES, -1) + x.shape[1:])


@pytest.mark.parametrize("masked", [False, True])
def test_pmap_with_bn_axis_name_equals_one_device(
    tiny_variables, batch, masked):
  """8 devices x 2 examples behave as 1 device x 16 (or its real examples)."""
  assert jax.device_count() >= DEVICES
  images, labels = batch
  if masked:
    # Unequal real counts per device, and devices 2 and 5 hold padding only.
    mask = jnp.array([1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1], bool)
    images = jnp.where(mask[:, None, None, None], images, 1e3)
    real = np.asarray(mask)
    single_images, single_labels = images[real], labels[real]
  else:
    mask, real = None, np.ones(BATCH, bool)
    single_images, single_labels = images, labels
  single_model = models.create_model("wrn-10-1", NUM_CLASSES)
  expected = jax.jit(
      lambda v, x, y: _loss_and_grads(single_model, v, x, y, None))(
          tiny_variables, single_images, single_labels)

  synced_model = models.create_model("wrn-10-1", NUM_CLASSES, bn_axis_name=AXIS)
  step = jax.pmap(
      lambda v, x, y, m: _loss_and_grads(synced_model, v, x, y, m, AXIS),
      axis_name=AXIS, in_axes=(None, 0, 0, 0 if masked else None),
      devices=jax.devices()[:DEVICES])
  loss, logits, stats, grads = step(
      tiny_variables, _shard(images), _shard(labels),
      None if mask is None else _shard(mask))

  first_device = lambda tree: jax.tree.map(lambda x: x[0], tree)
  np.testing.assert_allclose(loss[0], expected[0], rtol=1e-5)
  np.testing.assert_allclose(
      logits.reshape(BATCH, NUM_CLASSES)[real], expected[1],
      rtol=1e-5, atol=1e-5)
  assert _max_relative_error(first_device(stats), expected[2]) < 1e-5
  assert _max_relative_error(first_device(grads), expected[3]) < 1e-5
  # Every device ends with the same statistics and gradients.
  for tree in (stats, grads):
    for leaf in jax.tree_util.tree_leaves(tree):
      np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))


@pytest.mark.skipif(not hasattr(jax, "shard_map"), reason="needs jax.shard_map")
def test_shard_map_with_bn_axis_name_equals_one_device(tiny_variables, batch):
  """The same axis name works under shard_map, pmap's successor."""
  images, labels = batch
  mesh = jax.make_mesh((DEVICES,), (AXIS,), devices=jax.devices()[:DEVICES])
  spec = jax.sharding.PartitionSpec

  def loss_fn(model, params, images, labels, axis_name=None):
    logits, updates = model.apply(
        {"params": params, "batch_stats": tiny_variables["batch_stats"]},
        images, train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()
    if axis_name is not None:
      loss = jax.lax.pmean(loss, axis_name)
    return loss, updates["batch_stats"]

  single_model = models.create_model("wrn-10-1", NUM_CLASSES)
  expected = jax.jit(jax.value_and_grad(
      lambda p, x, y: loss_fn(single_model, p, x, y), has_aux=True))(
          tiny_variables["params"], images, labels)
  synced_model = models.create_model("wrn-10-1", NUM_CLASSES, bn_axis_name=AXIS)
  # Inside shard_map the parameters are replicated (invariant over the axis),
  # so the gradient of the pmean-ed loss is already the global gradient.
  step = jax.shard_map(
      jax.value_and_grad(
          lambda p, x, y: loss_fn(synced_model, p, x, y, AXIS), has_aux=True),
      mesh=mesh, in_specs=(spec(), spec(AXIS), spec(AXIS)),
      out_specs=((spec(), spec()), spec()))
  sharded = jax.sharding.NamedSharding(mesh, spec(AXIS))
  replicated = jax.sharding.NamedSharding(mesh, spec())
  (loss, stats), grads = jax.jit(step)(
      jax.device_put(tiny_variables["params"], replicated),
      jax.device_put(images, sharded), jax.device_put(labels, sharded))
  np.testing.assert_allclose(loss, expected[0][0], rtol=1e-5)
  assert _max_relative_error(stats, expected[0][1]) < 1e-5
  assert _max_relative_error(grads, expected[1]) < 1e-5


# --- Construction and lookup --------------------------------------------------


@pytest.mark.parametrize("depth", [4, 9, 27, 29, -2, 0, 28.0])
def test_invalid_depth_raises_at_construction(depth):
  with pytest.raises(ValueError, match=rf"depth {depth!r}.*6 \* n \+ 4"):
    models.WideResNet(depth=depth, widen_factor=1, num_classes=10)


@pytest.mark.parametrize("field, value", [
    ("widen_factor", 0), ("num_classes", 0), ("dropout_rate", 1.0),
    ("dropout_rate", -0.1)])
def test_invalid_fields_raise_at_construction(field, value):
  kwargs = dict(depth=10, widen_factor=1, num_classes=10)
  kwargs[field] = value
  with pytest.raises(ValueError, match=field):
    models.WideResNet(**kwargs)


def test_unknown_name_lists_known_names():
  with pytest.raises(ValueError, match="resnet-50") as error:
    models.create_model("resnet-50", 10)
  for name in models.MODEL_NAMES:
    assert name in str(error.value)


def test_model_names():
  assert models.MODEL_NAMES == (
      "wrn-28-10", "wrn-16-8", "wrn-40-4", "wrn-16-4", "wrn-10-1",
      "gpt-6-384", "gpt-4-128", "gpt-2-32")


@pytest.mark.parametrize("name, depth, widen_factor", [
    ("wrn-28-10", 28, 10), ("WRN_28_10", 28, 10), ("Wrn-16-8", 16, 8),
    ("wrn_40_4", 40, 4), ("WRN-16-4", 16, 4), ("wrn-10-1", 10, 1)])
def test_create_model_accepts_any_case_and_underscores(
    name, depth, widen_factor):
  model = models.create_model(name, 100, dtype=jnp.bfloat16, bn_axis_name=AXIS)
  assert (model.depth, model.widen_factor, model.num_classes) == (
      depth, widen_factor, 100)
  assert model.dtype == jnp.bfloat16 and model.bn_axis_name == AXIS


def test_named_variants_are_the_model_with_fixed_depth_and_width():
  model = models.WRN_16_8(num_classes=100)
  assert isinstance(model, models.WideResNet)
  assert (model.depth, model.widen_factor) == (16, 8)


def test_count_params_on_concrete_and_abstract_trees(
    tiny_model, tiny_variables):
  abstract = _abstract_variables(tiny_model, IMAGE_SHAPE)
  assert models.count_params(tiny_variables["params"]) == models.count_params(
      abstract["params"]) == 77_850
  tree = {"a": jnp.zeros((2, 3)), "b": [jnp.zeros(4)]}
  assert models.count_params(tree) == 10
