"""The 3d_lowres -> 3d_cascade_fullres path end to end on the tiny CT example: plans with both stages (made by hand,
the example is too small for the planner to add them), preprocessing, 3d_lowres training whose final validation
writes `predicted_next_stage/3d_cascade_fullres/{case}.npz`, cascade training on image + one-hot of those, the
errors when they are missing, and prediction of imagesTs (lowres first, then the cascade, from Python and the CLI)."""
from __future__ import annotations
import os, shutil, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
import torch

from nnunet_nb.synthetic import make_example_dataset
from nnunet_nb.fingerprint import extract_fingerprint
from nnunet_nb.planning import plan_experiment, Plans
from nnunet_nb.preprocessing import preprocess, load_case
from nnunet_nb.paths import save_json
from nnunet_nb.io import SimpleITKIO
from nnunet_nb.training import train, load_checkpoint, shrink_plans, TrainingError
from nnunet_nb.inference import Predictor, InferenceError, input_channels

DATASET, PLANS = 480, 'nnUNetPlansCascade'
FAST = dict(plans=PLANS, device='cpu', epochs=1, iterations_per_epoch=2, validation_iterations=1, seed=0, progress=False)
BIN = Path(sys.executable).parent


def cascade_plans(dataset:int, plans_name:str=PLANS)->Plans:
    "Tiny plans (3d_fullres) plus a 3d_lowres (spacing x2 in plane) and a 3d_cascade_fullres, in nnU-Net v2's keys."
    file = shrink_plans(dataset, target=plans_name, patch_size=[8, 32, 32])
    d = Plans.load(file).to_dict()
    full = d['configurations']['3d_fullres']
    low = Plans({'configurations': {'x': full}}).configuration('x')     # a deep copy
    low['data_identifier'] = f'{plans_name}_3d_lowres'
    low['spacing'] = [full['spacing'][0], 2 * full['spacing'][1], 2 * full['spacing'][2]]
    low['median_image_size_in_voxels'] = [full['median_image_size_in_voxels'][0]] + [s / 2 for s in full['median_image_size_in_voxels'][1:]]
    low['patch_size'] = [8, 16, 16]
    low['next_stage'] = '3d_cascade_fullres'
    d['configurations']['3d_lowres'] = low
    d['configurations']['3d_cascade_fullres'] = {'inherits_from': '3d_fullres', 'previous_stage': '3d_lowres'}
    plans = Plans(d)
    plans.save(file)
    return plans


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    "nnUNet_* folders with the tiny CT example, cascade plans, both configurations preprocessed, a 2-fold split."
    root = tmp_path_factory.mktemp('cascade')
    with pytest.MonkeyPatch.context() as mp:
        for v in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
            (root/v).mkdir(); mp.setenv(v, str(root/v))
        mp.setenv('nnUNet_n_proc_DA', '0')
        threads = torch.get_num_threads(); torch.set_num_threads(1)
        raw = make_example_dataset(DATASET, 'ct', size='tiny', raw=root/'nnUNet_raw', num_processes=1, progress=False)
        extract_fingerprint(DATASET, num_processes=1)
        plan_experiment(DATASET)
        plans = cascade_plans(DATASET)
        preprocess(DATASET, ['3d_fullres', '3d_lowres'], 1, plans_name=PLANS, progress=False)
        pre = root/'nnUNet_preprocessed'/raw.name
        cases = sorted(p.name[:-4] for p in (pre/f'{PLANS}_3d_fullres').glob('*.pkl'))
        # two folds: lowres folds 0 and 1 then predict every training case, as five folds would
        save_json([{'train': cases[3:], 'val': cases[:3]}, {'train': cases[:3], 'val': cases[3:]}], pre/'splits_final.json')
        yield dict(root=root, raw=raw, pre=pre, res=root/'nnUNet_results'/raw.name, plans=plans, cases=cases)
        torch.set_num_threads(threads)


