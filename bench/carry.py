"""The decoded CIFAR-LT caches, packed small enough to travel to a lent GPU machine, and
unpacked there into the very arrays ltjax caches here (checked by SHA-256).

A lent machine gets the working tree and at most 64 MiB of carried paths, and no
``../shared``. ltjax's own cache (``--config.run.cache_dir``, one ``.npz`` per imbalance
factor, zlib) is 60 MiB at IF 100 and 163 MiB at IF 1: zlib saves only 10% on these
JPEG-re-encoded pixels. Here the images are stored as a lossless prediction residual
(green, red - green, blue - green; each pixel of a plane minus left + upper - upper-left,
lossless JPEG's predictor 4, i.e. a 2-D difference that two cumulative sums undo) under
LZMA: IF 100 packs to 30.8 MiB (47% of its 65.8 MiB of arrays); at that ratio IF 10 is
about 40 MiB and IF 1 about 79. Packed together, a long-tailed cache takes its images
from the larger one whose training images and test split hold all of its own (IF 1's
holds those of every factor): it carries only its positions there, and unpacks after it
(IF 100 beside IF 1: 6 KB more). A cache larger than ``--part-mib`` is split into parts
that go to separate folders, ``OUT/1``, ``OUT/2``, ...: each folder is carried by its own
call to the warm machine (a carried folder stays there for the next call while the
machine is held), and ``unpack`` joins them once every part is there.

What comes back: ``send-back`` writes the rows' results and logs, and the unfinished rows'
workdirs (their phases' newest checkpoints), into the machine's $OUT; ``receive`` unpacks
them here, into results/ and runs/; ``workdirs`` packs the unfinished rows again (newest
checkpoints only) for the next machine, where gpu_reproduce.sh unpacks them.

Here:   python bench/carry.py pack --data-dir ../shared/tfds --imb 100 --out .carry
There:  python3 bench/carry.py unpack .carry --into .device_cache
        python3 bench/carry.py send-back --out $OUT
Here:   python bench/carry.py receive FILES_AT
        python bench/carry.py workdirs --out .carry/workdirs.tgz
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import lzma
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from ltjax.files import write_atomic  # noqa: E402  (no JAX: this runs before any training)
from ltjax.data.tfds_io import save_npz  # noqa: E402

MAX_FILES_BACK = 8  # a lent machine sends back 8 files of at most 16 MiB
FORMAT = 'ltjax-carry-1'
IMAGE_CODEC = 'gcc-gradient-planar'  # colour decorrelation, 2-D difference, planes first
LZMA_PRESET = 9 | lzma.PRESET_EXTREME
BASE_POSITIONS = '_base_positions'  # a derived cache's rows of its base's training arrays


# ---------------------------------------------------------------- the image codec
def encode_images(x: np.ndarray) -> np.ndarray:
  """(N, H, W, 3) uint8 -> (3, N, H, W) uint8 residual, lossless (arithmetic mod 256)."""
  g = x[..., 1]
  planes = np.stack([g, x[..., 0] - g, x[..., 2] - g])  # uint8: wraps mod 256
  rows = planes.copy()
  rows[..., 1:, :] = planes[..., 1:, :] - planes[..., :-1, :]
  res = rows.copy()
  res[..., :, 1:] = rows[..., :, 1:] - rows[..., :, :-1]
  return res


def decode_images(res: np.ndarray) -> np.ndarray:
  """The inverse of ``encode_images``."""
  planes = np.cumsum(np.cumsum(res, axis=-1, dtype=np.uint8), axis=-2, dtype=np.uint8)
  g = planes[0]
  return np.stack([planes[1] + g, g, planes[2] + g], axis=-1)


def is_image_array(a: np.ndarray) -> bool:
  return a.dtype == np.uint8 and a.ndim == 4 and a.shape[-1] == 3


def digest(a: np.ndarray) -> str:
  h = hashlib.sha256(f'{a.dtype.str}{a.shape}'.encode())
  h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


# ---------------------------------------------------------------- pack
def pack_arrays(arrays: dict[str, np.ndarray], derived: tuple[np.ndarray, dict] | None = None
                ) -> tuple[bytes, dict]:
  """One LZMA blob of an ``.npz`` of the encoded arrays, and what each array was;
  ``derived`` (``derive``'s answer) leaves out what the base cache holds."""
  pos, how = derived if derived is not None else (None, {})
  encoded, meta = {}, {}
  if pos is not None:
    encoded[BASE_POSITIONS] = pos.astype(np.int64)
  for key, a in arrays.items():
    codec = how.get(key) or (IMAGE_CODEC if is_image_array(a) else 'raw')
    if codec not in ('same', 'take'):
      encoded[key] = encode_images(a) if codec == IMAGE_CODEC else a
    meta[key] = {'codec': codec, 'dtype': a.dtype.str, 'shape': list(a.shape), 'sha256': digest(a)}
  buf = io.BytesIO()
  np.savez(buf, **encoded)
  return lzma.compress(buf.getvalue(), preset=LZMA_PRESET), meta


def base_positions(index: np.ndarray, base_index: np.ndarray) -> np.ndarray | None:
  """Where each of ``index`` sits in ``base_index``, or None if one is not there."""
  order = np.argsort(base_index, kind='stable')
  at = np.searchsorted(base_index[order], index)
  if np.any(at >= len(base_index)):
    return None
  pos = order[at]
  return pos if np.array_equal(base_index[pos], index) else None


def derive(arrays: dict[str, np.ndarray], base: dict[str, np.ndarray]) -> tuple[np.ndarray, dict] | None:
  """How a long-tailed cache is taken from a larger one (IF 1's holds every training
  image of IF 100's, and the same test split): the positions of its training images in
  the base, and for each array that needs no bytes of its own, 'same' (the base's array)
  or 'take' (the base's rows at those positions). None unless the images are both."""
  if 'train_index' not in arrays or 'train_index' not in base:
    return None
  pos = base_positions(arrays['train_index'], base['train_index'])
  if pos is None:
    return None
  n, nb = len(pos), len(base['train_index'])
  how = {}
  for key, a in arrays.items():
    b = base.get(key)
    if b is None:
      continue
    if a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b):
      how[key] = 'same'
    elif a.ndim and b.ndim and a.shape[0] == n and b.shape[0] == nb and a.dtype == b.dtype and np.array_equal(a, b[pos]):
      how[key] = 'take'
  if how.get('train_images') != 'take' or how.get('test_images') != 'same':
    return None
  return pos, how


