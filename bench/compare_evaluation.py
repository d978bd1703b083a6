"""Compare nnunet_nb.evaluation with nnU-Net v2.8.1's evaluation commands (black-box oracle in /work/refvenv).

Builds the tiny CT example dataset, damages its labels into stand-in predictions, then runs on the same folders
  - `nnUNetv2_evaluate_simple REF PRED -l 1 2 3`                       vs evaluate_simple
  - `nnUNetv2_evaluate_folder REF PRED -djfile (regions) -pfile`       vs evaluate_folder_with_json
  - the same with an ignore label painted into the references
  - 2D PNG label maps (the 2D example dataset with 10% of the pixels relabelled)
  - `--chill` with one prediction removed
and compares the two summary.json files: same keys in the same order, same file names, numbers equal
(NaN == NaN); prints the largest absolute difference.
Usage: .venv/bin/python bench/compare_evaluation.py [--scratch /work/scratch/evaluation/compare] [--ref /work/refvenv]
"""
import argparse, json, os, shutil, subprocess, math
from pathlib import Path
import numpy as np, SimpleITK as sitk
from PIL import Image
from nnunet_nb.synthetic import make_example_dataset
from nnunet_nb.evaluation import evaluate_simple, evaluate_folder_with_json, labels_or_regions_from_dataset_json


def perturbed_predictions(labels_folder: Path, output_folder: Path, seed: int = 0):
    rng = np.random.default_rng(seed); output_folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(sorted(labels_folder.glob('*.nii.gz'))):
        image = sitk.ReadImage(str(f)); a = sitk.GetArrayFromImage(image); b = a.copy()
        if i == 0: b[b == 2] = 0
        elif i == 1: b = np.roll(b, 2, axis=2)
        else:
            noise = rng.random(b.shape) < 0.05; b[noise] = rng.integers(0, 3, noise.sum())
        out = sitk.GetImageFromArray(b.astype(np.uint8)); out.CopyInformation(image)
        sitk.WriteImage(out, str(output_folder/f.name))


