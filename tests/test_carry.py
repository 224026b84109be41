"""bench/carry.py: the caches packed for a lent GPU machine unpack to the very arrays, in
parts across carried folders; what comes back holds each unfinished row's newest checkpoints."""
import importlib.util
import json
import os
import pathlib
import tarfile

import numpy as np
import pytest

from conftest import REPO

SCRIPT = REPO / 'bench' / 'carry.py'


@pytest.fixture(scope='module')
def carry():
  spec = importlib.util.spec_from_file_location('carry_under_test', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_image_codec_is_lossless_and_is_the_stated_predictor(carry):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (20, 7, 5, 3), dtype=np.uint8)
  x[0] = 255  # wrap-around at both ends
  x[1] = 0
  x[2, :, :, 1] = 255
  res = carry.encode_images(x)
  assert res.shape == (3, 20, 7, 5) and res.dtype == np.uint8
  np.testing.assert_array_equal(carry.decode_images(res), x)
  # the residual by hand: planes G, R-G, B-G; pixel - left - up + upper-left (mod 256)
  p = x.astype(np.int64)
  planes = np.stack([p[..., 1], p[..., 0] - p[..., 1], p[..., 2] - p[..., 1]])
  pad = np.pad(planes, ((0, 0), (0, 0), (1, 0), (1, 0)))
  want = (pad[..., 1:, 1:] - pad[..., 1:, :-1] - pad[..., :-1, 1:] + pad[..., :-1, :-1]) % 256
  np.testing.assert_array_equal(res, want)


def _cache(path, n=300, seed=0):
  rng = np.random.default_rng(seed)
  # smooth images (as photos are), so that the residual compresses
  base = rng.integers(0, 256, (n, 1, 1, 3))
  ramp = np.arange(32)[None, :, None, None] + np.arange(32)[None, None, :, None]
  images = ((base + ramp + rng.integers(0, 3, (n, 32, 32, 3))) % 256).astype(np.uint8)
  arrays = dict(train_images=images, train_labels=rng.integers(0, 10, n).astype(np.int32),
                test_images=images[:50], test_labels=np.arange(50, dtype=np.int32) % 10,
                num_classes=np.array(10), class_names=np.array(['airplane', 'car']),
                train_index=np.arange(n))
  np.savez_compressed(path, **arrays)
  return arrays


def test_pack_in_parts_and_unpack_exactly(carry, tmp_path):
  arrays = _cache(tmp_path / 'cifar10_lt_if100_seed0.npz')
  raw = sum(a.nbytes for a in arrays.values())
  folders = carry.pack([str(tmp_path / 'cifar10_lt_if100_seed0.npz')], str(tmp_path / 'carry'), part_mib=0.05)
  assert [os.path.basename(f) for f in folders] == [str(i) for i in range(1, len(folders) + 1)]
  assert len(folders) > 1  # split across folders, one per call
  packed = sum(os.path.getsize(os.path.join(f, n)) for f in folders for n in os.listdir(f))
  assert packed < 0.5 * raw
  for f in folders:
    assert sum(os.path.getsize(os.path.join(f, n)) for n in os.listdir(f)) <= 0.05 * 2**20

  # a machine that got only some folders says which it lacks
  there = tmp_path / 'there'
  os.makedirs(there)
  os.rename(folders[0], there / '1')
  with pytest.raises(SystemExit, match=r'lacks cifar10_lt_if100_seed0\.part2 \(packed into 2/\)'):
    carry.unpack(str(there), str(tmp_path / 'cache'))
  for f in folders[1:]:
    os.rename(f, there / os.path.basename(f))
  written = carry.unpack(str(there), str(tmp_path / 'cache'))
  assert written == [str(tmp_path / 'cache' / 'cifar10_lt_if100_seed0.npz')]
  with np.load(written[0]) as z:
    assert sorted(z.files) == sorted(arrays)
    for k, a in arrays.items():
      assert z[k].dtype == a.dtype and np.array_equal(z[k], a), k


