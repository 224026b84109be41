"""Evaluation: the jitted forward pass over the test set (``make_forward``, ``predict``
over a dataset's ``test_batches``), the metrics of a long-tailed evaluation, ``results.json`` and the
printed table."""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from ltjax import files, parallel
from ltjax.data import longtail


def make_forward(model, normalize_fn, output: str = 'logits', mesh=None, scale: float = 1.0):
  """The jitted evaluation forward ``(variables, uint8 images) -> scale * outputs[output]``
  (``scale``: a phase's ``eval_scale``), its outputs replicated (with ``mesh``) so that
  every process can read all of them. Make it once per phase: each new function object
  would compile again."""

  def forward(variables, x):
    out = model.apply(variables, normalize_fn(x), train=False)[output]
    return out if scale == 1.0 else out * scale

  return jax.jit(forward, out_shardings=None if mesh is None else parallel.replicated(mesh))


def array_batches(images: np.ndarray, global_batch: int, rows: slice | None = None):
  """This process's ``rows`` (default: all) of every global batch of ``images``, the last
  one padded with zeros to the static shape: what ``predict`` reads from arrays, as
  ``host.test_batches`` does from TFDS."""
  rows = rows or slice(0, global_batch)
  for start in range(0, len(images), global_batch):
    chunk = images[start:start + global_batch]
    if len(chunk) < global_batch:
      chunk = np.concatenate([chunk, np.zeros((global_batch - len(chunk),) + chunk.shape[1:], chunk.dtype)])
    yield {'images': chunk[rows]}


def predict(forward, variables, batches, mesh, num_examples: int) -> np.ndarray:
  """Outputs of ``forward`` for every example: ``batches`` yields this process's rows of
  each global batch (a dataset's ``test_batches``, ``array_batches``), joined into global
  arrays sharded over the mesh; the host reads the results once, at the end, and keeps
  the first ``num_examples`` (the padding dropped), in dataset order."""
  outs = [forward(variables, parallel.global_batch(b, mesh)['images']) for b in batches]
  return np.concatenate([np.asarray(o) for o in jax.device_get(outs)])[:num_examples]


ECE_BINS = 15
# The accuracies a summary of an evaluation holds (logs, tables, results.json's phases).
SUMMARY = ('top1', 'top5', 'many', 'medium', 'few')


def summary(results: dict) -> dict:
  """The ``SUMMARY`` accuracies of an evaluation's results, those it has (a shot group
  without classes has none)."""
  return {k: results[k] for k in SUMMARY if results.get(k) is not None}


def log_softmax(logits) -> np.ndarray:
  """The log-softmax of the last axis, in float64 on the host (metrics, predictions)."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def calibration(logits: np.ndarray, labels: np.ndarray, num_bins: int = ECE_BINS) -> dict:
  """Expected calibration error (Guo et al.) of the softmax's top-1 confidence over
  ``num_bins`` equal-width bins of (0, 1]: ``sum_b n_b / N * |acc_b - conf_b|``, in
  percent; the negative log-likelihood of the labels (nats, mean); and the bins
  (mean confidence, accuracy, count) for a reliability diagram."""
  logp = log_softmax(logits)
  labels = np.asarray(labels)
  conf = np.exp(logp.max(-1))
  correct = logp.argmax(-1) == labels
  # Bin b holds confidences in (b / B, (b + 1) / B]; a confidence of exactly 0 cannot occur.
  bins = np.clip(np.ceil(conf * num_bins).astype(int) - 1, 0, num_bins - 1)
  count = np.bincount(bins, minlength=num_bins)
  conf_sum = np.bincount(bins, weights=conf, minlength=num_bins)
  acc_sum = np.bincount(bins, weights=correct.astype(np.float64), minlength=num_bins)
  nonempty = count > 0
  mean_conf = np.where(nonempty, conf_sum / np.maximum(count, 1), np.nan)
  mean_acc = np.where(nonempty, acc_sum / np.maximum(count, 1), np.nan)
  ece = float(np.sum(np.abs(acc_sum - conf_sum)) / len(labels))
  tolist = lambda a: [None if np.isnan(v) else float(v) for v in a]
  return {'ece': 100 * ece, 'nll': float(-logp[np.arange(len(labels)), labels].mean()),
          'reliability': {'confidence': tolist(mean_conf), 'accuracy': tolist(mean_acc),
                          'count': [int(c) for c in count]}}


def classification_results(logits: np.ndarray, labels: np.ndarray, class_counts,
                           many_above: int = 100, few_below: int = 20) -> dict:
  """Top-1 / top-5 overall, top-1 per shot group (mean of per-class accuracies, as
  in Kang et al.; ``None`` for a group with no class) and per class, in percent;
  the calibration of the softmax (``ece`` in percent, ``nll``, ``reliability`` bins)."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  counts = np.asarray(class_counts)
  num_classes = logits.shape[1]
  pred = logits.argmax(-1)
  correct = pred == labels
  k = min(5, num_classes)
  topk = np.argsort(-logits, axis=-1, kind='stable')[:, :k]
  correct5 = (topk == labels[:, None]).any(-1)
  per_class = []
  for c in range(num_classes):
    mask = labels == c
    per_class.append(float(100 * correct[mask].mean()) if mask.any() else None)
  groups = longtail.shot_groups(counts, many_above, few_below)
  res = {'top1': float(100 * correct.mean()), 'top5': float(100 * correct5.mean())}
  for name, classes in groups.items():
    accs = [per_class[c] for c in classes if per_class[c] is not None]
    res[name] = float(np.mean(accs)) if accs else None
  res['num_classes_per_group'] = {name: int(len(c)) for name, c in groups.items()}
  res['per_class'] = per_class
  res['class_counts'] = [int(c) for c in counts]
  res['num_test'] = int(len(labels))
  res['shot_groups'] = {'many_above': many_above, 'few_below': few_below}
  res.update(calibration(logits, labels))
  return res