def unpack_arrays(blob: bytes, meta: dict, base: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(lzma.decompress(blob)), allow_pickle=False) as z:
    out = {}
    for key, m in meta.items():
      if m['codec'] == 'same':
        a = base[key]
      elif m['codec'] == 'take':
        a = base[key][z[BASE_POSITIONS]]
      else:
        a = decode_images(z[key]) if m['codec'] == IMAGE_CODEC else z[key]
      if a.dtype.str != m['dtype'] or list(a.shape) != m['shape'] or digest(a) != m['sha256']:
        raise SystemExit(f'carry: error: {key} does not unpack to the array that was packed '
                         f'(dtype/shape/SHA-256 differ); pack it again here')
      out[key] = a
  return out


def pack(npz_paths: list[str], out: str, part_mib: float) -> list[str]:
  """Writes each cache as ``NAME.carry.json`` + ``NAME.partK`` files into ``out/1``,
  ``out/2``, ...: a folder holds at most ``part_mib`` MiB. Returns the folders."""
  limit = int(part_mib * 2**20)
  old = glob.glob(os.path.join(out, '[0-9]*'))
  if old:
    raise SystemExit(f'carry: error: {out} already holds packed folders ({", ".join(sorted(old))}); '
                     f'remove {out} first (the caches themselves are not in it)')
  folders: list[tuple[str, int]] = []  # (folder, bytes in it)

  def place(size: int) -> str:
    if folders and folders[-1][1] + size <= limit:
      folder, used = folders[-1]
      folders[-1] = (folder, used + size)
      return folder
    folder = os.path.join(out, str(len(folders) + 1))
    os.makedirs(folder, exist_ok=True)
    folders.append((folder, size))
    return folder

  def load(path):
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}

  def train_size(path):
    with np.load(path, allow_pickle=False) as z:
      return len(z['train_labels']) if 'train_labels' in z.files else 0

  bases: dict[str, tuple[str, dict]] = {}  # name -> (npz file name, arrays)
  for path in sorted(npz_paths, key=train_size, reverse=True):  # the largest first: the bases
    name = os.path.basename(path)[:-len('.npz')]
    t0 = time.time()
    arrays = load(path)
    derived, base_name = None, None
    for base_name, (_, base) in bases.items():
      derived = derive(arrays, base)
      if derived is not None:
        break
    blob, meta = pack_arrays(arrays, derived)
    if derived is None:
      base_name = None
      bases[name] = (os.path.basename(path), arrays)
    raw = sum(a.nbytes for a in arrays.values())
    step = limit - 4096  # room for the manifest beside the first part
    chunks = [blob[i:i + step] for i in range(0, len(blob), step)]
    parts = []
    for k, chunk in enumerate(chunks, 1):
      folder = place(len(chunk) + (4096 if k == 1 else 0))
      part = os.path.join(folder, f'{name}.part{k}')
      write_atomic(part, chunk)
      parts.append({'file': os.path.basename(part), 'folder': os.path.basename(folder), 'bytes': len(chunk),
                    'sha256': hashlib.sha256(chunk).hexdigest()})
    manifest = {'format': FORMAT, 'name': name, 'npz': os.path.basename(path), 'arrays': meta, 'parts': parts}
    if base_name is not None:
      manifest['base'] = {'name': base_name, 'npz': bases[base_name][0]}
    first = os.path.join(out, parts[0]['folder'])
    write_atomic(os.path.join(first, f'{name}.carry.json'), json.dumps(manifest, indent=1))
    print(f'{path}: {raw / 2**20:.1f} MiB of arrays -> {len(blob) / 2**20:.1f} MiB in {len(parts)} part(s) '
          f'({", ".join(p["folder"] for p in parts)})'
          + (f', its images taken from {base_name}' if base_name else '') + f', {time.time() - t0:.0f} s', flush=True)
  return [f for f, _ in folders]


