"""Compare nnunet_nb's experiment planning with nnU-Net v2.8.1's, value by value.

For each example dataset (ids 150-154 in a scratch folder) the REFERENCE extracts the fingerprint and
plans (default ExperimentPlanner and nnUNetPlannerResEncM, optionally L/XL); nnunet_nb plans from the SAME
fingerprint file, so only planning is compared. With --our-fingerprint, nnunet_nb's own fingerprint (04) is
planned too and compared with the same reference plans. --probes plans hand-written fingerprints (the ones
tests/test_planning.py uses, ids 190-199, one dummy image each) with both tools.

The reference runs as a black box through its command line (a side virtualenv, default /work/refvenv);
nnunetv2 is never imported here.

    .venv/bin/python bench/compare_plans.py [--scratch /work/scratch/planning] [--planners ExperimentPlanner nnUNetPlannerResEncM]
                                            [--datasets 150 151 152 153] [--probes] [--diff-only] [--our-fingerprint]
"""
from __future__ import annotations
import argparse, json, os, shutil, subprocess, sys, time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent/'tests'))

# id -> (kind, size)
EXAMPLES = {150: ('ct', 'small'), 151: ('mr', 'small'), 152: ('2d', 'small'), 153: ('ct', 'large'), 154: ('mr', 'large')}


def run(cmd, env, log=None):
    t = time.time()
    r = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f'{" ".join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}')
    return time.time() - t


def flatten(d, prefix=''):
    "{'a': {'b': [1, 2]}} -> {'a.b': [1, 2]} (lists are kept whole: one row per planned value)."
    out = {}
    for k, v in d.items():
        key = f'{prefix}{k}'
        if isinstance(v, dict) and v: out.update(flatten(v, key + '.'))
        else: out[key] = v
    return out


def short(v, width=44):
    s = json.dumps(v, separators=(',', ':'))
    return s if len(s) <= width else s[:width - 3] + '...'


def compare(ours: dict, ref: dict, title: str, diff_only=False) -> tuple[int, int]:
    "Print one table per configuration (and one for the top level); returns (#equal, #different)."
    n_eq = n_diff = 0
    tops = {k: v for k, v in ours.items() if k != 'configurations'}, {k: v for k, v in ref.items() if k != 'configurations'}
    tables = [('top level', *tops)]
    names = list(dict.fromkeys(list(ref.get('configurations', {})) + list(ours.get('configurations', {}))))
    for c in names:
        tables.append((c, ours.get('configurations', {}).get(c, {'<missing>': True}), ref.get('configurations', {}).get(c, {'<missing>': True})))
    print(f'\n=== {title}')
    print(f'    configurations: ours {list(ours.get("configurations", {}))}  reference {list(ref.get("configurations", {}))}')
    for name, a, b in tables:
        fa, fb = flatten(a), flatten(b)
        rows = []
        for k in dict.fromkeys(list(fb) + list(fa)):
            va, vb = fa.get(k, '<missing>'), fb.get(k, '<missing>')
            eq = va == vb
            n_eq += eq; n_diff += not eq
            if not (diff_only and eq): rows.append((k, va, vb, eq))
        if not rows: print(f'  [{name}] all {len(fa)} values equal'); continue
        print(f'  [{name}]')
        print(f'    {"key":<52} {"ours":<44} {"reference":<44} equal')
        for k, va, vb, eq in rows:
            print(f'    {k:<52} {short(va):<44} {short(vb):<44} {"yes" if eq else "NO <<<"}')
    return n_eq, n_diff


