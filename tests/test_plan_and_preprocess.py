"`nnunet_nb_plan_and_preprocess` end to end, as a user runs it, on every kind of example dataset."
import json
from pathlib import Path
import pytest
from conftest import run_console_script as run
from nnunet_nb.synthetic import make_example_dataset


@pytest.fixture
def env(nnunet_env): return nnunet_env


def files_and_mtimes(folder):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(Path(folder).rglob('*')) if p.is_file()}


@pytest.mark.parametrize('kind,configurations', [('ct', ['3d_fullres']), ('mr', ['2d', '3d_fullres']), ('2d', ['2d'])])
def test_every_kind(env, kind, configurations):
    raw = make_example_dataset(31, kind, size='tiny', raw=env['nnUNet_raw'], num_processes=1, progress=False)
    run('nnunet_nb_plan_and_preprocess', '-d', 31, '--verify_dataset_integrity', '-npfp', 1,
        '-c', *configurations, '-np', 1, env=env)
    out = Path(env['nnUNet_preprocessed'])/raw.name
    plans = json.loads((out/'nnUNetPlans.json').read_text())
    assert json.loads((out/'dataset_fingerprint.json').read_text())['spacings']
    cases = sorted(p.name[:-len('.nii.gz' if kind != '2d' else '.png')] for p in (raw/'labelsTr').iterdir())
    for c in configurations:
        folder = out/plans['configurations'][c]['data_identifier']
        assert sorted(p.name[:-5] for p in folder.glob('*.b2nd') if not p.name.endswith('_seg.b2nd')) == cases
        assert all((folder/f'{case}.pkl').exists() and (folder/f'{case}_seg.b2nd').exists() for case in cases)
    assert len(list((out/'gt_segmentations').iterdir())) == len(cases)
    if kind == '2d':
        assert plans['configurations']['2d']['patch_size'] and '3d_lowres' not in plans['configurations']


def test_rerun_skips_and_clean_redoes(env):
    raw = make_example_dataset(32, 'ct', size='tiny', raw=env['nnUNet_raw'], num_processes=1, progress=False)
    args = ('nnunet_nb_plan_and_preprocess', '-d', 32, '-npfp', 1, '-c', '3d_fullres', '-np', 1)
    run(*args, env=env)
    out = Path(env['nnUNet_preprocessed'])/raw.name
    first = files_and_mtimes(out)
    run(*args, env=env)
    second = files_and_mtimes(out)
    replanned = {'nnUNetPlans.json', 'dataset.json'}   # planning is redone (cheap, as nnU-Net); nothing else
    assert [f for f in first if f not in replanned and first[f] != second[f]] == [], 'a rerun rewrote finished work'
    run(*args, '--clean', env=env)
    third = files_and_mtimes(out)
    assert third['dataset_fingerprint.json'] != first['dataset_fingerprint.json']
    assert all(third[f] != first[f] for f in first if f.endswith('.b2nd'))
    assert not [p for p in out.rglob('*') if p.name.startswith('.') and 'part' in p.name], 'temporary files left behind'


def test_unknown_dataset_id(env):
    Path(env['nnUNet_raw']).mkdir()
    result = run('nnunet_nb_plan_and_preprocess', '-d', 998, env=env, check=False)
    assert result.returncode == 1 and 'No dataset with id 998' in result.stderr and 'Traceback' not in result.stderr


def test_broken_dataset_stops_before_writing(env):
    raw = make_example_dataset(33, 'ct', size='tiny', raw=env['nnUNet_raw'], num_processes=1, progress=False)
    victim = sorted((raw/'imagesTr').iterdir())[0]
    victim.write_bytes(b'not an image')
    result = run('nnunet_nb_plan_and_preprocess', '-d', 33, '--verify_dataset_integrity', '-npfp', 1, env=env, check=False)
    assert result.returncode == 1 and victim.name in result.stderr and 'Traceback' not in result.stderr
    assert not (Path(env['nnUNet_preprocessed'])/raw.name/'dataset_fingerprint.json').exists()


def test_missing_plans_names_the_command(env):
    make_example_dataset(34, 'ct', size='tiny', raw=env['nnUNet_raw'], num_processes=1, progress=False)
    result = run('nnunet_nb_preprocess', '-d', 34, '-c', '3d_fullres', env=env, check=False)
    assert result.returncode == 1 and 'nnunet_nb_plan_experiment' in result.stderr, result.stderr


def test_large_ct_example_is_planned_with_a_cascade():
    "The `large` CT example exists for the cascade: its drawn geometry (no voxels needed) plans 3d_lowres."
    import numpy as np
    from nnunet_nb import synthetic
    from nnunet_nb.planning import plan_from_fingerprint
    geometries = [synthetic.case_geometry(np.random.default_rng([0, synthetic._KIND_CODES['ct'], i]), 'ct', 'large', i)
                  for i in range(synthetic.EXAMPLE_SIZES['ct']['large'].num_cases)]
    stats = dict(max=1000., mean=50., median=50., min=-100., percentile_00_5=-50., percentile_99_5=300., std=40.)
    fingerprint = {'spacings': [list(g.spacing) for g in geometries], 'shapes_after_crop': [list(g.shape) for g in geometries],
                   'median_relative_size_after_cropping': 1.0, 'foreground_intensity_properties_per_channel': {'0': stats}}
    plans = plan_from_fingerprint(fingerprint, dict(synthetic.KIND_INFO['ct'], numTraining=len(geometries)), 'Dataset999_Large')
    assert {'3d_lowres', '3d_cascade_fullres'} <= set(plans.configuration_names)
    assert plans.configuration('3d_cascade_fullres')['previous_stage'] == '3d_lowres'
