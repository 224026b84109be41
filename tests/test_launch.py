"""launch/tpu_pod.sh and launch/slurm.sbatch with stand-ins for gcloud and srun on PATH:
the commands they would run on a real cluster (launch/local.sh runs for real in
test_multihost.py)."""
import os
import subprocess

from conftest import REPO

FAKE = '''#!/usr/bin/env bash
args="$*"
printf '%s\\n' "${args//$'\\n'/; }" >> "$LOG"  # one line a call
if [ "$1 $2 $3 $4" = "compute tpus tpu-vm describe" ]; then exit ${DESCRIBE_STATUS:-1}; fi
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