# ---------------------------------------------------------------- unpack
def unpack(root: str, into: str) -> list[str]:
  """Every cache packed under ``root`` (any folder depth) whose parts are all there, as
  ``into/NAME.npz``; a cache with a part missing is an error that names the part."""
  manifests = sorted(glob.glob(os.path.join(root, '**', '*.carry.json'), recursive=True))
  if not manifests:
    raise SystemExit(f'carry: error: no packed cache (*.carry.json) under {root}; pack one here with '
                     f'python bench/carry.py pack --data-dir ../shared/tfds --imb 100 --out {root}')
  found = {os.path.basename(p): p for p in glob.glob(os.path.join(root, '**', '*.part*'), recursive=True)}
  loaded = []
  for path in manifests:
    with open(path) as f:
      m = json.load(f)
    if m.get('format') != FORMAT:
      raise SystemExit(f'carry: error: {path} is not a {FORMAT} manifest')
    loaded.append(m)
  names = {m['name'] for m in loaded}
  for m in loaded:
    if 'base' in m and m['base']['name'] not in names and not os.path.exists(os.path.join(into, m['base']['npz'])):
      raise SystemExit(f'carry: error: {m["name"]} takes its images from {m["base"]["name"]}, which was not '
                       f'carried (no {m["base"]["name"]}.carry.json): carry the folder that holds it too')
  written = []
  for m in sorted(loaded, key=lambda m: 'base' in m):  # the bases first
    target = os.path.join(into, m['npz'])
    if os.path.exists(target):
      print(f'{target}: there already', flush=True)
      written.append(target)
      continue
    missing = [p for p in m['parts'] if p['file'] not in found]
    if missing:
      raise SystemExit(f'carry: error: {m["name"]} lacks ' + ', '.join(
          f'{p["file"]} (packed into {p["folder"]}/)' for p in missing) + ': carry those folders too')
    chunks = []
    for p in m['parts']:
      with open(found[p['file']], 'rb') as f:
        chunk = f.read()
      if hashlib.sha256(chunk).hexdigest() != p['sha256']:
        raise SystemExit(f'carry: error: {found[p["file"]]} is damaged (SHA-256 differs); pack it again')
      chunks.append(chunk)
    t0 = time.time()
    base = None
    if 'base' in m:
      with np.load(os.path.join(into, m['base']['npz']), allow_pickle=False) as z:
        base = {k: z[k] for k in z.files}
    arrays = unpack_arrays(b''.join(chunks), m['arrays'], base)
    save_npz(target, **arrays)  # atomic, uncompressed: fast to read there
    print(f'{target}: unpacked and checked ({time.time() - t0:.1f} s)', flush=True)
    written.append(target)
  return written


