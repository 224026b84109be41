"""Sampler statistics against their definitions, under jax.jit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax.data import samplers
from ltjax.data.samplers import Sampler

COUNTS = (400, 160, 64, 25, 10)


def make(kind, batch=50, epochs=10, **kw):
  labels = np.repeat(np.arange(len(COUNTS)), COUNTS)
  labels = labels[np.random.default_rng(0).permutation(len(labels))]
  s = Sampler(kind, len(labels), batch, COUNTS, epochs, **kw)
  arrays = jax.tree.map(jnp.asarray, Sampler.arrays(labels, len(COUNTS)))
  return s, arrays, labels


def draw(kind, steps, **kw):
  s, arrays, labels = make(kind, **kw)
  fn = jax.jit(lambda step: s(arrays, jax.random.key(7), step))
  return s, labels, np.stack([np.asarray(fn(jnp.int32(i))) for i in steps])


def test_instance_covers_each_image_once_per_epoch():
  s, labels, idx = draw('instance', range(0, 13), batch=50)  # 659 images, 14 steps/epoch
  assert s.steps_per_epoch == 14
  s, labels, idx = draw('instance', range(0, 14), batch=50)
  flat = idx.reshape(-1)
  assert len(flat) == 700 and set(flat.tolist()) == set(range(659))
  # Only the wrapped tail of the last batch repeats.
  assert np.bincount(flat, minlength=659).max() == 2 and (np.bincount(flat) == 2).sum() == 41


def test_instance_epochs_are_reshuffled():
  _, _, idx = draw('instance', [0, 14])
  assert not np.array_equal(idx[0], idx[1])


def _class_frequencies(kind, steps=200, **kw):
  _, labels, idx = draw(kind, range(steps), **kw)
  return np.bincount(labels[idx.reshape(-1)], minlength=len(COUNTS)) / idx.size, idx.size


@pytest.mark.parametrize('kind', ['class', 'sqrt'])
def test_class_frequencies_match_definition(kind):
  freq, n = _class_frequencies(kind)
  c = np.array(COUNTS, float)
  expected = np.full(5, 0.2) if kind == 'class' else np.sqrt(c) / np.sqrt(c).sum()
  # 5 binomial standard deviations: fails only if the sampler is wrong.
  np.testing.assert_array_less(np.abs(freq - expected), 5 * np.sqrt(expected * (1 - expected) / n))


def test_class_balanced_is_uniform_within_class():
  _, labels, idx = draw('class', range(400))
  few = idx.reshape(-1)[labels[idx.reshape(-1)] == 4]  # 10 images, about 4000 draws
  counts = np.bincount(few, minlength=len(labels))[np.where(labels == 4)[0]]
  assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()


# The class-balanced share a_t of epoch t (0-based) of T, as each reference computes it.
def _kang(t, total):  # classifier-balancing: lams = np.linspace(0, 1, epochs); epoch t reads lams[t]
  return np.linspace(0, 1, total)[min(t, total - 1)]


def _bag(t, total):  # BagofTricks-LT: epoch / MAX_EPOCH over epochs 1 .. MAX_EPOCH
  return min((t + 1) / total, 1.0)


def _paper(t, total):
  return min(t / total, 1.0)


@pytest.mark.parametrize('form, reference', [('kang', _kang), ('bag', _bag), ('paper', _paper)])
def test_progressive_forms_match_their_references(form, reference):
  c = np.array(COUNTS, float)
  for total in (1, 2, 10):
    for t in range(total + 2):
      a = reference(t, total)
      got = samplers.class_probabilities('progressive', COUNTS, t, total, form)
      np.testing.assert_allclose(got, (1 - a) * c / c.sum() + a * 0.2, rtol=1e-6, atol=1e-7)
  # traced epochs, as in the jitted step
  got = jax.jit(lambda e: samplers.progressive_weight(form, e, 10))(jnp.arange(12))
  np.testing.assert_allclose(got, [reference(t, 10) for t in range(12)], rtol=1e-6)


def test_progressive_hand_cases():
  # T = 10: Kang's code is instance-balanced in epoch 0 and class-balanced in epoch 9;
  # BagofTricks-LT starts at 0.1; the paper's formula never reaches 1 inside the run.
  forms = ('kang', 'bag', 'paper')
  np.testing.assert_allclose([samplers.progressive_weight(f, 0, 10) for f in forms], [0.0, 0.1, 0.0], atol=1e-7)
  np.testing.assert_allclose([samplers.progressive_weight(f, 9, 10) for f in forms], [1.0, 1.0, 0.9], atol=1e-7)
  np.testing.assert_allclose(float(samplers.progressive_weight('kang', 3, 10)), 1 / 3, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown progressive_form 'linear'"):
    samplers.progressive_weight('linear', 0, 10)


@pytest.mark.parametrize('form, share', [('kang', 1.0), ('bag', 1.0), ('paper', 0.5)])
def test_progressive_draws_follow_the_form(form, share):
  """Drawn during the last epoch of two (steps 14 to 27), on the device and on the host: class-balanced
  in the reference codes, half-way by the paper's formula."""
  c = np.array(COUNTS, float)
  s, labels, idx = draw('progressive', range(14, 28), epochs=2, progressive_form=form)
  host = np.stack([s.host_indices(Sampler.arrays(labels, 5), 3, step) for step in range(14, 28)])
  expected = (1 - share) * c / c.sum() + share * 0.2
  for drawn in (idx, host):  # the jitted sampler and the host pipeline's
    freq = np.bincount(labels[drawn.reshape(-1)], minlength=5) / drawn.size
    # 5 binomial standard deviations (0.08 at most); the forms differ by 0.2 in class 0.
    np.testing.assert_array_less(np.abs(freq - expected), 5 * np.sqrt(expected * (1 - expected) / drawn.size))


