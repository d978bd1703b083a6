"""End-to-end tests of nnunet_nb.training on the tiny example dataset with shrunken plans: a full fold, checkpoints
(ours and the reference's fixture), extending a finished run, resume after SIGKILL in a real subprocess, custom
splits, fold 'all', pretrained weights, --val, and DDP with gloo on 2 CPU processes."""
from __future__ import annotations
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import numpy as np
import pytest
import torch
from conftest import planned_tiny_ct

from nnunet_nb.planning import Plans
from nnunet_nb.network import network_from_plans
from nnunet_nb.training import (train, load_checkpoint, save_checkpoint, CHECKPOINT_KEYS, TrainingError,
                                poly_lr, load_pretrained_weights, newest_checkpoint, kfold_split, trainer_class)

FIXTURE = Path('/work/shared/fixtures/nnunetv2_tiny/model')
PLANS = 'nnUNetPlansTiny'
FAST = dict(plans=PLANS, device='cpu', iterations_per_epoch=2, validation_iterations=2, seed=0, progress=False)


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    "nnUNet_* folders for this module, with two tiny preprocessed CT datasets (460, 461) and shrunken plans."
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    with planned_tiny_ct(tmp_path_factory.mktemp('training'), (460, 461), PLANS) as root: yield root
    torch.set_num_threads(threads)


def results(root, d, fold, trainer='nnUNetTrainer'):
    name = next(p.name for p in (root/'nnUNet_preprocessed').iterdir() if p.name.startswith(f'Dataset{d}_'))
    return root/'nnUNet_results'/name/f'{trainer}__{PLANS}__3d_fullres'/f'fold_{fold}'


def test_full_fold_then_extend(folders):
    folder = train(460, '3d_fullres', 0, epochs=2, **FAST)
    names = {p.name for p in folder.iterdir()}
    assert {'checkpoint_final.pth', 'checkpoint_best.pth', 'debug.json', 'progress.png', 'validation'} <= names
    assert 'checkpoint_latest.pth' not in names            # removed when the run finished
    assert any(n.startswith('training_log_') and n.endswith('.txt') for n in names)
    assert {'plans.json', 'dataset.json', 'dataset_fingerprint.json'} <= {p.name for p in folder.parent.iterdir()}
    ck = load_checkpoint(folder/'checkpoint_final.pth')
    assert set(CHECKPOINT_KEYS) <= set(ck)
    assert ck['current_epoch'] == 2 and ck['trainer_name'] == 'nnUNetTrainer'
    assert ck['inference_allowed_mirroring_axes'] == (0, 1, 2) and ck['grad_scaler_state'] is None
    assert np.allclose(ck['logging']['lrs'], [poly_lr(e, 2) for e in range(2)])
    assert all(len(ck['logging'][k]) == 2 for k in ck['logging'])
    splits = json.loads((folders/'nnUNet_preprocessed'/folder.parent.parent.name/'splits_final.json').read_text())
    val = splits[0]['val']
    assert splits == kfold_split([f'case_{i:03d}' for i in range(6)])
    summary = json.loads((folder/'validation'/'summary.json').read_text())
    assert sorted(c['prediction_file'].split('/')[-1] for c in summary['metric_per_case']) == [f'{c}.nii.gz' for c in val]
    assert set(summary['mean']) == {'1', '2'} and 'Dice' in summary['foreground_mean']
    # extend the finished run to 3 epochs: continues from checkpoint_final, with the 3-epoch schedule
    train(460, '3d_fullres', 0, epochs=3, continue_training=True, **FAST)
    ck = load_checkpoint(folder/'checkpoint_final.pth')
    assert ck['current_epoch'] == 3 and len(ck['logging']['lrs']) == 3
    assert np.isclose(ck['logging']['lrs'][2], poly_lr(2, 3))
    # --c again without --epochs keeps the saved settings: nothing left to train
    train(460, '3d_fullres', 0, continue_training=True, **{**FAST, 'iterations_per_epoch': None})
    assert load_checkpoint(folder/'checkpoint_final.pth')['current_epoch'] == 3
    # --val reruns only the validation; --val_best uses checkpoint_best.pth
    (folder/'validation'/'summary.json').unlink()
    train(460, '3d_fullres', 0, only_validation=True, validation_with_best=True, **FAST)
    assert (folder/'validation'/'summary.json').is_file()