# ---------------------------------------------------------------- rows that go on elsewhere
def _newest_checkpoints_only(root: str):
  """A tarfile filter that keeps, of each phase's ``checkpoints/``, only its newest step
  (the one a resume restores; a finished phase's final one, which later phases read) and
  the manager's own files, never an unfinished write or a damaged step set aside."""
  keep: dict[str, str] = {}
  for ckpts in glob.glob(os.path.join(root, '**', 'checkpoints'), recursive=True):
    steps = [d for d in os.listdir(ckpts) if d.isdigit()]
    keep[os.path.normpath(ckpts).lstrip(os.sep)] = max(steps, key=int) if steps else ''  # as tarfile names it

  def keep_member(info):
    parent, name = os.path.split(os.path.normpath(info.name))
    if parent in keep and name[:1].isdigit() and name != keep[parent]:
      return None  # an older step, STEP.damaged, STEP.orbax-checkpoint-tmp-...
    return info
  return keep_member


def unfinished_rows(workroot: str, results: str) -> list[str]:
  """The rows with a workdir under ``workroot`` and no ``results/ROW.json``, and the
  finished rows whose CE phase a row not yet finished refits on (``Row.base``)."""
  if not os.path.isdir(workroot):
    return []
  from ltjax import reproduction

  here = {d for d in os.listdir(workroot) if os.path.isdir(os.path.join(workroot, d))}
  unfinished = {d for d in here if not os.path.exists(os.path.join(results, f'{d}.json'))}
  bases = {r.base for r in reproduction.all_rows()
           if r.base and not os.path.exists(os.path.join(results, f'{r.name}.json'))}
  return sorted(unfinished | (bases & here))


def pack_workdirs(workroot: str, results: str, path: str, patterns: str | None = None) -> list[str]:
  """One ``.tgz`` of every unfinished row's workdir (``unfinished_rows``: with the base
  rows still needed), each phase with its newest checkpoint alone: what a row needs to
  resume, or start, on another machine. ``patterns`` (reproduce.py's ``--rows``, shell
  patterns separated by commas or spaces) keeps only the rows the next call runs, and the bases they refit on: the
  others stay here for a later call. Returns the rows in it."""
  import tarfile

  rows = unfinished_rows(workroot, results)
  if patterns:
    from ltjax import reproduction

    chosen = reproduction.matching(reproduction.all_rows(), reproduction.row_patterns(patterns))
    wanted = {r.name for r in chosen} | {r.base for r in chosen if r.base}
    rows = [r for r in rows if r in wanted]
  if rows:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tarfile.open(path, 'w:gz') as tar:
      for row in rows:
        tar.add(os.path.join(workroot, row), filter=_newest_checkpoints_only(os.path.join(workroot, row)))
  return rows


