"""One Markdown table from the results of several runs:

  python -m ltjax.report runs/ce runs/bsce runs/crt [--out runs/results.md]

A row per phase of each run (a two-stage run such as crt gives its CE row too):
method / phase, dataset, imbalance factor, seed, top-1 overall / many / medium / few,
top-5 (percent; '-' for a shot group without classes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ltjax import evaluate


def _fmt(v):
  return '-' if v is None else f'{v:.2f}'


def rows_of(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{workdir} holds no results.json: is it a finished ltjax run?')
  with open(path) as f:
    summary = json.load(f)
  results = {}
  for phase in summary.get('phase_names') or summary.get('phases', {summary.get('phase', '?'): summary}):
    with open(os.path.join(workdir, phase, 'results.json')) as f:
      results[phase] = json.load(f)
  rows = []
  for label, r in evaluate.table_rows(results):
    method = summary.get('method')
    rows.append({**r, 'run': f'{method}/{label}' if method != label else label,
                 'dataset': summary.get('dataset'), 'imbalance_factor': summary.get('imbalance_factor'),
                 'seed': summary.get('seed')})
  return rows


def table(workdirs: list[str]) -> str:
  lines = ['| run | dataset | IF | seed | overall | many | medium | few | top-5 |',
           '|---|---|---|---|---|---|---|---|---|']
  for w in workdirs:
    for r in rows_of(w):
      lines.append(f'| {r["run"]} | {r.get("dataset")} | {r.get("imbalance_factor", 0):g} | {r.get("seed")} | '
                   f'{_fmt(r.get("top1"))} | {_fmt(r.get("many"))} | {_fmt(r.get("medium"))} | '
                   f'{_fmt(r.get("few"))} | {_fmt(r.get("top5"))} |')
  return '\n'.join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('workdirs', nargs='+')
  ap.add_argument('--out', help='also write the table to this Markdown file')
  args = ap.parse_args(argv)
  try:
    text = table(args.workdirs)
  except FileNotFoundError as e:
    sys.exit(f'ltjax.report: error: {e}')
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  main()
