"""Apply a trained model to new images: the top-k classes of each, by name, with their
probabilities.

  python -m ltjax.predict --workdir runs/mine photos/ more/cat.jpg
  python -m ltjax.predict --workdir runs/mine --phase teacher --top_k 3 --out preds.csv photos/

It reads everything from the workdir: the recipe and model (``config.json``), the class
names and how the dataset's test images were prepared (``dataset.json``: resize and
centre crop, or a whole-image resize), and the final checkpoint of a finished phase (by
default the recipe's last finished one: DiVE's student, SSD's student_lws), or with
``--checkpoint=best_val`` the phase's best validation epoch (``run.val_every_epochs``: the
model that ``best_val_selected`` reports). A phase of several heads predicts with its main one
(SSD's student: hard), or with ``--head`` another (``--head soft``). A PATH is an image file or a folder (searched
recursively for images). Images are batched over every
device, whatever device count trained the model; ``--out`` writes CSV (``.csv``) or JSON
(``.json``).

Exit status: 0 done; 1 an error the message explains (a workdir without a finished phase,
a path without images, an image that cannot be decoded); 2 bad flags.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string('workdir', None, 'The workdir of a training run (python -m ltjax.main).')
_PHASE = flags.DEFINE_string('phase', '', 'The phase whose model predicts (default: the recipe\'s last '
                             'finished phase: DiVE\'s student, SSD\'s student_lws).')
_HEAD = flags.DEFINE_string('head', '', 'Which head predicts, for a phase with several (SSD\'s student: hard '
                            'or soft; default: the main head, whose results the phase reports first).')
_CHECKPOINT = flags.DEFINE_enum('checkpoint', 'last', ['last', 'best_val'], 'The phase\'s last epoch, or '
                                'its best validation epoch (kept where the run validated: run.val_every_epochs).')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'How many classes to give per image (at most the class count).')
_OUT = flags.DEFINE_string('out', '', 'Also write the predictions to this .csv or .json file.')
_BATCH = flags.DEFINE_integer('batch_size', 0, 'Images per batch over all devices (0: the run\'s '
                              'run.eval_batch_size, rounded up to a multiple of the device count).')
_SKIP_BAD = flags.DEFINE_bool('skip_bad_images', False, 'Skip images that cannot be decoded (listed '
                              'on stderr and in --out) instead of stopping at the first.')
_QUIET = flags.DEFINE_bool('quiet', False, 'Print no line per image (with --out).')
_THREADS = flags.DEFINE_integer('threads', 8, 'Threads that decode and resize images.')
_CPU_DEVICES = flags.DEFINE_integer('cpu_devices', 8, 'XLA devices to split the CPU into (ignored on GPU/TPU).')
_VERBOSE = flags.DEFINE_bool('verbose', False, 'Show INFO logs and tracebacks.')
flags.mark_flags_as_required(['workdir'])


def find_images(paths) -> list[str]:
  """Image files of ``paths`` (files as given; folders searched recursively, sorted)."""
  from ltjax.data import folder
  from ltjax.errors import PredictInputError

  if not paths:
    raise PredictInputError('no image given. Fix: name image files or folders after the flags, e.g. '
                            'python -m ltjax.predict --workdir W photos/')
  found = []
  for path in paths:
    if os.path.isfile(path):
      found.append(path)
    elif os.path.isdir(path):
      inside = folder.list_images(path)
      if not inside:
        raise PredictInputError(f'the folder {path} holds no image (images end in '
                                f'{", ".join(folder.IMAGE_EXTENSIONS)}). Fix: name a folder with images.')
      found += inside
    else:
      raise PredictInputError(f'{path} does not exist. Fix: name image files or folders that exist.')
  return found


class Predictor:
  """The model of a finished phase of ``workdir``, ready to predict: ``phase``,
  ``class_names``, ``dataset`` (``data/saved.py``: ``prepare`` an image file) and
  ``logits(images)``; ``which``: its last epoch (``last``) or its best validation epoch
  (``best_val``; ``epoch`` says which)."""

  def __init__(self, workdir: str, phase: str = '', mesh=None, which: str = 'last', head: str = ''):
    import jax
    import ml_collections
    from flax import traverse_util

    from ltjax import checkpoint, config_lib, evaluate, parallel, recipes, train
    from ltjax.data import augment, saved
    from ltjax.errors import MissingCheckpointError, PredictInputError

    config_path, dataset_path = (os.path.join(workdir, f) for f in ('config.json', saved.FILE))
    if not os.path.exists(config_path):
      raise MissingCheckpointError(
          f'{workdir} is not the workdir of a training run (no config.json). Fix: give the '
          f'--workdir that python -m ltjax.main trained in.')
    if not os.path.exists(dataset_path):
      raise MissingCheckpointError(
          f'{workdir} has no {saved.FILE} (class names and image preparation; runs of ltjax before '
          f'the predict command did not write it). Fix: rerun the training command once with this '
          f'--workdir: its finished phases are skipped and it writes {saved.FILE}.')
    with open(config_path) as f:
      recorded = traverse_util.flatten_dict(json.load(f), sep='.')
    # Fields added to ltjax since that run read as the values it was trained with.
    config = ml_collections.ConfigDict(traverse_util.unflatten_dict(
        config_lib.with_legacy_values(recorded), sep='.'))
    self.dataset = saved.SavedDataset.read(dataset_path)
    phases = recipes.phases(config, self.dataset)
    names = [p.name for p in phases]
    finished = [p for p in phases if os.path.exists(os.path.join(workdir, p.name, 'results.json'))]
    if phase and phase not in names:
      raise MissingCheckpointError(f'--phase={phase} is not a phase of {config.method!r}: {names}.')
    if not finished or (phase and phase not in [p.name for p in finished]):
      named = f'phase {phase!r}' if phase else f'any phase of {config.method!r} ({", ".join(names)})'
      raise MissingCheckpointError(
          f'{workdir} holds no finished run of {named}'
          f'{"; finished: " + ", ".join(p.name for p in finished) if finished else ""}. Fix: let '
          f'the training finish (rerun its command with this --workdir to resume it), or choose a '
          f'finished phase with --phase.')
    chosen = next(p for p in finished if p.name == phase) if phase else finished[-1]
    self.phase, self.method, self.class_names = chosen.name, config.method, self.dataset.class_names
    # The phase's heads: its main one (reported first, with the phase's evaluation scale), then the others.
    heads = {chosen.main_head: (chosen.eval_output, chosen.eval_scale),
             **{name: (output, 1.0) for name, output in chosen.extra_heads}}
    if head and head not in heads:
      named = [h for h in heads if h]
      raise PredictInputError(
          f'--head={head}: phase {chosen.name!r} of {config.method!r} has '
          + (f'the heads {", ".join(named)}' if len(heads) > 1 else 'one head') + '. Fix: '
          + (f'choose one of {", ".join(named)}' if len(heads) > 1 else 'leave out --head') + '.')
    self.head, self.other_heads = head or chosen.main_head, [h for h in heads if h != (head or chosen.main_head)]
    self.which, self.epoch = which, None
    if which == 'best_val':
      directory = os.path.join(workdir, chosen.name, train.BEST_VAL)
      if not checkpoint.saved_steps(directory):
        raise MissingCheckpointError(
            f'phase {chosen.name!r} of {workdir} kept no best validation epoch ({directory} holds no '
            f'checkpoint: the run did not validate, run.val_every_epochs, or the phase trained no '
            f'epoch). Fix: leave out --checkpoint=best_val to use its last epoch.')
      best = evaluate.read_results(os.path.join(workdir, chosen.name, 'results.json')).get('best_val_selected') or {}
      if best.get('epoch') is None:
        raise MissingCheckpointError(
            f'phase {chosen.name!r} of {workdir} reports no best validation epoch (its results.json has no '
            f'best_val_selected epoch: validation was switched off before the phase finished, or it chose '
            f'a tau), so the checkpoint in {directory} is not a choice it made. Fix: leave out '
            f'--checkpoint=best_val to use its last epoch.')
      self.epoch = best['epoch']
    else:
      directory = os.path.join(workdir, chosen.name, 'checkpoints')
    variables = checkpoint.restore_variables(directory)  # host arrays
    self.mesh = mesh if mesh is not None else parallel.make_mesh(0)
    aug, scale = config.data.augment, self.dataset.pixel_scale
    normalize = lambda x: augment.normalize(x, aug.mean, aug.std, scale)
    if checkpoint.model_shapes(chosen.model, normalize(self.dataset.example_images(1))) != checkpoint.shapes(variables):
      raise MissingCheckpointError(
          f'the checkpoint in {directory} does not fit the model that {workdir}/config.json and '
          f'{saved.FILE} describe ({len(self.class_names)} classes). Fix: give the workdir as the '
          f'training run left it (its config.json, {saved.FILE} and checkpoints together).')
    self.variables = jax.device_put(variables, parallel.replicated(self.mesh))
    output, logit_scale = heads[self.head]
    self._forward = evaluate.make_forward(chosen.model, normalize, output, self.mesh, logit_scale)
    self.eval_batch_size = int(config.run.eval_batch_size)

  def batch_size(self, requested: int, num_images: int) -> int:
    """``requested`` (0: the run's evaluation batch), no larger than the images need,
    rounded up to a multiple of the device count."""
    n = self.mesh.devices.size
    size = min(requested or self.eval_batch_size, max(num_images, 1))
    return math.ceil(size / n) * n

  def logits(self, batches, num_images: int):
    """The logits of every image of ``batches`` (``{'images': uint8 [B, ...]}``, padded)."""
    from ltjax import evaluate

    return evaluate.predict(self._forward, self.variables, batches, self.mesh, num_images)


def prepared_batches(dataset, paths, batch_size: int, threads: int, skip_bad: bool, bad: list):
  """Batches of prepared images (the last padded with zeros); an image that cannot be
  decoded stops with its name, or with ``skip_bad`` is appended to ``bad`` and left zero."""
  import numpy as np

  from ltjax.errors import PredictInputError

  def prepare(path):
    try:
      return dataset.prepare(path)
    except Exception as e:  # PIL raises several types for broken files
      return e

  shape = dataset.input_shape
  with ThreadPoolExecutor(max(threads, 1)) as pool:
    for start in range(0, len(paths), batch_size):
      chunk = paths[start:start + batch_size]
      images = np.zeros((batch_size,) + shape, np.uint8)
      for i, (path, out) in enumerate(zip(chunk, pool.map(prepare, chunk))):
        if isinstance(out, Exception):
          if not skip_bad:
            raise PredictInputError(
                f'{path} cannot be decoded as an image ({type(out).__name__}: {out}). Fix: remove or '
                f'replace it, or pass --skip_bad_images to leave it out (it is listed).')
          bad.append(path)
        else:
          images[i] = out
      yield {'images': images}


def top_k(logits, class_names, k: int) -> list[list[tuple[str, float]]]:
  """The ``k`` most probable classes of each row of ``logits`` (softmax, float64), in order."""
  import numpy as np

  from ltjax import evaluate

  p = np.exp(evaluate.log_softmax(logits))
  order = np.argsort(-p, axis=-1, kind='stable')[:, :k]
  return [[(class_names[c], float(row[c])) for c in idx] for row, idx in zip(p, order)]


def format_output(path: str, rows: list[dict], meta: dict) -> str:
  """The predictions as CSV (``path, class_1, probability_1, ...``; a skipped image has an
  ``error`` and no classes) or JSON, by ``path``'s extension."""
  from ltjax.errors import PredictInputError

  if path.lower().endswith('.json'):
    return json.dumps({**meta, 'predictions': rows}, indent=1)
  if not path.lower().endswith('.csv'):
    raise PredictInputError(f'--out={path}: write .csv or .json (the extension chooses).')
  k = meta['top_k']
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(['path'] + [f'{name}_{i}' for i in range(1, k + 1) for name in ('class', 'probability')]
                  + ['error'])
  for row in rows:
    cells = [c for pair in row['top'] for c in (pair['class'], f'{pair["probability"]:.6g}')]
    writer.writerow([row['path']] + cells + [''] * (2 * k - len(cells)) + [row.get('error', '')])
  return buf.getvalue()


def run(workdir: str, paths, phase: str = '', k: int = 5, out: str = '', batch_size: int = 0,
        skip_bad: bool = False, threads: int = 8, quiet: bool = False, which: str = 'last',
        head: str = '') -> list[dict]:
  """Predicts every image of ``paths`` with the model of ``phase`` at ``which`` (``last``
  or ``best_val``: ``Predictor``), its ``head`` (default: the main one); prints a line per image (unless ``quiet``) and
  writes ``out``. Returns one dict per image: ``path``, ``top`` (class, probability)
  and, for an image skipped as unreadable, ``error``."""
  from tqdm.auto import tqdm

  from ltjax import files
  from ltjax.errors import PredictInputError

  if k < 1:
    raise PredictInputError(f'--top_k={k}: give --top_k >= 1 (how many classes to list per image).')
  if batch_size < 0:
    raise PredictInputError(f'--batch_size={batch_size}: give --batch_size >= 0 (0: the run\'s evaluation batch).')
  images = find_images(paths)
  if out:  # a bad name or a folder that cannot be written fails now, not after the work
    format_output(out, [], {'top_k': 1})
    # A probe file beside it: an existing --out stays as it is until the end.
    files.check_writable(os.path.dirname(os.path.abspath(out)), what=f'--out={out}',
                         fix='choose a path in a folder this user can write')
  predictor = Predictor(workdir, phase, which=which, head=head)
  at = f' at its best validation epoch {predictor.epoch}' if which == 'best_val' else ''
  if predictor.head:  # a phase of several heads: which one, and the others
    others = ', '.join(h or 'main' for h in predictor.other_heads)
    at += f', its {predictor.head} head' + (f' (also: {others}; --head)' if others else '')
  print(f'ltjax: predicting {len(images)} image(s) with phase {predictor.phase!r}{at} of {predictor.method} '
        f'({os.path.join(workdir, predictor.phase)})', file=sys.stderr)
  k = min(k, len(predictor.class_names))
  size = predictor.batch_size(batch_size, len(images))
  bad = []
  batches = prepared_batches(predictor.dataset, images, size, threads, skip_bad, bad)
  logits = predictor.logits(tqdm(batches, total=math.ceil(len(images) / size), desc='predicting',
                                 unit='batch', leave=False), len(images))
  skipped = set(bad)
  if len(skipped) == len(set(images)):
    raise PredictInputError(f'none of the {len(images)} image(s) can be decoded (first: {images[0]}). '
                            f'Fix: give image files (JPEG, PNG, ...).')
  rows = []
  for path, top in zip(images, top_k(logits, predictor.class_names, k)):
    if path in skipped:
      rows.append({'path': path, 'top': [], 'error': 'cannot be decoded'})
    else:
      rows.append({'path': path, 'top': [{'class': c, 'probability': p} for c, p in top]})
  if not quiet:
    for row in rows:
      text = '  '.join(f'{t["class"]} {t["probability"]:.3f}' for t in row['top']) or row['error']
      print(f'{row["path"]}: {text}')
  for path in bad:
    print(f'ltjax: skipped {path}: cannot be decoded', file=sys.stderr)
  if out:
    meta = {'workdir': os.path.abspath(workdir), 'phase': predictor.phase, 'method': predictor.method,
            'checkpoint': which, **({'epoch': predictor.epoch} if which == 'best_val' else {}),
            **({'head': predictor.head} if predictor.head else {}),
            'top_k': k, 'class_names': predictor.class_names, 'skipped': len(bad)}
    files.write_atomic(out, format_output(out, rows, meta))
    print(f'{len(rows)} prediction(s) of phase {predictor.phase!r} written to {out}', file=sys.stderr)
  return rows


def main(argv):
  if not _VERBOSE.value:
    logging.set_verbosity(logging.WARNING)
  import jax

  jax.config.update('jax_num_cpu_devices', _CPU_DEVICES.value)
  from ltjax.errors import LtjaxError

  try:
    run(_WORKDIR.value, argv[1:], _PHASE.value, _TOP_K.value, _OUT.value, _BATCH.value,
        _SKIP_BAD.value, _THREADS.value, _QUIET.value, _CHECKPOINT.value, _HEAD.value)
  except LtjaxError as e:
    if _VERBOSE.value:
      raise
    sys.stderr.write(f'ltjax: error: {e}\n')
    sys.exit(1)


def _parse_flags(argv):
  """Bad flags: one line and exit status 2, as ``ltjax.main``."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write(f'ltjax: error: {e}\nPass --helpshort to see the flags.\n')
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