def test_a_long_tailed_cache_takes_its_images_from_the_balanced_one(carry, tmp_path):
  full = _cache(tmp_path / 'cifar10_lt_if1_seed0.npz', n=300)
  idx = np.sort(np.random.default_rng(1).choice(300, 40, replace=False))[::-1].copy()  # not sorted
  lt = dict(full, train_images=full['train_images'][idx], train_labels=full['train_labels'][idx],
            train_index=full['train_index'][idx])
  np.savez(tmp_path / 'cifar10_lt_if100_seed0.npz', **lt)
  # the smaller named first: the larger is packed first all the same, as the base
  folders = carry.pack([str(tmp_path / 'cifar10_lt_if100_seed0.npz'), str(tmp_path / 'cifar10_lt_if1_seed0.npz')],
                       str(tmp_path / 'carry'), part_mib=10)
  (folder,) = folders
  with open(os.path.join(folder, 'cifar10_lt_if100_seed0.carry.json')) as f:
    m = json.load(f)
  assert m['base'] == {'name': 'cifar10_lt_if1_seed0', 'npz': 'cifar10_lt_if1_seed0.npz'}
  codecs = {k: v['codec'] for k, v in m['arrays'].items()}
  assert codecs['train_images'] == codecs['train_labels'] == codecs['train_index'] == 'take'
  assert codecs['test_images'] == codecs['test_labels'] == codecs['num_classes'] == 'same'
  assert os.path.getsize(os.path.join(folder, 'cifar10_lt_if100_seed0.part1')) < 2000  # no image bytes

  # unpacked after its base, to the very arrays
  written = carry.unpack(folder, str(tmp_path / 'cache'))
  assert [os.path.basename(w) for w in written] == ['cifar10_lt_if1_seed0.npz', 'cifar10_lt_if100_seed0.npz']
  for path, want in zip(written, (full, lt)):
    with np.load(path) as z:
      assert sorted(z.files) == sorted(want)
      for k, a in want.items():
        assert z[k].dtype == a.dtype and np.array_equal(z[k], a), k

  # carried without its base: the error names it
  alone = tmp_path / 'alone'
  os.makedirs(alone)
  for name in ('cifar10_lt_if100_seed0.carry.json', 'cifar10_lt_if100_seed0.part1'):
    os.rename(os.path.join(folder, name), alone / name)
  with pytest.raises(SystemExit, match='takes its images from cifar10_lt_if1_seed0, which was not carried'):
    carry.unpack(str(alone), str(tmp_path / 'cache2'))

  # a cache whose images are not all in the other is packed whole
  other = dict(lt, train_images=lt['train_images'].copy())
  other['train_images'][0, 0, 0, 0] ^= 1
  assert carry.derive(other, full) is None
  assert carry.derive(dict(lt, train_index=lt['train_index'] + 1000), full) is None


def test_a_damaged_part_is_named(carry, tmp_path):
  _cache(tmp_path / 'x.npz', n=40)
  (folder,) = carry.pack([str(tmp_path / 'x.npz')], str(tmp_path / 'carry'), part_mib=10)
  with open(os.path.join(folder, 'x.part1'), 'r+b') as f:
    f.seek(100)
    f.write(b'\0' * 8)
  with pytest.raises(SystemExit, match='already holds packed folders'):  # never mixed with an old pack
    carry.pack([str(tmp_path / 'x.npz')], str(tmp_path / 'carry'), part_mib=10)
  with pytest.raises(SystemExit, match=r'x\.part1 is damaged'):
    carry.unpack(str(tmp_path / 'carry'), str(tmp_path / 'cache'))
  with pytest.raises(SystemExit, match='no packed cache'):
    carry.unpack(str(tmp_path / 'cache'), str(tmp_path / 'cache2'))


def _rows(root, results):
  """Two rows' workdirs: DiVE cut in its student (teacher finished), CE finished."""
  os.makedirs(results)

  def phase(row, name, steps, finished):
    d = os.path.join(root, row, name)
    for s in steps:
      os.makedirs(os.path.join(d, 'checkpoints', str(s)))
      with open(os.path.join(d, 'checkpoints', str(s), 'state'), 'w') as f:
        f.write(str(s))
    os.makedirs(os.path.join(d, 'checkpoints', f'{steps[0]}.damaged'))
    os.makedirs(os.path.join(d, 'checkpoints', f'{steps[-1] + 50}.orbax-checkpoint-tmp-123'))
    with open(os.path.join(d, 'checkpoints', 'descriptor.json'), 'w') as f:
      f.write('{}')
    with open(os.path.join(d, 'metrics.jsonl'), 'w') as f:
      f.write('{"step": 1}\n')
    if finished:
      with open(os.path.join(d, 'results.json'), 'w') as f:
        f.write('{}')

  phase('cifar10_if100_dive_s0', 'teacher', [100, 200], finished=True)
  phase('cifar10_if100_dive_s0', 'student', [50, 150], finished=False)
  phase('cifar10_if100_ce_s0', 'ce', [100, 200], finished=True)
  os.makedirs(os.path.join(root, 'cifar10_if100_ssd_s0', 'selfsup', 'checkpoints', '7.orbax-checkpoint-tmp-1'))
  for row in ('cifar10_if100_dive_s0', 'cifar10_if100_ce_s0'):
    for name in ('reproduce.json', 'reproduce.log', 'config.json'):
      with open(os.path.join(root, row, name), 'w') as f:
        f.write('{}')
  with open(os.path.join(results, 'cifar10_if100_ce_s0.json'), 'w') as f:
    json.dump({'result': {'top1': 70.0}}, f)
  with open(os.path.join(root, 'gpu.csv'), 'w') as f:
    f.write('t, 90 %, 1000 MiB\n')


