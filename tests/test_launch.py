"""launch/tpu_pod.sh and launch/slurm.sbatch with stand-ins for gcloud and srun on PATH:
the commands they would run on a real cluster (launch/local.sh runs for real in
test_multihost.py)."""
import os
import subprocess

from conftest import REPO

FAKE = '''#!/usr/bin/env bash
args="$*"
printf '%s\\n' "${args//$'\\n'/; }" >> "$LOG"  # one line a call
if [ "$1 $2 $3 $4" = "compute tpus tpu-vm describe" ]; then
  if [[ "$args" == *format* ]] && [ -n "${STATE:-}" ]; then echo "$STATE"; exit 0; fi
  exit ${DESCRIBE_STATUS:-1}
fi
# The exit statuses of successive ltjax runs, one a line (default 0).
if [[ "$args" == *ltjax.main* ]] && [ -s "${STATUSES:-/nonexistent}" ]; then
  code=$(head -1 "$STATUSES"); sed -i 1d "$STATUSES"; exit "$code"
fi
'''


def fake_tool(tmp_path, name):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  tool = bin_dir / name
  tool.write_text(FAKE)
  tool.chmod(0o755)
  return {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'LOG': str(tmp_path / 'calls.txt')}


def test_tpu_pod_creates_installs_and_runs_on_every_worker(tmp_path):
  env = fake_tool(tmp_path, 'gcloud')
  env.update(REPO_URL='https://example.org/ltjax.git', REF='abc123', PROJECT='my-project')
  p = subprocess.run(['bash', str(REPO / 'launch/tpu_pod.sh'), 'pod', 'us-central1-a', 'v5litepod-32',
                      '--config', 'configs/imagenet_lt.py:method=dive', '--workdir', '/mnt/runs/a b'],
                     capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
  assert p.returncode == 0, p.stderr
  calls = (tmp_path / 'calls.txt').read_text().splitlines()
  assert calls[0].startswith('compute tpus tpu-vm describe pod --zone us-central1-a --project my-project')
  assert calls[1].startswith('compute tpus tpu-vm create pod --accelerator-type v5litepod-32')
  setup, run = calls[2:4]
  assert '--worker=all' in setup and "git checkout -q 'abc123'" in setup and 'jax[tpu]' in setup
  assert '--python 3.12' in setup
  assert '--worker=all' in run and 'ltjax.main --distributed --config configs/imagenet_lt.py:method=dive' in run
  assert r'/mnt/runs/a\ b' in run  # arguments are quoted for the remote shell
  assert len(calls) == 4  # no delete without DELETE=1


def test_tpu_pod_without_an_origin_asks_for_repo_url(tmp_path):
  """A checkout with no 'origin' remote (the workers have nothing to clone): refused, naming
  REPO_URL, before gcloud is called."""
  import shutil

  checkout = tmp_path / 'checkout'
  (checkout / 'launch').mkdir(parents=True)
  shutil.copy(REPO / 'launch/tpu_pod.sh', checkout / 'launch/tpu_pod.sh')
  subprocess.run(['git', 'init', '-q', str(checkout)], check=True)
  env = fake_tool(tmp_path, 'gcloud')
  env.pop('REPO_URL', None)
  p = subprocess.run(['bash', str(checkout / 'launch/tpu_pod.sh'), 'pod', 'z', 'v4-8', '--workdir', 'w'],
                     capture_output=True, text=True, env=env, cwd=checkout, timeout=60)
  assert p.returncode == 2 and 'Fix: set REPO_URL=' in p.stderr, p.stderr
  assert not (tmp_path / 'calls.txt').exists()


def test_tpu_pod_reuses_an_existing_vm(tmp_path):
  env = fake_tool(tmp_path, 'gcloud')
  env.update(REPO_URL='x', REF='y', DESCRIBE_STATUS='0', DELETE='1')
  p = subprocess.run(['bash', str(REPO / 'launch/tpu_pod.sh'), 'pod', 'z', 'v4-8', '--workdir', 'w'],
                     capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
  assert p.returncode == 0, p.stderr
  calls = (tmp_path / 'calls.txt').read_text().splitlines()
  assert not any(' create ' in c for c in calls) and calls[-1].startswith('compute tpus tpu-vm delete pod')


def test_slurm_runs_one_distributed_process_per_node(tmp_path):
  env = fake_tool(tmp_path, 'srun')
  env.update(CONFIG='configs/inat18.py:method=bsce', WORKDIR='/shared/w', DATA_DIR='/shared/tfds')
  p = subprocess.run(['bash', str(REPO / 'launch/slurm.sbatch'), '--config.seed=1'],
                     capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
  assert p.returncode == 0, p.stderr
  call = (tmp_path / 'calls.txt').read_text().strip()
  assert call == ('--kill-on-bad-exit=1 python -m ltjax.main --distributed --config configs/inat18.py:method=bsce '
                  '--workdir /shared/w --config.run.data_dir /shared/tfds --config.seed=1')
  script = (REPO / 'launch/slurm.sbatch').read_text()
  assert '#SBATCH --ntasks-per-node=1' in script


def test_slurm_needs_config_and_workdir(tmp_path):
  env = fake_tool(tmp_path, 'srun')
  env.pop('CONFIG', None)
  p = subprocess.run(['bash', str(REPO / 'launch/slurm.sbatch')], capture_output=True, text=True,
                     env=env, cwd=REPO, timeout=60)
  assert p.returncode != 0 and 'set CONFIG' in p.stderr


def _statuses(tmp_path, *codes):
  path = tmp_path / 'statuses'
  path.write_text(''.join(f'{c}\n' for c in codes))
  return str(path)


def test_tpu_pod_reruns_a_preempted_run(tmp_path):
  """Exit 75 (ltjax saved at a preemption notice) on a VM still READY: the same command
  runs again and resumes; a VM that was PREEMPTED is deleted and created first."""
  env = fake_tool(tmp_path, 'gcloud')
  env.update(REPO_URL='x', REF='y', DESCRIBE_STATUS='0', STATE='READY', STATUSES=_statuses(tmp_path, 75, 0))
  p = subprocess.run(['bash', str(REPO / 'launch/tpu_pod.sh'), 'pod', 'z', 'v4-8', '--workdir', 'w'],
                     capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
  assert p.returncode == 0, p.stderr
  calls = (tmp_path / 'calls.txt').read_text().splitlines()
  assert sum('ltjax.main' in c for c in calls) == 2 and 'restart 1' in p.stderr
  assert not any(' create ' in c or ' delete ' in c for c in calls)

  (tmp_path / 'calls.txt').unlink()
  env.update(STATE='PREEMPTED', STATUSES=_statuses(tmp_path, 255, 0))
  p = subprocess.run(['bash', str(REPO / 'launch/tpu_pod.sh'), 'pod', 'z', 'v4-8', '--workdir', 'w'],
                     capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
  assert p.returncode == 0, p.stderr
  calls = (tmp_path / 'calls.txt').read_text().splitlines()
  runs = [i for i, c in enumerate(calls) if 'ltjax.main' in c]
  delete = next(i for i, c in enumerate(calls) if ' delete pod' in c)
  create = next(i for i, c in enumerate(calls) if ' create pod' in c)
  assert len(runs) == 2 and runs[0] < delete < create < runs[1]


def test_tpu_pod_stops_on_a_real_failure_and_bounds_restarts(tmp_path):
  env = fake_tool(tmp_path, 'gcloud')
  env.update(REPO_URL='x', REF='y', DESCRIBE_STATUS='0', STATE='READY', STATUSES=_statuses(tmp_path, 1, 0))
  p = subprocess.run(['bash', str(REPO / 'launch/tpu_pod.sh'), 'pod', 'z', 'v4-8', '--workdir', 'w'],
                     capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
  assert p.returncode == 1
  assert sum('ltjax.main' in c for c in (tmp_path / 'calls.txt').read_text().splitlines()) == 1
  env.update(MAX_RESTARTS='2', STATUSES=_statuses(tmp_path, 75, 75, 75, 0))
  p = subprocess.run(['bash', str(REPO / 'launch/tpu_pod.sh'), 'pod', 'z', 'v4-8', '--workdir', 'w'],
                     capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
  assert p.returncode == 75 and 'after 2 restarts' in p.stderr


def test_slurm_requeues_a_preempted_job(tmp_path):
  env = fake_tool(tmp_path, 'srun')
  fake_tool(tmp_path, 'scontrol')
  env.update(CONFIG='c.py', WORKDIR='/w', SLURM_JOB_ID='42', STATUSES=_statuses(tmp_path, 75))
  p = subprocess.run(['bash', str(REPO / 'launch/slurm.sbatch')], capture_output=True, text=True,
                     env=env, cwd=REPO, timeout=60)
  assert p.returncode == 75
  assert (tmp_path / 'calls.txt').read_text().splitlines()[-1] == 'requeue 42'
  env.update(SLURM_RESTART_COUNT='10', STATUSES=_statuses(tmp_path, 75))
  p = subprocess.run(['bash', str(REPO / 'launch/slurm.sbatch')], capture_output=True, text=True,
                     env=env, cwd=REPO, timeout=60)
  assert p.returncode == 75 and 'not requeued' in p.stderr
  script = (REPO / 'launch/slurm.sbatch').read_text()
  assert '#SBATCH --signal=TERM@' in script and '#SBATCH --requeue' in script