def test_cascade_end_to_end(env):
    t0 = time.time()
    plans, pre, res, cases = env['plans'], env['pre'], env['res'], env['cases']
    assert plans.configuration('3d_cascade_fullres')['data_identifier'] == f'{PLANS}_3d_fullres'
    assert (pre/f'{PLANS}_3d_lowres').is_dir() and (pre/f'{PLANS}_3d_fullres').is_dir()

    # the cascade cannot start before the lowres folds exist
    with pytest.raises(TrainingError, match='3d_lowres') as e:
        train(DATASET, '3d_cascade_fullres', 0, **FAST)
    assert 'predicted_next_stage' in str(e.value)

    # 3d_lowres folds 0 and 1: their final validation writes the next stage's inputs on the fullres grid
    for fold in (0, 1): train(DATASET, '3d_lowres', fold, **FAST)
    next_stage = res/f'nnUNetTrainer__{PLANS}__3d_lowres'/'predicted_next_stage'/'3d_cascade_fullres'
    assert sorted(p.name for p in next_stage.iterdir()) == [f'{c}.npz' for c in cases]
    for c in cases:
        with np.load(next_stage/f'{c}.npz') as z: seg = z['seg']
        data, _, _ = load_case(pre/f'{PLANS}_3d_fullres', c)
        assert seg.shape[-3:] == tuple(data.shape[1:]), (seg.shape, data.shape)
        assert set(np.unique(seg)) <= {0, 1, 2}

    # the cascade: image channels + one channel per foreground label
    folder = train(DATASET, '3d_cascade_fullres', 0, **FAST)
    assert (folder/'checkpoint_final.pth').is_file() and (folder/'validation'/'summary.json').is_file()
    ck = load_checkpoint(folder/'checkpoint_final.pth')
    first = next(v for k, v in ck['network_weights'].items() if k.endswith('weight') and v.ndim == 5)
    assert first.shape[1] == 1 + 2 == input_channels(plans, '3d_cascade_fullres', ck['init_args']['dataset_json'])

    # missing lowres predictions: another trainer has no lowres run; a deleted case is named
    with pytest.raises(TrainingError, match='nnUNetTrainer_5epochs'):
        train(DATASET, '3d_cascade_fullres', 0, trainer='nnUNetTrainer_5epochs', **FAST)
    moved = env['root']/f'{cases[4]}.npz'
    shutil.move(next_stage/f'{cases[4]}.npz', moved)
    try:
        with pytest.raises(TrainingError, match=cases[4]):
            train(DATASET, '3d_cascade_fullres', 0, **FAST)
    finally:
        shutil.move(moved, next_stage/f'{cases[4]}.npz')

    # prediction of imagesTs: lowres (both folds), then the cascade on the raw-geometry lowres segmentations
    images = env['raw']/'imagesTs'
    test_cases = sorted(p.name[:-len('_0000.nii.gz')] for p in images.iterdir())
    low_out, casc_out = env['root']/'pred_lowres', env['root']/'pred_cascade'
    low = Predictor.from_model_folder(res/f'nnUNetTrainer__{PLANS}__3d_lowres', folds=(0, 1), use_mirroring=False, progress=False)
    low.predict_from_files(images, low_out, num_processes_preprocessing=1, num_processes_export=1)
    cascade = Predictor.from_model_folder(folder.parent, folds=(0,), use_mirroring=False, progress=False)
    with pytest.raises(InferenceError, match='previous_stage_predictions'):
        cascade.predict_from_files(images, casc_out)
    written = cascade.predict_from_files(images, casc_out, previous_stage_predictions=low_out,
                                         num_processes_preprocessing=1, num_processes_export=1)
    assert [p.name for p in written] == [f'{c}.nii.gz' for c in test_cases]
    for c in test_cases:
        image, props = SimpleITKIO().read_images([images/f'{c}_0000.nii.gz'])
        seg, seg_props = SimpleITKIO().read_seg(casc_out/f'{c}.nii.gz')
        assert seg.shape[1:] == image.shape[1:] and np.allclose(seg_props['spacing'], props['spacing'])
        assert set(np.unique(seg)) <= {0, 1, 2}
    # the cascade's input: the image, then one binary channel per foreground label from the lowres segmentation
    data, _ = cascade.preprocess([images/f'{test_cases[0]}_0000.nii.gz'], low_out/f'{test_cases[0]}.nii.gz')
    assert data.shape[0] == 3 and set(np.unique(data[1:])) <= {0, 1} and data[1:].sum(0).max() <= 1
    low_seg = SimpleITKIO().read_seg(low_out/f'{test_cases[0]}.nii.gz')[0]
    assert (data[1:].sum() > 0) == bool((low_seg > 0).any())
    # one case from Python with the previous stage's file, and the CLI with -prev_stage_predictions
    seg, _, _ = cascade.predict_case([images/f'{test_cases[0]}_0000.nii.gz'], previous_stage=low_out/f'{test_cases[0]}.nii.gz')
    assert np.array_equal(seg, SimpleITKIO().read_seg(casc_out/f'{test_cases[0]}.nii.gz')[0][0])
    cli_out = env['root']/'pred_cli'
    r = subprocess.run([str(BIN/'nnunet_nb_predict'), '-i', str(images), '-o', str(cli_out), '-d', str(DATASET),
                        '-c', '3d_cascade_fullres', '-p', PLANS, '-f', '0', '-device', 'cpu', '--disable_tta',
                        '-prev_stage_predictions', str(low_out), '-npp', '1', '-nps', '1', '--disable_progress_bar'],
                       capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for c in test_cases:
        assert np.array_equal(SimpleITKIO().read_seg(cli_out/f'{c}.nii.gz')[0], SimpleITKIO().read_seg(casc_out/f'{c}.nii.gz')[0])
    r = subprocess.run([str(BIN/'nnunet_nb_predict'), '-i', str(images), '-o', str(env['root']/'pred_cli2'), '-d', str(DATASET),
                        '-c', '3d_cascade_fullres', '-p', PLANS, '-f', '0', '-device', 'cpu'],
                       capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert r.returncode != 0 and 'prev_stage_predictions' in r.stderr + r.stdout and 'Traceback' not in r.stderr
    assert time.time() - t0 < 90, time.time() - t0