def test_unknown_sampler():
  with pytest.raises(ValueError, match='unknown sampler'):
    draw('balanced', [0])


def test_instance_drop_last_sees_distinct_images_and_no_partial_batch():
  """BBN / BagofTricks-LT loaders (drop_last=True): 659 images, batch 50 -> 13 steps an
  epoch, 650 distinct images of a fresh permutation each epoch, on the device and the host."""
  labels = np.repeat(np.arange(len(COUNTS)), COUNTS)
  s = Sampler('instance', len(labels), 50, COUNTS, 10, drop_last=True)
  assert s.steps_per_epoch == 13
  arrays = jax.tree.map(jnp.asarray, Sampler.arrays(labels, len(COUNTS)))
  fn = jax.jit(lambda step: s(arrays, jax.random.key(7), step))
  for epoch in range(2):
    flat = np.concatenate([np.asarray(fn(jnp.int32(epoch * 13 + i))) for i in range(13)])
    assert len(set(flat.tolist())) == 650
    host = np.concatenate([s.host_indices(Sampler.arrays(labels, len(COUNTS)), 0, epoch * 13 + i)
                           for i in range(13)])
    assert len(set(host.tolist())) == 650
  with pytest.raises(ValueError, match='leaves no batch'):
    Sampler('instance', 40, 50, (40,), 1, drop_last=True)


def _check_class_aware_cycles(labels, idx, counts, per_class):
  """Kang et al.'s / SSD-LT's ClassAwareSampler: rounds of len(present) * per_class images
  in which every present class takes one turn of ``per_class`` consecutive images; each
  class's images used up in a random order before any repeats (then reshuffled)."""
  present = [c for c, n in enumerate(counts) if n]
  turn = per_class * len(present)
  seq = labels[idx]
  for start in range(0, len(seq) - turn + 1, turn):
    block = seq[start:start + turn].reshape(len(present), per_class)
    assert (block == block[:, :1]).all()  # a turn: consecutive images of one class
    assert sorted(block[:, 0]) == present  # each class once a round
  # Each round in a fresh order: no fixed class order.
  rounds = {tuple(seq[s:s + turn:per_class]) for s in range(0, len(seq) - turn + 1, turn)}
  assert len(rounds) > 1
  for c in present:
    drawn = idx[seq == c]
    members = np.flatnonzero(labels == c)
    cycles = [tuple(drawn[s:s + counts[c]]) for s in range(0, len(drawn) - counts[c] + 1, counts[c])]
    for cycle in cycles:
      assert sorted(cycle) == list(members)  # one whole cycle
    if counts[c] > 2 and len(cycles) > 2:
      assert len(set(cycles)) > 1  # reshuffled between cycles
    rest = drawn[len(drawn) - len(drawn) % counts[c]:]
    assert len(set(rest)) == len(rest)  # the cycle in progress repeats nothing


# A class smaller than a turn (1 or 2 images, 4 a turn) crosses a reshuffle within it, as
# Kang's zip over one cycling iterator does.
@pytest.mark.parametrize('counts,per_class', [(COUNTS, 4), ((7, 3, 0, 2, 5), 2), ((9, 2, 1, 0, 6), 4)])
def test_class_aware_cycles_through_classes_and_images_on_device_and_host(counts, per_class):
  labels = np.repeat(np.arange(len(counts)), counts)
  labels = labels[np.random.default_rng(0).permutation(len(labels))]
  s = Sampler('class_aware', len(labels), 20, counts, 3, per_class=per_class)
  arrays = Sampler.arrays(labels, len(counts))
  device_arrays = jax.tree.map(jnp.asarray, arrays)
  fn = jax.jit(lambda step: s(device_arrays, jax.random.key(7), step))
  runs = {}
  steps = 3 * s.steps_per_epoch  # the cycles run on across epochs (Kang et al.'s sampler)
  for name, draw in (('device', lambda t: np.asarray(fn(jnp.int32(t)))), ('host', lambda t: s.host_indices(arrays, 7, t))):
    runs[name] = np.concatenate([draw(t) for t in range(steps)])
    _check_class_aware_cycles(labels, runs[name], counts, per_class)
  assert not np.array_equal(runs['device'], runs['host'])  # two streams, one law
  # A pure function of (key, step): the same batch whenever it is drawn (resumes, devices).
  np.testing.assert_array_equal(np.asarray(fn(jnp.int32(steps - 1))), runs['device'][-20:])
  np.testing.assert_array_equal(s.host_indices(arrays, 7, steps - 1), runs['host'][-20:])
  with pytest.raises(samplers.ConfigError, match='samples_per_class'):
    Sampler('class_aware', len(labels), 20, counts, 3, per_class=0)
  # The checker can fail: a fixed class order and never-reshuffled classes are refused ...
  present = [c for c, n in enumerate(counts) if n]
  fixed = [np.flatnonzero(labels == c)[(t * per_class + j) % counts[c]] for t in range(30) for c in present
           for j in range(per_class)]
  with pytest.raises(AssertionError):
    _check_class_aware_cycles(labels, np.asarray(fixed), counts, per_class)
  # ... and so is the with-replacement class sampler, which does not cycle.
  iid = Sampler('class', len(labels), 20, counts, 3)
  with pytest.raises(AssertionError):
    _check_class_aware_cycles(labels, np.concatenate([iid.host_indices(arrays, 7, t) for t in range(4)]),
                              counts, per_class)
