"The whole pipeline through the console scripts, as a nnU-Net user would type it, on a tiny CT dataset and a tiny network."
import json, os
from pathlib import Path
import pytest
from conftest import run_console_script
from nnunet_nb.synthetic import make_example_dataset

PLANS = 'nnUNetPlansTiny'


def run(*args, env):
    return run_console_script(*args, env=env).stdout


def test_raw_to_evaluated_predictions(tmp_path, monkeypatch):
    env = dict(os.environ, OMP_NUM_THREADS='1', nnUNet_n_proc_DA='0')
    for name in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        env[name] = str(tmp_path/name); monkeypatch.setenv(name, str(tmp_path/name))
    raw = make_example_dataset(41, 'ct', size='tiny', raw=env['nnUNet_raw'], num_processes=1, progress=False)
    run('nnunet_nb_plan_and_preprocess', '-d', 41, '--verify_dataset_integrity', '-npfp', 1, '--no_pp', env=env)
    from nnunet_nb.training import shrink_plans   # a small network so that CPU training takes seconds
    shrink_plans(41, target=PLANS, patch_size=[8, 32, 32], base_features=4)
    run('nnunet_nb_preprocess', '-d', 41, '-plans_name', PLANS, '-c', '3d_fullres', '-np', 1, env=env)
    for fold in (0, 1):
        run('nnunet_nb_train', 41, '3d_fullres', fold, '-p', PLANS, '--epochs', 1, '--iterations_per_epoch', 2, '--val_iterations_per_epoch', 3,
            '-device', 'cpu', '--npz', env=env)
    model = Path(env['nnUNet_results'])/raw.name/f'nnUNetTrainer__{PLANS}__3d_fullres'
    for fold in (0, 1):
        assert (model/f'fold_{fold}'/'checkpoint_final.pth').exists() and (model/f'fold_{fold}'/'network_architecture.png').exists()
        assert json.loads((model/f'fold_{fold}'/'validation'/'summary.json').read_text())['foreground_mean']['Dice'] >= 0
    out = run('nnunet_nb_find_best_configuration', 41, '-c', '3d_fullres', '-p', PLANS, '-f', 0, 1, '-np', 1, env=env)
    assert 'nnunet_nb_predict' in out, out
    info = json.loads((Path(env['nnUNet_results'])/raw.name/'inference_information.json').read_text())
    pp_pkl = next(Path(env['nnUNet_results'], raw.name).rglob('postprocessing.pkl'))
    run('nnunet_nb_predict', '-i', raw/'imagesTs', '-o', tmp_path/'pred', '-d', 41, '-c', '3d_fullres', '-p', PLANS,
        '-f', 0, 1, '-device', 'cpu', '--disable_tta', '-npp', 1, '-nps', 1, env=env)
    run('nnunet_nb_apply_postprocessing', '-i', tmp_path/'pred', '-o', tmp_path/'pp', '-pp_pkl_file', pp_pkl, '-np', 1, env=env)
    run('nnunet_nb_evaluate_folder', raw/'labelsTs', tmp_path/'pp', '-djfile', raw/'dataset.json',
        '-pfile', model/'plans.json', '-np', 1, env=env)
    summary = json.loads((tmp_path/'pp'/'summary.json').read_text())
    assert len(summary['metric_per_case']) == len(list((raw/'labelsTs').iterdir()))
    assert set(summary['mean']) == {'1', '2'} and info['best_model_or_ensemble']
