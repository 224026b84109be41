"""cRT, LWS and tau-norm: the classifier stage starts from the CE phase's checkpoint,
changes only what it should, and needs that checkpoint."""
import os
import shutil

import numpy as np
import pytest

from recipe_testing import digits, predict_matches_the_run, same  # noqa: F401 (digits: a fixture)
from configs import digits_lt
from ltjax import checkpoint, feeds, parallel, pipeline, recipes, train
from ltjax.errors import ConfigError, MissingCheckpointError


def final(workdir, phase):
  return checkpoint.restore_variables(os.path.join(workdir, phase, 'checkpoints'))


def run(tmp_path, method, phases='', **stage2):
  config = digits_lt.get_config(f'smoke,method={method}')
  config.run.phases = phases
  config.stage2.update(stage2)
  workdir = str(tmp_path / method)
  return workdir, pipeline.run(config, workdir)


@pytest.mark.slow  # over 9 s: not in the quick tier
def test_crt_retrains_only_a_new_classifier(tmp_path):
  workdir, results = run(tmp_path, 'crt')
  assert list(results) == ['ce', 'crt']
  ce, crt = final(workdir, 'ce'), final(workdir, 'crt')
  assert same(ce['params']['backbone'], crt['params']['backbone'])
  # The frozen backbone's BatchNorm in training mode (Kang et al.): its running
  # statistics re-estimated on the class-balanced batches, its weights untouched.
  assert not same(ce['batch_stats'], crt['batch_stats'])
  assert not same(ce['params']['head'], crt['params']['head'])
  assert results['crt']['top1'] is not None


@pytest.mark.parametrize('method,samples_per_class', [('crt', 3), ('ssd', 2)])
def test_the_trainer_samples_the_classifier_stage_as_configured(tmp_path, monkeypatch, digits, method,
                                                               samples_per_class):
  """The phase's sampler fields reach the Sampler that train_phase builds (SSD: 2 images
  a turn, its stage II's num_samples_cls, unless set)."""
  config = digits_lt.get_config(f'smoke,method={method}')
  if method == 'crt':
    config.stage2.samples_per_class = samples_per_class
  phase = next(p for p in recipes.phases(config, digits) if p.name in ('crt', 'teacher'))
  seen = {}

  def stop(dataset, sampler, *args, **kwargs):
    seen['sampler'] = sampler
    raise RuntimeError('stop here')

  monkeypatch.setattr(feeds, 'make_feed', stop)
  with pytest.raises(RuntimeError, match='stop here'):
    train.train_phase(phase, digits, config, str(tmp_path), parallel.make_mesh(1))
  assert (seen['sampler'].kind, seen['sampler'].per_class) == ('class_aware', samples_per_class)


def test_lws_learns_only_the_scales(tmp_path):
  workdir, results = run(tmp_path, 'lws', backbone_bn='eval')
  ce, lws = final(workdir, 'ce'), final(workdir, 'lws')
  assert same(ce['params']['backbone'], lws['params']['backbone'])
  assert same(ce['batch_stats'], lws['batch_stats'])  # backbone_bn eval: running statistics kept
  assert same(ce['params']['head'], lws['params']['head']['linear'])  # weights and bias frozen
  scales = np.asarray(lws['params']['head']['scales'])
  assert scales.shape == (10,) and not np.allclose(scales, 1.0)


def test_tau_normalize_as_kang_et_al_and_bagoftricks():
  """Kang et al.'s tau_norm.py: logits f @ pnorm(W, tau).T, the fc bias loaded but unused;
  BagofTricks-LT keeps the bias. At tau 0 with the bias kept, the CE classifier itself."""
  from ltjax.recipes.decoupled import tau_normalize

  rng = np.random.default_rng(0)
  f, w, b = rng.normal(size=(4, 6)), rng.normal(size=(6, 5)) * 3, rng.normal(size=5)
  head = {'Dense_0': {'kernel': w, 'bias': b}}
  for tau in (0.0, 0.5, 1.0, 1.7):
    kang = f @ (w / np.linalg.norm(w, axis=0, keepdims=True) ** tau)
    for keep_bias, expected in ((False, kang), (True, kang + b)):
      got = tau_normalize(head, tau, keep_bias)['Dense_0']
      np.testing.assert_allclose(f @ np.asarray(got['kernel']) + np.asarray(got['bias']), expected, rtol=1e-5,
                                 atol=1e-6)
  same0 = tau_normalize(head, 0.0, keep_bias=True)['Dense_0']
  np.testing.assert_allclose(same0['kernel'], w)
  np.testing.assert_allclose(same0['bias'], b)


def test_tau_norm_sweep_and_tau_zero_is_the_ce_classifier_without_its_bias(tmp_path):
  workdir, results = run(tmp_path, 'tau_norm')
  r = results['tau_norm']
  assert [row['tau'] for row in r['tau_sweep']] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
  assert r['tau_sweep'][4]['top1'] == pytest.approx(r['top1'])  # tau 1: this phase's result
  assert 'validation split' in r['tau_note']
  ce, tn = final(workdir, 'ce'), final(workdir, 'tau_norm')
  norms = np.linalg.norm(tn['params']['head']['Dense_0']['kernel'], axis=0)
  np.testing.assert_allclose(norms, 1.0, rtol=1e-5)  # tau = 1: unit class vectors
  np.testing.assert_array_equal(tn['params']['head']['Dense_0']['bias'], 0.0)  # Kang et al.: no bias
  assert same(ce['params']['backbone'], tn['params']['backbone'])
  # ltjax.predict uses the normalised classifier the phase saved (its own 0-epoch checkpoint).
  assert predict_matches_the_run(workdir, tmp_path) == 'tau_norm'