def send_back(workroot: str, results: str, out: str, max_mib: float) -> list[str]:
  """There, at the end: what a later session needs, as files in ``out`` (a lent machine
  sends back 8 files of at most 16 MiB): ``results.tgz`` (every row's JSON; each row's
  attempts, log, config and per-phase results and metrics; ``WORKROOT/gpu.csv``, the
  GPU's load, if there) and ``workdirs.tgz`` (``pack_workdirs``), in pieces
  ``workdirs.tgz.1of3``, ... where it is over ``max_mib``. ``receive`` unpacks them here."""
  import tarfile

  os.makedirs(out, exist_ok=True)
  rows = sorted(d for d in os.listdir(workroot) if os.path.isdir(os.path.join(workroot, d))) \
      if os.path.isdir(workroot) else []
  written = [os.path.join(out, 'results.tgz')]
  with tarfile.open(written[0], 'w:gz') as tar:
    for f in sorted(glob.glob(os.path.join(results, '*.json'))) + glob.glob(os.path.join(workroot, 'gpu.csv')):
      tar.add(f)
    for row in rows:
      for pattern in ('reproduce.json', 'reproduce.log', 'config.json', 'dataset.json', '*/results.json',
                      '*/metrics.jsonl'):
        for f in sorted(glob.glob(os.path.join(workroot, row, pattern))):
          tar.add(f)
  path = os.path.join(out, 'workdirs.tgz')
  unfinished = pack_workdirs(workroot, results, path)
  if unfinished:
    pieces = _split(path, int(max_mib * 2**20))
    size = sum(map(os.path.getsize, pieces)) / 2**20
    print(f'{path}: {", ".join(unfinished)}: {size:.1f} MiB'
          + (f' in {len(pieces)} pieces' if len(pieces) > 1 else ''), flush=True)
    written += pieces
  if len(written) > MAX_FILES_BACK - 1:  # and log.txt
    print(f'carry: warning: {len(written)} files and log.txt: a lent machine sends back {MAX_FILES_BACK}',
          file=sys.stderr, flush=True)
  return written



