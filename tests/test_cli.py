"End-to-end runs of the console scripts, as a user types them."
import configparser, hashlib, os, sys
from pathlib import Path
import pytest
from conftest import run_console_script as run

ROOT = Path(__file__).resolve().parents[1]


def console_scripts():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    return [line.split('=')[0].strip() for line in cfg['DEFAULT']['console_scripts'].split() if line.strip()]


def folder_digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob('*')) if p.is_file()}


@pytest.mark.parametrize('command', console_scripts())
def test_every_command_has_help(command):
    out = run(command, '-h', env=None).stdout
    assert 'usage:' in out and len(out.splitlines()) > 2, out


def test_example_dataset_verify_and_overlays(nnunet_env, tmp_path):
    run('nnunet_nb_make_example_dataset', '-d', 12, '--kind', 'mr', '--size', 'tiny', '-np', 1, env=nnunet_env)
    name = run('nnunet_nb_find_dataset', '12', env=nnunet_env).stdout.strip()
    assert name.startswith('Dataset012_')
    folder = Path(nnunet_env['nnUNet_raw'])/name
    before = folder_digest(folder)
    run('nnunet_nb_verify_dataset', '-d', 12, '-np', 2, env=nnunet_env)
    run('nnunet_nb_plot_overlay_pngs', '-d', name, '-o', tmp_path/'png', '-np', 1, env=nnunet_env)
    assert len(list((tmp_path/'png').glob('*.png'))) == len(list((folder/'labelsTr').iterdir()))
    assert folder_digest(folder) == before


def test_prediction_pngs_and_dice_table(nnunet_env, tmp_path):
    "A folder of predictions (here: copies of two labels) -> one PNG per case, and evaluate_folder prints a Dice table."
    import shutil
    run('nnunet_nb_make_example_dataset', '-d', 14, '--kind', 'ct', '--size', 'tiny', '-np', 1, env=nnunet_env)
    folder = next(Path(nnunet_env['nnUNet_raw']).glob('Dataset014_*'))
    predictions = tmp_path/'predictions'; predictions.mkdir()
    for f in sorted((folder/'labelsTr').iterdir())[:2]: shutil.copy(f, predictions/f.name)
    run('nnunet_nb_plot_overlay_pngs', '-d', 14, '-o', tmp_path/'png', '--predictions', predictions, '-np', 1, env=nnunet_env)
    assert sorted(p.name for p in (tmp_path/'png').iterdir()) == ['case_000.png', 'case_001.png']
    plans = tmp_path/'plans.json'; plans.write_text('{"image_reader_writer": "SimpleITKIO"}')
    out = run('nnunet_nb_evaluate_folder', folder/'labelsTr', predictions, '-djfile', folder/'dataset.json', '-pfile', plans,
              '-o', tmp_path/'summary.json', '-np', 1, '--chill', env=nnunet_env).stdout
    assert 'case_000.nii.gz' in out and 'case_001.nii.gz' in out and 'foreground mean' in out and '1.0000' in out, out
    bad = run('nnunet_nb_plot_overlay_pngs', '-d', 14, '-o', tmp_path/'png2', '--predictions', tmp_path/'png', env=nnunet_env, check=False)
    assert bad.returncode == 1 and 'holds no .nii.gz segmentations' in bad.stderr


def test_existing_dataset_is_not_overwritten(nnunet_env):
    run('nnunet_nb_make_example_dataset', '-d', 13, '--kind', '2d', '--size', 'tiny', '-np', 1, env=nnunet_env)
    folder = next(Path(nnunet_env['nnUNet_raw']).glob('Dataset013_*'))
    before = folder_digest(folder)
    result = run('nnunet_nb_make_example_dataset', '-d', 13, '--kind', '2d', '--size', 'tiny', '--seed', 1, env=nnunet_env, check=False)
    assert result.returncode == 1 and folder.name in result.stderr and 'Traceback' not in result.stderr
    assert folder_digest(folder) == before


def test_broken_dataset_fails_with_file_named(nnunet_env):
    run('nnunet_nb_make_example_dataset', '-d', 14, '--kind', 'ct', '--size', 'tiny', '-np', 1, env=nnunet_env)
    folder = next(Path(nnunet_env['nnUNet_raw']).glob('Dataset014_*'))
    victim = sorted((folder/'labelsTr').iterdir())[0]
    victim.unlink()
    result = run('nnunet_nb_verify_dataset', '-d', 14, '-np', 1, env=nnunet_env, check=False)
    assert result.returncode == 1
    assert victim.name in result.stderr and 'Traceback' not in result.stderr, result.stderr


def test_unset_variable_is_named(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith('nnUNet_')}
    result = run('nnunet_nb_verify_dataset', '-d', 1, env=env, check=False)
    assert result.returncode == 1 and 'nnUNet_raw' in result.stderr and 'Traceback' not in result.stderr


def test_unknown_dataset_id(nnunet_env):
    Path(nnunet_env['nnUNet_raw']).mkdir()
    result = run('nnunet_nb_find_dataset', '999', env=nnunet_env, check=False)
    assert result.returncode == 1 and 'No dataset with id 999' in result.stderr