def test_second_stage_alone_needs_the_first(tmp_path):
  with pytest.raises(MissingCheckpointError, match=r"final checkpoint of phase 'ce'.*stage2\.backbone_dir"):
    run(tmp_path, 'crt', phases='crt')
  assert not os.path.exists(tmp_path / 'crt' / 'crt' / 'results.json')
  # The first stage alone, then the second alone on the same workdir.
  _, first = run(tmp_path, 'crt', phases='ce')
  assert list(first) == ['ce']
  _, second = run(tmp_path, 'crt', phases='crt')
  assert list(second) == ['ce', 'crt']


@pytest.mark.slow  # over 9 s: not in the quick tier
def test_one_ce_baseline_for_every_classifier_method(tmp_path, capsys):
  """stage2.backbone_dir: cRT, LWS and tau-norm refit on the CE phase of another run (its
  workdir, its phase folder or its orbax checkpoint folder), as Kang et al.'s stage-2
  configs load one stage-1 model; a backbone that cannot be used is refused by name."""
  base, base_results = run(tmp_path, 'crt')
  ce = final(base, 'ce')
  sources = {'lws': base, 'tau_norm': os.path.join(base, 'ce'), 'crt': os.path.join(base, 'ce', 'checkpoints')}
  for method, source in sources.items():
    workdir, results = run(tmp_path / 'from', method, phases=method, backbone_dir=source)
    assert list(results) == [method] and not os.path.exists(os.path.join(workdir, 'ce'))
    refit = final(workdir, method)
    assert same(ce['params']['backbone'], refit['params']['backbone'])
    if method == 'lws':
      assert same(ce['params']['head'], refit['params']['head']['linear'])
    # results.json says where the backbone came from, with that phase's own numbers.
    other = results[method]['from_other_runs']['init_from']
    assert other['checkpoints'] == os.path.join(base, 'ce', 'checkpoints')
    assert (other['phase'], other['dataset'], other['top1']) == ('ce', 'digits', base_results['ce']['top1'])
    # ... and so does the table's end (tau-norm's sweep too, which only results.json held).
    said = capsys.readouterr().out
    assert (f'{method}: its starting model is {os.path.join(base, "ce", "checkpoints")} '
            f'(top-1 {base_results["ce"]["top1"]:.2f})') in said
    assert (f'{method}: tau = 1 is the configured value; the best on the test set was tau = ' in said) == \
        (method == 'tau_norm')
  assert predict_matches_the_run(workdir, tmp_path) == 'crt'  # a workdir without a CE phase of its own
  # A backbone of another imbalance factor, or of another phase, is taken with a warning.
  capsys.readouterr()
  config = digits_lt.get_config('smoke,method=tau_norm,imb=10')
  config.run.phases, config.stage2.backbone_dir = 'tau_norm', base
  pipeline.run(config, str(tmp_path / 'imb10'))
  assert f"warning: the 'ce' model in {base}/ce/checkpoints was trained on digits IF 20; this run is digits " \
         f"IF 10" in capsys.readouterr().out
  config = digits_lt.get_config('smoke,method=tau_norm')
  config.run.phases, config.stage2.backbone_dir = 'tau_norm', os.path.join(base, 'crt')
  pipeline.run(config, str(tmp_path / 'of_crt'))
  assert (f"warning: the 'ce' model in {base}/crt/checkpoints is phase 'crt' of a crt run, not a 'ce' phase: "
          f"check --config.stage2.backbone_dir") in capsys.readouterr().out
  # Without run.phases the run would train a CE phase that nothing uses: refused before anything.
  with pytest.raises(ConfigError, match=r"stage2\.backbone_dir=.* 'ce', for nothing. Fix: add "
                                        r"--config\.run\.phases=lws "):
    run(tmp_path / 'unused', 'lws', backbone_dir=base)
  assert not os.path.exists(tmp_path / 'unused' / 'lws')
  # A CE phase that has not finished, a folder without a checkpoint, another architecture.
  unfinished = tmp_path / 'unfinished' / 'ce'
  shutil.copytree(os.path.join(base, 'ce', 'checkpoints'), unfinished / 'checkpoints')
  with pytest.raises(MissingCheckpointError, match="'ce' phase in .* has not finished"):
    run(tmp_path / 'e1', 'crt', phases='crt', backbone_dir=str(unfinished))
  with pytest.raises(MissingCheckpointError, match='holds no checkpoint'):
    run(tmp_path / 'e2', 'crt', phases='crt', backbone_dir=str(tmp_path / 'nothing'))
  config = digits_lt.get_config('smoke,method=crt')
  config.run.phases, config.stage2.backbone_dir = 'crt', base
  config.model.width *= 2
  with pytest.raises(MissingCheckpointError, match="'ce' model in .* has another architecture"):
    pipeline.run(config, str(tmp_path / 'e3'))
  # Only the classifier methods have a CE backbone to take.
  config = digits_lt.get_config('smoke,method=bsce')
  config.stage2.backbone_dir = base
  with pytest.raises(ConfigError, match='only crt, lws, tau_norm refit a classifier'):
    pipeline.run(config, str(tmp_path / 'e4'))
