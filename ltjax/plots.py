"""The two figures long-tailed papers are read through, from ``results.json`` rows:
per-class accuracy against class size, and reliability diagrams.

matplotlib with the non-interactive Agg backend; lines differ by style and marker
as well as colour, so the figures read in black and white.
"""
from __future__ import annotations

import itertools
import math
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLES = ('-', '--', ':', '-.')
MARKERS = ('o', 's', '^', 'v', 'D', 'x', '+', '*')


def _styles():
  return itertools.cycle(zip(itertools.cycle(STYLES), MARKERS * 4))


def per_class_figure(runs: list[tuple[str, dict]], path: str) -> str | None:
  """Top-1 of each class against its number of training images (log scale), one line
  per run (``(label, results)``; ``per_class`` averaged over seeds by the caller),
  shot-group boundaries dashed. Returns the path, or None when no run has per-class
  results."""
  runs = [(label, r) for label, r in runs if r.get('per_class') and r.get('class_counts')]
  if not runs:
    return None
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  lowest = 100.0
  for (label, r), (style, marker) in zip(runs, _styles()):
    counts = np.asarray(r['class_counts'], float)
    acc = np.asarray([np.nan if a is None else a for a in r['per_class']], float)
    order = np.argsort(-counts, kind='stable')
    if np.isfinite(acc).any():
      lowest = min(lowest, float(np.nanmin(acc)))
    ax.plot(counts[order], acc[order], linestyle=style, marker=marker, markersize=4, linewidth=1.2,
            label=label)
  ax.set_xscale('log')
  groups = runs[0][1].get('shot_groups', {'many_above': 100, 'few_below': 20})
  lo = min(min(r['class_counts']) for _, r in runs)
  hi = max(max(r['class_counts']) for _, r in runs)
  bottom = max(0.0, 10 * math.floor((lowest - 5) / 10))
  # Head classes on the left (x inverted): many | medium | few from left to right.
  for edge, text in ((groups['many_above'], 'many | medium'), (groups['few_below'], 'medium | few')):
    if lo <= edge <= hi:
      ax.axvline(edge, color='0.4', linestyle=(0, (4, 3)), linewidth=0.9)
      ax.text(edge, 101, f'{text}', va='bottom', ha='center', fontsize=7, color='0.3')
  ax.invert_xaxis()
  ax.set_xlabel('training images of the class (log scale)')
  ax.set_ylabel('top-1 accuracy of the class (%)')
  ax.set_ylim(bottom, 100.5)
  ax.grid(True, which='major', color='0.85', linewidth=0.6)
  ax.legend(fontsize=7, loc='lower left', frameon=True)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def reliability_figure(runs: list[tuple[str, dict]], path: str) -> str | None:
  """One reliability diagram per run: accuracy of each confidence bin (bars) against
  the diagonal of perfect calibration, ECE in the title. None without bins."""
  runs = [(label, r) for label, r in runs if r.get('reliability')]
  if not runs:
    return None
  cols = min(3, len(runs))
  rows = math.ceil(len(runs) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), dpi=120, squeeze=False)
  for ax, (label, r) in zip(axes.flat, runs):
    rel = r['reliability']
    n = len(rel['count'])
    edges = np.linspace(0, 1, n + 1)
    acc = np.asarray([0.0 if a is None else a for a in rel['accuracy']])
    ax.bar(edges[:-1], acc, width=1 / n, align='edge', color='0.55', edgecolor='black', linewidth=0.6,
           label='accuracy')
    ax.plot([0, 1], [0, 1], color='black', linestyle='--', linewidth=1, label='perfect calibration')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel('confidence (top-1 softmax)')
    ax.set_ylabel('accuracy')
    ece = r.get('ece')
    ax.set_title(f'{label}\nECE {ece:.2f}%' if ece is not None else label, fontsize=8)
  for ax in list(axes.flat)[len(runs):]:
    ax.axis('off')
  axes.flat[0].legend(fontsize=7, loc='upper left')
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def write_figures(runs: list[tuple[str, dict]], directory: str) -> dict:
  """Both figures into ``directory``; returns ``{name: path}`` of those written."""
  os.makedirs(directory, exist_ok=True)
  out = {'per_class': per_class_figure(runs, os.path.join(directory, 'per_class.png')),
         'reliability': reliability_figure(runs, os.path.join(directory, 'reliability.png'))}
  return {k: v for k, v in out.items() if v}