def test_no_mirroring_trainers(folders):
    "nnUNetTrainerNoMirroring: no mirror augmentation, and a model whose predictor does not mirror either."
    from nnunet_nb.inference import Predictor
    folder = train(461, '3d_fullres', 3, epochs=1, trainer='nnUNetTrainerNoMirroring', **FAST)
    assert folder.parent.name == f'nnUNetTrainerNoMirroring__{PLANS}__3d_fullres'
    ck = load_checkpoint(folder/'checkpoint_final.pth')
    assert ck['inference_allowed_mirroring_axes'] is None and ck['trainer_name'] == 'nnUNetTrainerNoMirroring'
    predictor = Predictor.from_model_folder(folder.parent, folds=[3], device='cpu')
    assert predictor.mirror_axes == ()
    pre = folders/'nnUNet_preprocessed'/folder.parent.parent.name
    only01 = trainer_class('nnUNetTrainer_onlyMirror01')(pre/f'{PLANS}.json', '3d_fullres', 0, pre/'dataset.json', progress=False)
    assert only01.mirror_axes == (0, 1)
    train_batches, _ = only01.batches(['case_000', 'case_001'], ['case_002'])
    assert train_batches.settings.mirror_axes == (0, 1)


def test_checkpoint_round_trip_and_fixture(folders, tmp_path):
    ref = load_checkpoint(FIXTURE/'fold_0'/'checkpoint_final.pth')
    assert set(CHECKPOINT_KEYS) <= set(ref)
    plans, dsj = Plans(ref['init_args']['plans']), ref['init_args']['dataset_json']
    net = network_from_plans(plans, '3d_fullres', dsj, deep_supervision=True)
    net.load_state_dict(ref['network_weights'])             # the reference's weights fit our network exactly
    save_checkpoint(ref, tmp_path/'c.pth')
    back = load_checkpoint(tmp_path/'c.pth')
    assert sorted(back) == sorted(ref) and back['current_epoch'] == ref['current_epoch']
    assert all(torch.equal(back['network_weights'][k], v) for k, v in ref['network_weights'].items())
    assert [p.name for p in tmp_path.iterdir()] == ['c.pth']
    # pretrained weights: everything but the segmentation heads loads
    fresh = network_from_plans(plans, '3d_fullres', {**dsj, 'labels': {'background': 0, 'a': 1}}, deep_supervision=True)
    report = load_pretrained_weights(fresh, FIXTURE/'fold_0'/'checkpoint_final.pth')
    assert report['heads'] and not report['missing'] and not report['mismatched']
    assert len(report['loaded']) == len([k for k in ref['network_weights'] if '.seg_layers.' not in k])
    with pytest.raises(TrainingError, match='not found'): load_checkpoint(tmp_path/'missing.pth')


def test_pretrained_weights_in_train(folders):
    source = results(folders, 460, 0)/'checkpoint_final.pth'
    if not source.is_file(): train(460, '3d_fullres', 0, epochs=1, **FAST)
    folder = train(460, '3d_fullres', 1, epochs=1, pretrained_weights=source, **FAST)
    log = next(folder.glob('training_log_*.txt')).read_text()
    assert 'Pretrained weights' in log and 'segmentation-head' in log
    with pytest.raises(TrainingError, match='cannot be combined'):
        train(460, '3d_fullres', 1, pretrained_weights=source, continue_training=True, **FAST)