def _split(path: str, limit: int) -> list[str]:
  """``path`` itself, or ``path.1ofN``, ``path.2ofN``, ... of at most ``limit`` bytes each."""
  size = os.path.getsize(path)
  if size <= limit:
    return [path]
  count = -(-size // limit)
  pieces = []
  with open(path, 'rb') as f:
    for k in range(1, count + 1):
      pieces.append(f'{path}.{k}of{count}')
      write_atomic(pieces[-1], f.read(limit))
  os.remove(path)
  return pieces


def _join(files_at: str, name: str, into: str) -> str | None:
  """``files_at/name``, or its pieces joined into ``into/name`` (all of them, or an error)."""
  whole = os.path.join(files_at, name)
  if os.path.exists(whole):
    return whole
  pieces = glob.glob(f'{whole}.*of*')
  if not pieces:
    return None
  counts = {p.rsplit('of', 1)[1] for p in pieces}
  count = int(counts.pop()) if len(counts) == 1 else 0
  want = [f'{whole}.{k}of{count}' for k in range(1, count + 1)]
  if not count or sorted(pieces) != sorted(want):
    raise SystemExit(f'carry: error: {name} came back incomplete: {sorted(map(os.path.basename, pieces))}')
  joined = os.path.join(into, name)
  os.makedirs(into, exist_ok=True)
  with open(joined, 'wb') as out:
    for p in want:
      with open(p, 'rb') as f:
        out.write(f.read())
  return joined


def _safe_members(tar, archive: str):
  """Every member, if each is a plain file or folder under results/ or runs/ (no link, no
  absolute path, no ``..``); else an error."""
  members = tar.getmembers()
  for m in members:
    parts = m.name.split('/')
    if (not (m.isfile() or m.isdir()) or m.name.startswith('/') or '..' in parts
        or parts[0] not in ('results', 'runs')):
      raise SystemExit(f'carry: error: {archive} holds {m.name!r}, which is not a plain file or folder '
                       f'under results/ or runs/: nothing unpacked from it')
  return members


def receive(files_at: str, repo: str = '.') -> list[str]:
  """Here, after the call: ``results.tgz`` and ``workdirs.tgz`` (or its pieces) from a lent
  machine's $OUT, unpacked into the repository: results/, and runs/ (the unfinished rows'
  workdirs, to carry to the next machine; nothing here is removed)."""
  import tarfile

  done = []
  for name in ('results.tgz', 'workdirs.tgz'):
    archive = _join(files_at, name, os.path.join(repo, '.carry', 'received'))
    if archive is None:
      if name == 'results.tgz':
        raise SystemExit(f'carry: error: no results.tgz in {files_at}')
      continue
    with tarfile.open(archive) as tar:
      tar.extractall(repo, members=_safe_members(tar, archive), filter='data')
    print(f'{archive}: unpacked into {os.path.abspath(repo)}', flush=True)
    done.append(archive)
  return done


# ---------------------------------------------------------------- the caches themselves
def build_caches(data_dir: str, imbs: list[float], cache_dir: str, dataset: str = 'cifar10') -> list[str]:
  """ltjax's own cache of each imbalance factor (made from TFDS if not there yet)."""
  from ltjax.data import cifar, registry

  spec = registry.get(dataset)
  paths = []
  for imb in imbs:
    cifar.load_cifar_lt(spec, imb, data_dir=data_dir, cache_dir=cache_dir)
    paths.append(cifar.cache_path(cache_dir, dataset, imb, 0))
  return paths


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest='cmd', required=True)
  p = sub.add_parser('pack', help='here: caches -> OUT/1, OUT/2, ... (each at most --part-mib)')
  p.add_argument('npz', nargs='*', help='ltjax cache files to pack (or use --imb)')
  p.add_argument('--imb', help='comma-separated imbalance factors: make (or reuse) their caches first')
  p.add_argument('--data-dir', help='TFDS data_dir for --imb (e.g. ../shared/tfds)')
  p.add_argument('--cache-dir', default='.device_cache', help='ltjax cache folder for --imb (default .device_cache)')
  p.add_argument('--out', default='.carry')
  p.add_argument('--part-mib', type=float, default=56.0,
                 help='most MiB in one folder (a call carries 64 MiB with the working tree; default 56)')
  u = sub.add_parser('unpack', help='there: every fully carried cache under ROOT -> INTO/NAME.npz')
  u.add_argument('root')
  u.add_argument('--into', default='.device_cache')
  b = sub.add_parser('send-back', help='there: results.tgz and each unfinished row\'s workdir_ROW.tgz -> OUT')
  b.add_argument('--workroot', default='runs/reproduce')
  b.add_argument('--results', default='results/cifar_lt')
  b.add_argument('--out', required=True)
  b.add_argument('--max-mib', type=float, default=15.5, help='largest file (a lent machine sends 16 MiB)')
  r = sub.add_parser('receive', help='here: the files a call brought back -> results/, runs/')
  r.add_argument('files_at')
  w = sub.add_parser('workdirs', help="here: the unfinished rows' workdirs (newest checkpoints) -> OUT.tgz")
  w.add_argument('--workroot', default='runs/reproduce')
  w.add_argument('--results', default='results/cifar_lt')
  w.add_argument('--out', required=True)
  w.add_argument('--rows', help="only these rows (reproduce.py's --rows patterns, space- or comma-separated) "
                                'and the rows they refit on')
  args = ap.parse_args(argv)
  if args.cmd == 'pack':
    paths = list(args.npz)
    if args.imb:
      paths += build_caches(args.data_dir, [float(s) for s in args.imb.split(',')], args.cache_dir)
    if not paths:
      ap.error('pack: name cache files or --imb')
    for folder in pack(paths, args.out, args.part_mib):
      size = sum(os.path.getsize(f) for f in glob.glob(os.path.join(folder, '*')))
      print(f'{folder}: {size / 2**20:.1f} MiB', flush=True)
  elif args.cmd == 'unpack':
    unpack(args.root, args.into)
  elif args.cmd == 'send-back':
    send_back(args.workroot, args.results, args.out, args.max_mib)
  elif args.cmd == 'workdirs':
    rows = pack_workdirs(args.workroot, args.results, args.out, args.rows)
    print(f'{args.out}: {", ".join(rows)}' if rows else f'no unfinished row under {args.workroot}', flush=True)
  else:
    receive(args.files_at)
  return 0


if __name__ == '__main__':
  sys.exit(main())