def with_ignore(labels_folder: Path, output_folder: Path, ignore: int = 3):
    output_folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(labels_folder.glob('*.nii.gz')):
        image = sitk.ReadImage(str(f)); a = sitk.GetArrayFromImage(image).copy()
        a[:, :, : a.shape[2] // 3] = ignore          # the left third unannotated
        out = sitk.GetImageFromArray(a.astype(np.uint8)); out.CopyInformation(image)
        sitk.WriteImage(out, str(output_folder/f.name))


def compare(a, b, where=''):
    "Max abs difference of two JSON trees; raises on any structural difference."
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f'{where}: keys {list(a)} vs {list(b)}'
        return max([compare(a[k], b[k], f'{where}/{k}') for k in a] or [0.0])
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f'{where}: lengths differ'
        return max([compare(x, y, f'{where}[{i}]') for i, (x, y) in enumerate(zip(a, b))] or [0.0])
    if isinstance(a, str):
        assert a == b, f'{where}: {a!r} vs {b!r}'; return 0.0
    assert type(a) == type(b), f'{where}: {type(a).__name__} {a!r} vs {type(b).__name__} {b!r}'
    if math.isnan(a) or math.isnan(b):
        assert math.isnan(a) and math.isnan(b), f'{where}: {a} vs {b}'; return 0.0
    return abs(a - b)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--scratch', default='/work/scratch/evaluation/compare')
    p.add_argument('--ref', default='/work/refvenv')
    args = p.parse_args()
    scratch = Path(args.scratch); shutil.rmtree(scratch, ignore_errors=True); scratch.mkdir(parents=True)
    os.chdir(scratch)
    env = dict(os.environ, nnUNet_raw=str(scratch), nnUNet_preprocessed=str(scratch), nnUNet_results=str(scratch))
    ref_bin = Path(args.ref)/'bin'
    example = make_example_dataset(400, kind='ct', size='tiny', raw=scratch/'raw')
    ref, pred = 'raw/Dataset400_SyntheticCT/labelsTr', 'pred'
    perturbed_predictions(Path(ref), Path(pred))
    dj = json.loads((example/'dataset.json').read_text())
    regions = dict(dj, labels={'background': 0, 'organ': 1, 'lesion': 2, 'both': [1, 2], 'lesion only': [2]},
                   regions_class_order=[1, 2, 1, 2])
    Path('regions.json').write_text(json.dumps(regions))
    ignore = dict(dj, labels={'background': 0, 'organ': 1, 'lesion': 2, 'ignore': 3})
    Path('ignore.json').write_text(json.dumps(ignore))
    Path('plans.json').write_text(json.dumps({'plans_name': 'nnUNetPlans', 'image_reader_writer': 'SimpleITKIO'}))
    with_ignore(Path(ref), Path('ref_ignore'))
    example_2d = make_example_dataset(401, kind='2d', size='tiny', raw=scratch/'raw')
    ref_2d, pred_2d = 'raw/Dataset401_Synthetic2D/labelsTr', Path('pred_2d'); pred_2d.mkdir()
    rng = np.random.default_rng(1)
    for f in sorted(Path(ref_2d).glob('*.png')):
        a = np.asarray(Image.open(f)).copy(); noise = rng.random(a.shape) < 0.1
        a[noise] = rng.integers(0, a.max() + 1, noise.sum()); Image.fromarray(a).save(pred_2d/f.name)
    labels_2d = labels_or_regions_from_dataset_json(example_2d/'dataset.json')
    chill_pred = Path('pred_chill'); shutil.copytree(pred, chill_pred); (chill_pred/'case_003.nii.gz').unlink()

    runs = {
        'evaluate_simple -l 1 2 3': (
            [str(ref_bin/'nnUNetv2_evaluate_simple'), ref, pred, '-l', '1', '2', '3', '-o', 'theirs_simple.json', '-np', '1'],
            lambda: evaluate_simple(ref, pred, [1, 2, 3], 'ours_simple.json', num_processes=1), 'simple'),
        'evaluate_folder, regions': (
            [str(ref_bin/'nnUNetv2_evaluate_folder'), ref, pred, '-djfile', 'regions.json', '-pfile', 'plans.json',
             '-o', 'theirs_regions.json', '-np', '1'],
            lambda: evaluate_folder_with_json(ref, pred, 'regions.json', 'plans.json', 'ours_regions.json', num_processes=1),
            'regions'),
        'evaluate_folder, ignore label': (
            [str(ref_bin/'nnUNetv2_evaluate_folder'), 'ref_ignore', pred, '-djfile', 'ignore.json', '-pfile', 'plans.json',
             '-o', 'theirs_ignore.json', '-np', '2'],
            lambda: evaluate_folder_with_json('ref_ignore', pred, 'ignore.json', 'plans.json', 'ours_ignore.json', num_processes=2),
            'ignore'),
        '2D PNG, evaluate_simple': (
            [str(ref_bin/'nnUNetv2_evaluate_simple'), ref_2d, str(pred_2d), '-l', *map(str, labels_2d), '-o', 'theirs_2d.json', '-np', '1'],
            lambda: evaluate_simple(ref_2d, pred_2d, labels_2d, 'ours_2d.json', num_processes=1), '2d'),
        'evaluate_simple --chill': (
            [str(ref_bin/'nnUNetv2_evaluate_simple'), ref, str(chill_pred), '-l', '1', '2', '-o', 'theirs_chill.json',
             '-np', '1', '--chill'],
            lambda: evaluate_simple(ref, chill_pred, [1, 2], 'ours_chill.json', num_processes=1, chill=True), 'chill'),
    }
    lines = []
    for name, (command, ours, tag) in runs.items():
        subprocess.run(command, env=env, check=True, capture_output=True)
        ours()
        theirs_text, ours_text = Path(f'theirs_{tag}.json').read_text(), Path(f'ours_{tag}.json').read_text()
        theirs_json, ours_json = json.loads(theirs_text), json.loads(ours_text)
        diff = compare(theirs_json, ours_json)
        n_cases, keys = len(ours_json['metric_per_case']), list(ours_json['mean'])
        same_text = theirs_text.strip() == ours_text.strip()
        lines.append(f'{name}: {n_cases} cases, label keys {keys}: same keys and order, max abs diff {diff:.1e}, '
                     f'files byte-identical: {same_text}')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
