"""nnunet_nb.runs: papermill fold runs on the tiny example CT dataset with shrunken plans (CPU, one epoch of two
iterations): executed notebooks in the fold folders, the returned table, skipping finished folds, continuing an
interrupted one, a failing fold next to a finished one, cascade order, the GPU scheduler, and the command end to end."""
from __future__ import annotations
import ast, json, os, shutil, threading, time
from pathlib import Path
import nbformat
import pytest

from conftest import run_console_script, planned_tiny_ct
from nnunet_nb.planning import Plans
from nnunet_nb.training import load_checkpoint, train
from nnunet_nb import runs as runs_module
from nnunet_nb.runs import (run_folds, run_stages, previous_stages, fold_folder, fold_state, notebook_error, run_jobs,
                            train_fold_notebook, notebook_parameters, RunsError, FoldRun)

DATASET, PLANS = 480, 'nnUNetPlansTiny'
FAST = dict(plans=PLANS, device='cpu', epochs=1, iterations_per_epoch=2, validation_iterations=1, seed=0, progress=False)


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    "nnUNet_* folders for this module with the tiny CT example planned, shrunk (nnUNetPlansTiny) and preprocessed."
    with planned_tiny_ct(tmp_path_factory.mktemp('runs'), (DATASET,), PLANS) as root: yield root


def folder_of(fold, configuration='3d_fullres', plans=PLANS):
    return fold_folder(DATASET, configuration, fold, plans=plans)


def injected(notebook:Path)->dict:
    "The parameters papermill injected into an executed notebook."
    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if 'injected-parameters' in c.metadata.get('tags', []))
    return {k: ast.literal_eval(v) for k, v in (line.split(' = ', 1) for line in cell.source.splitlines() if ' = ' in line)}


def test_the_notebook_and_its_parameters():
    nb_file = train_fold_notebook()
    assert nb_file == Path(__file__).resolve().parents[1]/'nbs'/'runs'/'train_fold.ipynb'
    nb = nbformat.read(nb_file, as_version=4)
    params = notebook_parameters(nb)
    assert set(params) == {'dataset', 'configuration', 'fold', 'trainer', 'plans', 'device', 'epochs', 'iterations_per_epoch',
                           'validation_iterations', 'continue_training', 'npz', 'seed'}
    tagged = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(tagged) == 1 and tagged[0].source.startswith('# parameters')


def test_folds_done_failed_then_skipped(folders, capsys):
    "Two folds: 0 trains, 7 (not in the 5-fold split) fails and is reported; asked again, fold 0 is skipped."
    runs = run_folds(DATASET, ['3d_fullres'], [7, 0], **FAST)
    assert [(r.fold, r.status) for r in runs] == [(7, 'failed'), (0, 'done')]
    table = capsys.readouterr().out
    assert 'configuration' in table and 'failed' in table and str(runs[1].notebook) in table
    done, failed = runs[1], runs[0]
    folder = folder_of(0)
    assert done.notebook == folder/'train_fold.ipynb' and done.notebook.is_file()
    assert notebook_error(done.notebook) is None
    assert injected(done.notebook)['fold'] == 0 and injected(done.notebook)['device'] == 'cpu'
    assert injected(done.notebook)['continue_training'] is False
    summary = json.loads((folder/'validation'/'summary.json').read_text())
    assert done.dice == pytest.approx(summary['foreground_mean']['Dice'])
    assert (folder/'checkpoint_final.pth').is_file() and done.seconds > 0 and done.error is None
    nb = nbformat.read(done.notebook, as_version=4)
    pictures = sum('image/png' in o.get('data', {}) for c in nb.cells for o in c.get('outputs', []))
    assert pictures >= 3                          # batches, curves (live, then progress.png in place), best/worst case
    assert 'Fold 7 does not exist' in failed.error and failed.dice is None
    assert failed.notebook == folder_of(7)/'train_fold.ipynb' and 'Fold 7 does not exist' in notebook_error(failed.notebook)
    assert not list(folders.rglob('*.running.ipynb'))

    # asked again: the finished fold is skipped, its notebook untouched
    stamp = done.notebook.stat().st_mtime_ns
    [again] = run_folds(DATASET, ['3d_fullres'], [0], **FAST)
    assert (again.status, again.dice, again.notebook, again.seconds) == ('skipped', done.dice, done.notebook, 0)
    assert done.notebook.stat().st_mtime_ns == stamp


