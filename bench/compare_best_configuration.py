"""Compare nnunet_nb.postprocessing.find_best_configuration with nnU-Net v2.8.1's `nnUNetv2_find_best_configuration`
(black-box oracle in /work/refvenv, run as a command).

For each scenario: the tiny CT example dataset (10 cases, organ 1 + lesion 2), real plans from our planner
(2d and 3d_fullres), gt_segmentations, and two simulated configurations (`simulate_crossvalidation`: 5 folds of
validation segmentations + .npz + .pkl with seeded noise and stray islands). The whole tree is copied; the reference
runs on one copy, ours on the other. Compared: every configuration's and ensemble's cross-validation Dice, the winner,
the postprocessing steps (postprocessing.json), the Dice before/after postprocessing, every crossval summary.json
(max abs difference), the segmentations of the ensembles and of `postprocessed/` (voxel equality), and that each tool
applies the other's postprocessing.pkl with identical output. Prints a markdown table.
Usage: .venv/bin/python bench/compare_best_configuration.py [--scratch /work/scratch/postprocessing/compare] [--ref /work/refvenv]
"""
import argparse, json, math, os, shutil, subprocess, sys, time
from pathlib import Path
import numpy as np, SimpleITK as sitk

SCENARIOS = [  # name, (noise, island probability, seed) for 2d and 3d_fullres, ensembling allowed
    ('ensemble wins', (2.0, 0.7, 1), (1.4, 0.4, 2), True),
    ('no ensembling', (2.0, 0.7, 1), (1.4, 0.4, 2), False),
    ('few islands', (1.2, 0.1, 3), (1.6, 0.0, 4), True),
    ('3d clean, 2d islands', (1.0, 0.9, 5), (0.8, 0.0, 6), True),
    ('nothing to remove', (0.3, 0.0, 7), (0.3, 0.0, 8), True),
]
DATASET = 520


def env_for(root: Path) -> dict:
    env = dict(os.environ, nnUNet_raw=str(root/'raw'), nnUNet_preprocessed=str(root/'preprocessed'),
               nnUNet_results=str(root/'results'), nnUNet_def_n_proc='1', OMP_NUM_THREADS='1')
    return env


def set_env(root: Path):
    os.environ.update(env_for(root))


def build_base(base: Path):
    "Raw dataset, fingerprint, plans and gt_segmentations (shared by all scenarios)."
    if (base/'done').exists(): return
    shutil.rmtree(base, ignore_errors=True); set_env(base)
    from nnunet_nb.synthetic import make_example_dataset
    from nnunet_nb.fingerprint import extract_fingerprint
    from nnunet_nb.planning import plan_experiment
    folder = make_example_dataset(DATASET, kind='ct', size='tiny', num_cases=10, num_test_cases=0, progress=False, num_processes=1)
    extract_fingerprint(DATASET, num_processes=1)
    plan_experiment(DATASET)
    shutil.copytree(folder/'labelsTr', base/'preprocessed'/folder.name/'gt_segmentations')
    (base/'done').write_text('ok')


def seg_files(folder: Path):
    return sorted(p.name for p in folder.glob('*.nii.gz'))


def same_segmentations(a: Path, b: Path) -> tuple[int, int]:
    "(files, files with any differing voxel)."
    names = seg_files(a); assert names == seg_files(b), f'{a} vs {b}: different files'
    bad = sum(not np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a/n))), sitk.GetArrayFromImage(sitk.ReadImage(str(b/n))))
              for n in names)
    return len(names), bad