def write_probe_dataset(raw: Path, pre: Path, dataset_id: int, name: str, fingerprint: dict, dataset_json: dict):
    "A raw dataset with one dummy image (the reference picks its reader from it) plus the given fingerprint."
    import SimpleITK as sitk
    folder = f'Dataset{dataset_id:03d}_{name}'
    (raw/folder/'imagesTr').mkdir(parents=True, exist_ok=True)
    ending = dataset_json.get('file_ending', '.nii.gz')
    img = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32))
    for c in range(len(dataset_json['channel_names'])):
        sitk.WriteImage(img, str(raw/folder/'imagesTr'/f'case_000_{c:04d}{ending}'))
    (raw/folder/'dataset.json').write_text(json.dumps(dataset_json, indent=4))
    (pre/folder).mkdir(parents=True, exist_ok=True)
    for f in (pre/folder).glob('*.json'): f.unlink()
    (pre/folder/'dataset_fingerprint.json').write_text(json.dumps(fingerprint, indent=4))
    return folder


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--scratch', default='/work/scratch/planning')
    ap.add_argument('--refvenv', default='/work/refvenv')
    ap.add_argument('--datasets', type=int, nargs='*', default=[150, 151, 152, 153])
    ap.add_argument('--planners', nargs='+', default=['ExperimentPlanner', 'nnUNetPlannerResEncM'])
    ap.add_argument('--probes', action='store_true', help='also compare on the hand-written test fingerprints')
    ap.add_argument('--diff-only', action='store_true', help='print only values that differ')
    ap.add_argument('--our-fingerprint', action='store_true', help="also plan from nnunet_nb's own fingerprint (04_fingerprint)")
    ap.add_argument('-np', type=int, default=8)
    args = ap.parse_args()

    from nnunet_nb.planning import plan_experiment
    scratch = Path(args.scratch)
    raw, pre, res, ours_pre = scratch/'raw', scratch/'pre', scratch/'res', scratch/'ours_pre'
    for f in (raw, pre, res, ours_pre): f.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res))
    os.environ.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res))
    refbin = Path(args.refvenv)/'bin'

    jobs = []  # (title, folder name, our preprocessed root)
    for i in args.datasets:
        kind, size = EXAMPLES[i]
        names = [p.name for p in raw.glob(f'Dataset{i:03d}_*')]
        if not names:
            from nnunet_nb.synthetic import make_example_dataset
            make_example_dataset(i, kind=kind, size=size, raw=raw, num_processes=args.np)
            names = [p.name for p in raw.glob(f'Dataset{i:03d}_*')]
        name = names[0]
        if not (pre/name/'dataset_fingerprint.json').is_file():
            t = run([refbin/'nnUNetv2_extract_fingerprint', '-d', i, '-np', args.np], env)
            print(f'reference fingerprint {name}: {t:.1f} s')
        jobs.append((f'{name} ({kind} {size})', name))
    if args.probes:
        from test_planning import PROBES
        for i, (name, fp, dj, _) in PROBES.items():
            jobs.append((f'probe {i} {name}', write_probe_dataset(raw, pre, i, name, fp, dj)))

    totals, totals_fp = [0, 0], [0, 0]
    for title, name in jobs:
        for planner in args.planners:
            t_ref = run([refbin/'nnUNetv2_plan_experiment', '-d', name.split('_')[0][7:], '-pl', planner], env)
            ours_folder = ours_pre/name
            ours_folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(pre/name/'dataset_fingerprint.json', ours_folder/'dataset_fingerprint.json')
            t = time.time()
            ours_file = plan_experiment(name, planner, preprocessed=ours_pre, raw=raw)
            t_ours = time.time() - t
            ref = json.loads((pre/name/ours_file.name).read_text())
            n_eq, n_diff = compare(json.loads(ours_file.read_text()), ref,
                                   f'{title} / {planner}  (reference {t_ref:.1f} s incl. start-up, ours {t_ours:.2f} s)', args.diff_only)
            totals[0] += n_eq; totals[1] += n_diff
            print(f'    -> {n_eq} equal, {n_diff} different')
            if args.our_fingerprint and not title.startswith('probe'):
                from nnunet_nb.fingerprint import extract_fingerprint
                fp_pre = scratch/'ours_fp_pre'
                extract_fingerprint(name, raw=raw, preprocessed=fp_pre)
                f2 = plan_experiment(name, planner, preprocessed=fp_pre, raw=raw)
                n_eq, n_diff = compare(json.loads(f2.read_text()), ref, f'{title} / {planner} from OUR fingerprint', args.diff_only)
                totals_fp[0] += n_eq; totals_fp[1] += n_diff
                print(f'    -> {n_eq} equal, {n_diff} different')
    print(f'\nTOTAL (same fingerprint, planning only): {totals[0]} planned values equal, {totals[1]} different')
    if args.our_fingerprint: print(f'TOTAL (our fingerprint vs reference plans): {totals_fp[0]} equal, {totals_fp[1]} different')
    return 0 if totals[1] == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