def test_cascade_order():
    previous = {'3d_cascade_fullres': '3d_lowres'}
    assert run_stages(['3d_cascade_fullres', '3d_lowres'], previous) == [['3d_lowres'], ['3d_cascade_fullres']]
    assert run_stages(['2d', '3d_cascade_fullres', '3d_fullres', '3d_lowres'], previous) == \
        [['2d', '3d_fullres', '3d_lowres'], ['3d_cascade_fullres']]
    assert run_stages(['3d_cascade_fullres', '2d'], previous) == [['3d_cascade_fullres', '2d']]
    with pytest.raises(RunsError, match='cycle'): run_stages(['a', 'b'], {'a': 'b', 'b': 'a'})
    plans = Plans({'configurations': {'2d': {}, '3d_fullres': {}, '3d_lowres': {'next_stage': ['3d_cascade_fullres']},
                                      '3d_cascade_fullres': {'inherits_from': '3d_fullres', 'previous_stage': '3d_lowres'}}})
    assert previous_stages(plans, ['2d', '3d_lowres', '3d_cascade_fullres']) == previous


def test_run_folds_waits_for_the_previous_stage(folders, monkeypatch):
    "Every 3d_lowres fold runs before any cascade fold; a failed lowres fold stops the cascade folds from starting."
    d = Plans.load(Path(os.environ['nnUNet_preprocessed'])/'Dataset480_SyntheticCT'/f'{PLANS}.json').to_dict()
    tiny = d['configurations']['3d_fullres']
    d['plans_name'] = 'nnUNetPlansFakeCascade'
    d['configurations'] = {'3d_lowres': dict(tiny, next_stage=['3d_cascade_fullres']),
                           '3d_cascade_fullres': dict(tiny, previous_stage='3d_lowres')}
    Plans(d).save(Path(os.environ['nnUNet_preprocessed'])/'Dataset480_SyntheticCT'/'nnUNetPlansFakeCascade.json')
    order = []
    def fake_execute(parameters, notebook=None, kernel_name='python3'):
        order.append((parameters['configuration'], parameters['fold']))
        folder = fold_folder(parameters['dataset'], parameters['configuration'], parameters['fold'], plans=parameters['plans'])
        if parameters['configuration'] == '3d_lowres' and parameters['fold'] == fail_fold: raise RuntimeError('boom')
        (folder/'validation').mkdir(parents=True, exist_ok=True)
        (folder/'checkpoint_final.pth').write_bytes(b'')
        (folder/'validation'/'summary.json').write_text('{"foreground_mean": {"Dice": 0.5}}')
    monkeypatch.setattr(runs_module, 'execute_fold', fake_execute)
    kw = dict(plans='nnUNetPlansFakeCascade', device='cpu', progress=False)
    fail_fold = None
    runs = run_folds(DATASET, ['3d_cascade_fullres', '3d_lowres'], [0, 1], **kw)
    assert order == [('3d_lowres', 0), ('3d_lowres', 1), ('3d_cascade_fullres', 0), ('3d_cascade_fullres', 1)]
    assert [r.status for r in runs] == ['done'] * 4 and [r.dice for r in runs] == [0.5] * 4
    order.clear(); fail_fold = 3
    runs = run_folds(DATASET, ['3d_cascade_fullres', '3d_lowres'], [2, 3], **kw)
    assert order == [('3d_lowres', 2), ('3d_lowres', 3)]          # the cascade folds never started
    assert [(r.configuration, r.fold, r.status) for r in runs] == [
        ('3d_lowres', 2, 'done'), ('3d_lowres', 3, 'failed'), ('3d_cascade_fullres', 2, 'failed'), ('3d_cascade_fullres', 3, 'failed')]
    assert 'boom' in runs[1].error and 'not run' in runs[2].error