def test_resume_after_sigkill(folders):
    folder = results(folders, 461, 2)
    script = textwrap.dedent(f"""
        import torch; torch.set_num_threads(1)
        from nnunet_nb.training import train
        train(461, '3d_fullres', 2, plans={PLANS!r}, device='cpu', epochs=5, iterations_per_epoch=6,
              validation_iterations=2, save_every=1, seed=0, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, '-c', script], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:   # kill -9 once epoch 2 has started (checkpoint_latest of epoch 1 exists)
            logs = list(folder.glob('training_log_*.txt')) if folder.is_dir() else []
            if logs and 'Epoch 2\n' in logs[0].read_text() and (folder/'checkpoint_latest.pth').is_file(): break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        else: pytest.fail('the training subprocess never reached epoch 2')
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (folder/'checkpoint_final.pth').exists()
    newest = newest_checkpoint(folder)
    assert load_checkpoint(newest)['current_epoch'] == 2
    train(461, '3d_fullres', 2, continue_training=True, **{**FAST, 'iterations_per_epoch': None})
    ck = load_checkpoint(folder/'checkpoint_final.pth')
    assert ck['current_epoch'] == 5                          # the settings (5 epochs x 6) came from the checkpoint
    assert np.allclose(ck['logging']['lrs'], [poly_lr(e, 5) for e in range(5)])
    assert all(len(v) == 5 for v in ck['logging'].values())
    starts = ck['logging']['epoch_start_timestamps']
    assert starts == sorted(starts)
    state = ck['optimizer_state']['state']
    assert state and all('momentum_buffer' in s for s in state.values())
    assert (folder/'validation'/'summary.json').is_file()


def test_custom_split_and_fold_all(folders):
    pre = next((folders/'nnUNet_preprocessed').glob('Dataset461_*'))
    cases = [f'case_{i:03d}' for i in range(6)]
    split_file = pre/'splits_final.json'
    saved = split_file.read_text() if split_file.exists() else None
    try:
        split_file.write_text(json.dumps([{'train': cases[1:5], 'val': [cases[0], cases[5]]}]))
        folder = train(461, '3d_fullres', 0, epochs=1, **FAST)
        assert sorted(p.name for p in (folder/'validation').glob('*.nii.gz')) == ['case_000.nii.gz', 'case_005.nii.gz']
        with pytest.raises(TrainingError, match='Fold 1 does not exist'):
            train(461, '3d_fullres', 1, epochs=1, **FAST)
    finally:
        if saved is None: split_file.unlink()
        else: split_file.write_text(saved)
    folder = train(461, '3d_fullres', 'all', epochs=1, **FAST)
    assert folder.name == 'fold_all'
    assert sorted(p.name for p in (folder/'validation').glob('*.nii.gz')) == [f'{c}.nii.gz' for c in cases]


def test_errors(folders):
    with pytest.raises(TrainingError, match='Known:'): train(460, '3d_fullres', 0, trainer='nnUNetTrainerNope', **FAST)
    with pytest.raises(TrainingError, match='not found'): train(460, '3d_fullres', 0, **{**FAST, 'plans': 'NoSuchPlans'})
    with pytest.raises(TrainingError, match='--val needs'): train(460, '3d_fullres', 3, only_validation=True, **FAST)
    assert trainer_class('nnUNetTrainer_5epochs').settings.num_epochs == 5


def test_ddp_gloo_two_processes(folders):
    folder = train(460, '3d_fullres', 4, epochs=2, num_gpus=2, **FAST)
    debug = json.loads((folder/'debug.json').read_text())
    assert debug['world_size'] == 2 and debug['batch_size_this_process'] == 1
    ck = load_checkpoint(folder/'checkpoint_final.pth')
    assert ck['current_epoch'] == 2 and not any(k.startswith('module.') for k in ck['network_weights'])
    assert (folder/'validation'/'summary.json').is_file()


def test_torchrun_two_processes(folders):
    "The torchrun path (also what `torchrun --nnodes N` runs on each node): the processes exist, train() joins them."
    torchrun, script = Path(sys.executable).parent/'torchrun', Path(sys.executable).parent/'nnunet_nb_train'
    result = subprocess.run([str(torchrun), '--standalone', '--nnodes', '1', '--nproc_per_node', '2', str(script),
                             '461', '3d_fullres', '1', '-p', PLANS, '-device', 'cpu', '--epochs', '1',
                             '--iterations_per_epoch', '2', '--val_iterations_per_epoch', '1'],
                            env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = results(folders, 461, 1)
    debug = json.loads((folder/'debug.json').read_text())
    assert debug['world_size'] == 2 and debug['batch_size_this_process'] == 1
    assert load_checkpoint(folder/'checkpoint_final.pth')['current_epoch'] == 1
    assert (folder/'validation'/'summary.json').is_file()