def test_send_back_and_receive_the_unfinished_rows_with_their_newest_checkpoints(carry, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  root, results = 'runs/reproduce', 'results/cifar_lt'
  _rows(root, results)
  assert carry.unfinished_rows(root, results) == ['cifar10_if100_dive_s0', 'cifar10_if100_ssd_s0']

  written = carry.send_back(root, results, 'out', max_mib=16)
  assert [os.path.basename(p) for p in written] == ['results.tgz', 'workdirs.tgz']
  with tarfile.open('out/results.tgz') as t:
    names = set(t.getnames())
  assert {'results/cifar_lt/cifar10_if100_ce_s0.json', 'runs/reproduce/gpu.csv',
          'runs/reproduce/cifar10_if100_dive_s0/reproduce.log',
          'runs/reproduce/cifar10_if100_dive_s0/teacher/results.json',
          'runs/reproduce/cifar10_if100_ce_s0/ce/metrics.jsonl'} <= names
  assert not any('checkpoints' in n for n in names)
  with tarfile.open('out/workdirs.tgz') as t:
    names = t.getnames()
  assert not any('cifar10_if100_ce_s0' in n for n in names)  # finished: its JSON is the row
  ckpts = {n.split('dive_s0/')[1] for n in names if 'dive_s0' in n and 'checkpoints/' in n}
  assert ckpts == {'teacher/checkpoints/200', 'teacher/checkpoints/200/state', 'teacher/checkpoints/descriptor.json',
                   'student/checkpoints/150', 'student/checkpoints/150/state',
                   'student/checkpoints/descriptor.json'}  # the newest of each phase, no tmp, no damaged
  assert not any('orbax-checkpoint-tmp' in n for n in names)  # also where no step is finished yet

  # Larger than a file that comes back: in pieces that say how many; receive joins them.
  size = os.path.getsize('out/workdirs.tgz')
  written = carry.send_back(root, results, 'out2', max_mib=size / 3 / 2**20)
  pieces = [os.path.basename(p) for p in written[1:]]
  n = len(pieces)
  assert n >= 3 and pieces == [f'workdirs.tgz.{k}of{n}' for k in range(1, n + 1)]
  os.makedirs('here')
  monkeypatch.chdir('here')
  os.rename(f'../out2/workdirs.tgz.{n}of{n}', '../last_piece')
  with pytest.raises(SystemExit, match='came back incomplete'):
    carry.receive('../out2')
  os.rename('../last_piece', f'../out2/workdirs.tgz.{n}of{n}')
  carry.receive('../out2')
  assert json.loads(pathlib.Path('results/cifar_lt/cifar10_if100_ce_s0.json').read_text()) == {'result': {'top1': 70.0}}
  student = 'runs/reproduce/cifar10_if100_dive_s0/student/checkpoints'
  assert sorted(os.listdir(student)) == ['150', 'descriptor.json']
  assert pathlib.Path(f'{student}/150/state').read_text() == '150'
  assert os.path.exists('runs/reproduce/cifar10_if100_dive_s0/teacher/checkpoints/200/state')

  # Here, for the next machine: the unfinished rows again, as gpu_prepare.sh packs them.
  rows = carry.pack_workdirs('runs/reproduce', 'results/cifar_lt', '.carry/workdirs.tgz')
  assert rows == ['cifar10_if100_dive_s0', 'cifar10_if100_ssd_s0']


def test_a_finished_base_row_travels_while_a_row_on_it_is_not_done(carry, tmp_path, monkeypatch):
  """LWS and tau-norm refit on the cRT row's CE phase (Row.base): the finished cRT row's
  workdir goes on to the next machine until both are done, and then no longer."""
  monkeypatch.chdir(tmp_path)
  root, results = 'runs/reproduce', 'results/cifar_lt'
  os.makedirs(results)
  for phase in ('ce', 'crt'):
    os.makedirs(os.path.join(root, 'cifar10_if100_crt_s0', phase, 'checkpoints', '100'))
    pathlib.Path(os.path.join(root, 'cifar10_if100_crt_s0', phase, 'results.json')).write_text('{}')
  pathlib.Path(os.path.join(results, 'cifar10_if100_crt_s0.json')).write_text('{}')
  os.makedirs(os.path.join(root, 'cifar10_if100_ce_s0', 'ce'))  # finished, and no row's base
  pathlib.Path(os.path.join(results, 'cifar10_if100_ce_s0.json')).write_text('{}')
  assert carry.pack_workdirs(root, results, 'w.tgz') == ['cifar10_if100_crt_s0']
  with tarfile.open('w.tgz') as t:
    assert 'runs/reproduce/cifar10_if100_crt_s0/ce/checkpoints/100' in t.getnames()
  pathlib.Path(os.path.join(results, 'cifar10_if100_lws_s0.json')).write_text('{}')
  assert carry.unfinished_rows(root, results) == ['cifar10_if100_crt_s0']  # tau-norm still needs it
  pathlib.Path(os.path.join(results, 'cifar10_if100_tau_norm_s0.json')).write_text('{}')
  assert carry.unfinished_rows(root, results) == []


def test_workdirs_of_the_chosen_rows_and_their_bases_only(carry, tmp_path, monkeypatch):
  """What travels must fit 64 MiB: --rows keeps the rows the next call runs and the cRT
  row that LWS refits on; the other cut rows stay here for a later call."""
  monkeypatch.chdir(tmp_path)
  root, results = 'runs/reproduce', 'results/cifar_lt'
  os.makedirs(results)
  for row in ('cifar10_if100_crt_s0', 'cifar10_if100_dive_s0', 'cifar10_if100_ce_s1'):
    os.makedirs(os.path.join(root, row, 'p', 'checkpoints', '5'))
  pathlib.Path(os.path.join(results, 'cifar10_if100_crt_s0.json')).write_text('{}')
  assert carry.pack_workdirs(root, results, 'all.tgz') == [
      'cifar10_if100_ce_s1', 'cifar10_if100_crt_s0', 'cifar10_if100_dive_s0']
  assert carry.pack_workdirs(root, results, 'some.tgz', 'cifar10_if100_dive_s0 cifar10_if100_lws_*') == [
      'cifar10_if100_crt_s0', 'cifar10_if100_dive_s0']
  with tarfile.open('some.tgz') as t:
    assert not any('ce_s1' in n for n in t.getnames())
  assert carry.pack_workdirs(root, results, 'none.tgz', 'cifar10_if10_*') == []
  carry.main(['workdirs', '--out', 'cli.tgz', '--rows', 'cifar10_if100_dive_s0,cifar10_if1_ce_s0'])
  with tarfile.open('cli.tgz') as t:
    assert {n.split('/')[2] for n in t.getnames() if n.count('/') >= 2} == {'cifar10_if100_dive_s0'}


@pytest.mark.parametrize('evil', ['top', 'dotdot', 'symlink', 'absolute'])
def test_receive_unpacks_only_plain_files_under_results_and_runs(carry, tmp_path, monkeypatch, evil):
  monkeypatch.chdir(tmp_path)
  os.makedirs('at')
  os.makedirs('runs')
  with open('payload', 'w') as f:
    f.write('x')
  with tarfile.open('at/results.tgz', 'w:gz') as t:
    if evil == 'top':
      t.add('payload')
    elif evil == 'dotdot':
      t.add('payload', arcname='runs/../README.md')
    elif evil == 'symlink':
      os.symlink('../ltjax', 'runs/lnk')
      t.add('runs/lnk')
    else:
      t.add('payload', arcname='/etc/evil')
  os.makedirs('repo')
  with pytest.raises(SystemExit, match='not a plain file or folder under results/ or runs/'):
    carry.receive('at', 'repo')
  assert os.listdir('repo') == []