def test_bad_requests_fail_before_any_run(folders):
    with pytest.raises(RunsError, match='no configuration'): run_folds(DATASET, ['3d_lowres'], [0], **FAST)
    with pytest.raises(RunsError, match='not found'): run_folds(DATASET, ['3d_fullres'], [0], **{**FAST, 'plans': 'NoSuchPlans'})
    with pytest.raises(ValueError): run_folds(DATASET, ['3d_fullres'], [0], trainer='NoSuchTrainer', **FAST)


def test_scheduler_runs_one_fold_per_gpu():
    lock, busy, seen = threading.Lock(), set(), []
    def job(j, gpu):
        with lock:
            assert gpu not in busy
            busy.add(gpu); seen.append((gpu, len(busy)))
        time.sleep(0.05)
        with lock: busy.discard(gpu)
        return j
    assert run_jobs(list(range(7)), job, ['0', '1', '2'], progress=False) == list(range(7))
    assert {g for g, _ in seen} == {'0', '1', '2'} and max(n for _, n in seen) == 3


def test_command_continues_an_interrupted_fold_on_a_gpu_slot(folders):
    """nnunet_nb_run_folds with --gpus (each fold in a child process with CUDA_VISIBLE_DEVICES): an interrupted fold
    continues from its checkpoint, not from scratch."""
    folder = folder_of(3)
    train(DATASET, '3d_fullres', 3, **FAST)      # one epoch, then make it look killed before the end
    shutil.rmtree(folder/'validation'); (folder/'checkpoint_final.pth').rename(folder/'checkpoint_latest.pth')
    first_epoch_start = load_checkpoint(folder/'checkpoint_latest.pth')['logging']['epoch_start_timestamps'][0]
    assert fold_state(folder) == 'interrupted'
    result = run_console_script('nnunet_nb_run_folds', '-d', DATASET, '-c', '3d_fullres', '-f', 3, '--gpus', 0,
                                '-p', PLANS, '-device', 'cpu', '--epochs', 2, '--iterations_per_epoch', 2,
                                '--val_iterations_per_epoch', 1, env=dict(os.environ))
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith('3d_fullres')]
    assert [(r[1], r[2]) for r in rows] == [('3', 'done')], result.stdout
    assert str(folder/'train_fold.ipynb') in result.stdout
    assert fold_state(folder) == 'finished' and injected(folder/'train_fold.ipynb')['continue_training'] is True
    ck = load_checkpoint(folder/'checkpoint_final.pth')
    assert ck['current_epoch'] == 2 and ck['logging']['epoch_start_timestamps'][0] == first_epoch_start
    assert 'on GPU 0' in result.stderr                # the log names the GPU slot the fold ran on


def test_command_exits_1_when_a_fold_failed(monkeypatch, capsys):
    from nnunet_nb import cli
    calls = []
    def fake(*args):
        calls.append(args)
        return [FoldRun('3d_fullres', 0, 'done', 1., 0.5), FoldRun('3d_fullres', 7, 'failed', 1., error='boom')]
    monkeypatch.setattr(runs_module, 'run_folds', fake)
    with pytest.raises(SystemExit) as e: cli.run_command(cli.run_folds, '-d', 4, '-c', '2d', '3d_fullres', '-f', 0, 7)
    assert e.value.code == 1
    assert calls[0][:3] == ('4', ['2d', '3d_fullres'], ['0', '7'])
    monkeypatch.setattr(runs_module, 'run_folds', lambda *a: [FoldRun('3d_fullres', 0, 'done', 1., 0.5)])
    cli.run_command(cli.run_folds, '-d', 4)                  # all done: returns normally (exit status 0)
    help_text = cli.cli_help(cli.run_folds)
    for flag in ('-d D', '-c C [C ...]', '-f F [F ...]', '--gpus', '-tr TR', '-p P', '--npz', '--epochs',
                 '--iterations_per_epoch', '--val_iterations_per_epoch', '-device DEVICE'):
        assert flag in help_text, flag