def max_summary_difference(a: Path, b: Path) -> float:
    A, B = json.loads(a.read_text()), json.loads(b.read_text())
    diff = 0.0
    for part in ('foreground_mean',):
        for m in A[part]: diff = max(diff, abs(A[part][m] - B[part][m]))
    for k in A['mean']:
        for m in A['mean'][k]:
            x, y = A['mean'][k][m], B['mean'][k][m]
            if not (math.isnan(x) and math.isnan(y)): diff = max(diff, abs(x - y))
    assert len(A['metric_per_case']) == len(B['metric_per_case'])
    return diff


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--scratch', default='/work/scratch/postprocessing/compare')
    p.add_argument('--ref', default='/work/refvenv')
    args = p.parse_args()
    scratch = Path(args.scratch); scratch.mkdir(parents=True, exist_ok=True)
    base = scratch/'base'; build_base(base)
    from nnunet_nb.paths import load_json, model_folder_name
    from nnunet_nb.postprocessing import simulate_crossvalidation, find_best_configuration, apply_postprocessing
    name = next((base/'raw').iterdir()).name
    plans = load_json(base/'preprocessed'/name/'nnUNetPlans.json')
    dataset_json = load_json(base/'raw'/name/'dataset.json')
    rows = []
    for title, c2d, c3d, ensembling in SCENARIOS:
        ours, ref = scratch/'ours', scratch/'ref'
        for r in (ours, ref): shutil.rmtree(r, ignore_errors=True)
        shutil.copytree(base, ours)
        for config, (noise, islands, seed) in (('2d', c2d), ('3d_fullres', c3d)):
            simulate_crossvalidation(ours/'raw'/name/'labelsTr', ours/'results'/name/model_folder_name(configuration=config),
                                     dataset_json, plans, noise=noise, island_probability=islands, seed=seed)
        shutil.copytree(ours, ref)
        command = [f'{args.ref}/bin/nnUNetv2_find_best_configuration', str(DATASET), '-c', '2d', '3d_fullres', '-np', '1']
        if not ensembling: command.append('--disable_ensembling')
        t = time.perf_counter()
        out = subprocess.run(command, env=env_for(ref), capture_output=True, text=True)
        t_ref = time.perf_counter() - t
        if out.returncode: print(out.stdout[-3000:], out.stderr[-3000:]); raise SystemExit('reference failed')
        set_env(ours)
        t = time.perf_counter()
        find_best_configuration(DATASET, ('2d', '3d_fullres'), num_processes=1, allow_ensembling=ensembling, verbose=False)
        t_ours = time.perf_counter() - t
        info_ref = load_json(ref/'results'/name/'inference_information.json')
        info_ours = load_json(ours/'results'/name/'inference_information.json')
        assert list(info_ref['all_results']) == list(info_ours['all_results']), (info_ref['all_results'], info_ours['all_results'])
        dice_diff = max(abs(info_ref['all_results'][k] - info_ours['all_results'][k]) for k in info_ref['all_results'])
        b_ref, b_ours = info_ref['best_model_or_ensemble'], info_ours['best_model_or_ensemble']
        same_winner = b_ref['selected_model_or_models'] == b_ours['selected_model_or_models']
        source_ref, source_ours = Path(b_ref['postprocessing_file']).parent, Path(b_ours['postprocessing_file']).parent
        pp_ref, pp_ours = load_json(source_ref/'postprocessing.json'), load_json(source_ours/'postprocessing.json')
        same_pp = (pp_ref['postprocessing_fns'], pp_ref['postprocessing_kwargs']) == (pp_ours['postprocessing_fns'], pp_ours['postprocessing_kwargs'])
        post_diff = abs(b_ref['result_on_crossval_post_pp'] - b_ours['result_on_crossval_post_pp'])
        summaries = [max_summary_difference(f, ours/f.relative_to(ref)) for f in sorted((ref/'results').rglob('summary.json'))
                     if 'fold_' not in str(f)]
        n_files, n_bad = same_segmentations(source_ref/'postprocessed', source_ours/'postprocessed')
        for e in sorted((ref/'results'/name/'ensembles').glob('ensemble___*')) if ensembling else []:
            k, bad = same_segmentations(e, ours/e.relative_to(ref)); n_files += k; n_bad += bad
        # cross-application: nnU-Net applies our pkl, we apply nnU-Net's pkl, on the same folder
        crossval = source_ours
        subprocess.run([f'{args.ref}/bin/nnUNetv2_apply_postprocessing', '-i', str(crossval), '-o', str(scratch/'ref_applies_ours'),
                        '-pp_pkl_file', str(source_ours/'postprocessing.pkl'), '-np', '1', '-plans_json', str(crossval/'plans.json'),
                        '-dataset_json', str(crossval/'dataset.json')], env=env_for(ref), check=True, capture_output=True)
        apply_postprocessing(crossval, scratch/'ours_applies_ref', source_ref/'postprocessing.pkl', 1)
        k, bad = same_segmentations(scratch/'ref_applies_ours', scratch/'ours_applies_ref'); n_files += k; n_bad += bad
        shutil.rmtree(scratch/'ref_applies_ours'); shutil.rmtree(scratch/'ours_applies_ref')
        best = ' + '.join(m['configuration'] for m in b_ours['selected_model_or_models'])
        steps = ', '.join(str(k['labels_or_regions']) for k in pp_ours['postprocessing_kwargs']) or 'none'
        scores = info_ours['all_results']
        by_kind = [next((f'{v:.4f}' for k, v in scores.items() if k.endswith(suffix)), '-') for suffix in ('__2d', '__3d_fullres', '0_1_2_3_4')]
        rows.append((title, ' / '.join(by_kind), best,
                     'yes' if same_winner else 'NO', steps, 'yes' if same_pp else 'NO',
                     f"{b_ours['result_on_crossval_pre_pp']:.4f} -> {b_ours['result_on_crossval_post_pp']:.4f}",
                     f'{max(dice_diff, post_diff, *summaries):.1e}', f'{n_files - n_bad}/{n_files}', f'{t_ref:.1f} / {t_ours:.1f}'))
        print(rows[-1], flush=True)
    print('\n| scenario | CV Dice 2d / 3d_fullres / ensemble (ours) | winner | same winner | postprocessing kept (ours) | same steps | Dice before -> after pp | max abs diff of all Dice / summaries | segmentations identical | seconds ref / ours |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for r in rows: print('| ' + ' | '.join(r) + ' |')


if __name__ == '__main__':
    main()
