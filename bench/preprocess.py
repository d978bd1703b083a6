"""Benchmark: nnunet_nb's preprocessing against nnU-Net v2's `nnUNetv2_preprocess`, same raw data, same plans.

    python bench/preprocess.py [--kind ct|mr|2d] [--size tiny|small|large] [-c 3d_fullres] [-np 2] [--ref /work/refvenv/bin]

Makes an example dataset (nnunet_nb.synthetic), lets the reference compute fingerprint and plans (not timed), copies
them into two preprocessed roots, then times `nnUNetv2_preprocess` and `nnunet_nb.preprocessing.preprocess` on the same
plans file with the same number of processes, one after the other. Peak memory is the largest sum of RSS over each
command's process tree (sampled every 50 ms). Fidelity: per case, max |ours - theirs| of the data, voxel agreement and
per-label Dice of the segmentations, equality of the sampled class locations.
The reference runs only as a subprocess from its own virtualenv; nothing of it is imported here.
"""
import argparse, os, pickle, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
import psutil, blosc2
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured


def dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2 * np.logical_and(a, b).sum() / s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--kind', default='ct', choices=['ct', 'mr', '2d'])
    ap.add_argument('--size', default='small', choices=['tiny', 'small', 'large'])
    ap.add_argument('--cases', type=int, default=None, help='number of training cases (default: by size)')
    ap.add_argument('-c', default='3d_fullres', help='configuration (default 3d_fullres; 2d for --kind 2d)')
    ap.add_argument('-np', type=int, default=2, help='processes, both tools')
    ap.add_argument('-d', type=int, default=240, help='dataset id')
    ap.add_argument('--ref', default='/work/refvenv/bin', help="folder with the reference's nnUNetv2_* commands")
    ap.add_argument('--work', default=None, help='working folder (default: a temporary one, removed)')
    a = ap.parse_args()
    config = '2d' if a.kind == '2d' and a.c == '3d_fullres' else a.c
    work = Path(a.work or tempfile.mkdtemp(prefix='bench_preprocess_'))
    raw, pre_ref, pre_ours = work/'raw', work/'pre_ref', work/'pre_ours'
    for f in (raw, pre_ref, pre_ours, work/'results'): f.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre_ref), nnUNet_results=str(work/'results'))

    from nnunet_nb.synthetic import make_example_dataset
    folder = make_example_dataset(a.d, a.kind, size=a.size, num_cases=a.cases, num_test_cases=0, raw=raw,
                                  num_processes=a.np, progress=False)
    name = folder.name
    print(f'{name}: {len(list((folder/"labelsTr").iterdir()))} cases ({a.kind}, {a.size}); configuration {config}; -np {a.np}')
    if not (pre_ref/name/'nnUNetPlans.json').exists():
        for cmd in (['nnUNetv2_extract_fingerprint', '-d', str(a.d), '-np', str(a.np)], ['nnUNetv2_plan_experiment', '-d', str(a.d)]):
            subprocess.run([str(Path(a.ref)/cmd[0])] + cmd[1:], env=env, check=True, stdout=subprocess.DEVNULL)
    # the same plans, fingerprint and dataset.json for both tools
    shutil.rmtree(pre_ours/name, ignore_errors=True); (pre_ours/name).mkdir(parents=True)
    for f in ('nnUNetPlans.json', 'dataset.json', 'dataset_fingerprint.json'): shutil.copy(pre_ref/name/f, pre_ours/name/f)

    t_ref, m_ref = run_measured([str(Path(a.ref)/'nnUNetv2_preprocess'), '-d', str(a.d), '-c', config, '-np', str(a.np)], env)
    env_ours = dict(env, nnUNet_preprocessed=str(pre_ours))
    code = (f'from nnunet_nb.preprocessing import preprocess; '
            f'preprocess({a.d}, [{config!r}], {a.np}, clean=True, progress=False)')
    t_ours, m_ours = run_measured([sys.executable, '-c', code], env_ours)

    import json
    ident = json.load(open(pre_ref/name/'nnUNetPlans.json'))['configurations'][config].get('data_identifier', f'nnUNetPlans_{config}')
    ref_dir, our_dir = pre_ref/name/ident, pre_ours/name/ident
    cases = sorted(p.name[:-5] for p in ref_dir.glob('*.b2nd') if not p.name.endswith('_seg.b2nd'))
    worst, agree, total, dices, loc_equal, loc_total, big = 0.0, 0, 0, {}, 0, 0, 0
    for c in cases:
        rd, od = blosc2.open(str(ref_dir/f'{c}.b2nd'))[:], blosc2.open(str(our_dir/f'{c}.b2nd'))[:]
        rs, os_ = blosc2.open(str(ref_dir/f'{c}_seg.b2nd'))[:], blosc2.open(str(our_dir/f'{c}_seg.b2nd'))[:]
        assert rd.shape == od.shape, (c, rd.shape, od.shape)
        big = max(big, rd[0].size)
        worst = max(worst, float(np.abs(rd - od).max()))
        agree += int((rs == os_).sum()); total += rs.size
        for l in np.unique(rs):
            if l > 0: dices.setdefault(int(l), []).append(dice(rs == l, os_ == l))
        rp, op = (pickle.load(open(d/f'{c}.pkl', 'rb'))['class_locations'] for d in (ref_dir, our_dir))
        for k in rp:
            loc_total += 1; loc_equal += int(np.array_equal(np.asarray(rp[k]), np.asarray(op.get(k, []))))
    size = lambda d: sum(p.stat().st_size for p in d.iterdir())
    print(f'{"":24s}{"nnU-Net v2.8.1":>16s}{"nnunet_nb":>12s}{"ratio":>8s}')
    print(f'{"wall time (s)":24s}{t_ref:16.1f}{t_ours:12.1f}{t_ref / t_ours:7.2f}x faster')
    print(f'{"peak RSS, tree (MB)":24s}{m_ref / 1e6:16.0f}{m_ours / 1e6:12.0f}{m_ours / m_ref:7.2f}x')
    print(f'{"folder size (MB)":24s}{size(ref_dir) / 1e6:16.1f}{size(our_dir) / 1e6:12.1f}{size(our_dir) / size(ref_dir):7.2f}x')
    print(f'fidelity over {len(cases)} cases (largest {big} voxels): data max |diff| {worst:.3g}; '
          f'segmentation voxel agreement {agree / total:.6f}; '
          + ', '.join(f'Dice label {l} {np.mean(v):.5f} (min {np.min(v):.5f})' for l, v in sorted(dices.items()))
          + f'; class locations identical {loc_equal}/{loc_total}')
    if a.work is None: shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