def logged_top1(metrics_path: str, split: str) -> dict[int, float]:
  """``{epoch: top1}`` of the evaluations of ``split`` (``test``, ``val``) that a phase
  logged in ``metrics.jsonl`` (a resumed run's repeated epochs count once, the latest)."""
  by_epoch = {}
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill or a full disk
          continue
        if f'{split}/epoch' in record and f'{split}/top1' in record:
          by_epoch[int(record[f'{split}/epoch'])] = float(record[f'{split}/top1'])
  return by_epoch


def best_test_epoch(metrics_path: str, last_top1: float, last_epoch: int) -> dict:
  """The epoch of highest test top-1 among the periodic evaluations that the phase
  logged (``test/epoch``, ``test/top1`` in ``metrics.jsonl``; a resumed run's repeated
  epochs count once) and the last epoch. Chosen on the test set: only for comparison
  with references that report their best test epoch; ltjax's number is the last epoch."""
  by_epoch = logged_top1(metrics_path, 'test')
  by_epoch[int(last_epoch)] = float(last_top1)
  best = max(sorted(by_epoch), key=lambda e: by_epoch[e])  # the earliest of equal ones
  return {'epoch': best, 'top1': by_epoch[best], 'evaluated_epochs': len(by_epoch),
          'selected_on': 'test set (for like-for-like comparisons only; the result is top1, the last epoch)'}


def write_results(path: str, results: dict) -> None:
  """Writes JSON atomically (``files.write_atomic``)."""
  files.write_atomic(path, json.dumps(results, indent=1))


def read_results(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def fmt(v):
  return '-' if v is None else f'{v:.2f}'


def table_rows(results: dict) -> list[tuple[str, dict]]:
  """(label, results) per phase, and per extra head of a phase with several
  (``student (hard)``, ``student (soft)``)."""
  rows = []
  for name, r in results.items():
    rows.append((f'{name} ({r["main_head"]})' if r.get('main_head') else name, r))
    rows.extend((f'{name} ({head})', hr) for head, hr in r.get('heads', {}).items())
  return rows


def format_table(rows: list[tuple[str, dict]]) -> str:
  """A Markdown table: one row per (name, results)."""
  head = '| run | overall | many | medium | few | top-5 | ECE |\n|---|---|---|---|---|---|---|'
  lines = [head]
  for name, r in rows:
    lines.append(f'| {name} | {fmt(r.get("top1"))} | {fmt(r.get("many"))} | '
                 f'{fmt(r.get("medium"))} | {fmt(r.get("few"))} | {fmt(r.get("top5"))} | '
                 f'{fmt(r.get("ece"))} |')
  return '\n'.join(lines)
