"""Metrics of a long-tailed evaluation, ``results.json`` and the printed table."""
from __future__ import annotations

import json
import os

import numpy as np

from ltjax.data import longtail


def classification_results(logits: np.ndarray, labels: np.ndarray, class_counts,
                           many_above: int = 100, few_below: int = 20) -> dict:
  """Top-1 / top-5 overall, top-1 per shot group (mean of per-class accuracies, as
  in Kang et al.; ``None`` for a group with no class) and per class, in percent."""
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
  return res


def write_results(path: str, results: dict) -> None:
  """Writes JSON atomically (temporary file, then rename)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, path)


def read_results(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _fmt(v):
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
  head = '| run | overall | many | medium | few | top-5 |\n|---|---|---|---|---|---|'
  lines = [head]
  for name, r in rows:
    lines.append(f'| {name} | {_fmt(r.get("top1"))} | {_fmt(r.get("many"))} | '
                 f'{_fmt(r.get("medium"))} | {_fmt(r.get("few"))} | {_fmt(r.get("top5"))} |')
  return '\n'.join(lines)
