"""Compare nnunet_nb's dataset fingerprint with nnU-Net v2.8.1's on the example datasets.

Usage: .venv/bin/python bench/compare_fingerprint.py [--scratch /work/scratch/fingerprint] [--np 2]
                                                     [--reference /work/refvenv/bin/nnUNetv2_extract_fingerprint]
                                                     [--datasets 100:ct:tiny 101:mr:tiny ...]

Makes the example datasets (ids 100-149) under SCRATCH/raw, runs the reference (a subprocess, black box) into
SCRATCH/preprocessed_reference and ours into SCRATCH/preprocessed_ours, and prints per dataset: whether
shapes_after_crop, spacings and median_relative_size_after_cropping are equal, and per channel and statistic the
relative difference |ours - reference| / reference std. A last column shows the same for the mean of ALL
foreground voxels pooled (no equal case weights), to show which rule the reference follows."""
from __future__ import annotations
import argparse, json, os, subprocess, sys, time
from pathlib import Path
import numpy as np
from nnunet_nb.synthetic import make_example_dataset
from nnunet_nb.fingerprint import extract_fingerprint, analyze_case
from nnunet_nb.dataset import find_training_cases, DatasetJson
from nnunet_nb.io import determine_reader_writer

DEFAULT = ['100:ct:tiny', '101:mr:tiny', '102:2d:tiny', '110:ct:small', '111:mr:small', '112:2d:small']
STATS = ['mean', 'std', 'median', 'min', 'max', 'percentile_00_5', 'percentile_99_5']


def run_reference(exe: str, dataset_id: int, scratch: Path, num_processes: int) -> tuple[dict, float]:
    env = dict(os.environ, nnUNet_raw=str(scratch/'raw'), nnUNet_preprocessed=str(scratch/'preprocessed_reference'),
               nnUNet_results=str(scratch/'results'))
    start = time.perf_counter()
    subprocess.run([exe, '-d', str(dataset_id), '-np', str(num_processes), '--clean', '--no_pbar'], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    (f,) = (scratch/'preprocessed_reference').glob(f'Dataset{dataset_id:03d}_*/dataset_fingerprint.json')
    return json.loads(f.read_text()), seconds


def run_ours(dataset_id: int, scratch: Path, num_processes: int) -> tuple[dict, float]:
    start = time.perf_counter()
    f = extract_fingerprint(dataset_id, num_processes=num_processes, clean=True, raw=scratch/'raw',
                            preprocessed=scratch/'preprocessed_ours', progress=False)
    return json.loads(f.read_text()), time.perf_counter() - start


def pooled_means(folder: Path) -> list[float]:
    "Mean of all foreground voxels thrown together (what the reference would give if it used every voxel unweighted)."
    cases = find_training_cases(folder)
    rw = determine_reader_writer(DatasetJson.from_file(folder/'dataset.json').to_dict(), next(iter(cases.values()))['images'][0])
    sums, counts = None, 0
    for c in cases.values():
        r = analyze_case(c['images'], c['label'], rw, 10**9)
        s = np.array([ch['mean'] * ch['n'] if ch['n'] else 0.0 for ch in r['intensities']])
        sums = s if sums is None else sums + s
        counts += r['intensities'][0]['n']
    return list(sums / counts)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--scratch', default='/work/scratch/fingerprint')
    p.add_argument('--np', type=int, default=2)
    p.add_argument('--reference', default='/work/refvenv/bin/nnUNetv2_extract_fingerprint')
    p.add_argument('--datasets', nargs='+', default=DEFAULT, help='id:kind:size')
    a = p.parse_args()
    scratch = Path(a.scratch)
    rows = []
    for spec in a.datasets:
        i, kind, size = spec.split(':'); i = int(i)
        folder = make_example_dataset(i, kind, size=size, raw=scratch/'raw', progress=False)
        ref, t_ref = run_reference(a.reference, i, scratch, a.np)
        ours, t_ours = run_ours(i, scratch, a.np)
        print(f'\n{folder.name} ({kind} {size}, {len(ref["spacings"])} cases)  reference {t_ref:.1f} s, ours {t_ours:.1f} s (-np {a.np})')
        same = {k: ours[k] == ref[k] for k in ('shapes_after_crop', 'spacings')}
        mrs = (ours['median_relative_size_after_cropping'], ref['median_relative_size_after_cropping'])
        print(f"  shapes_after_crop equal: {same['shapes_after_crop']}   spacings equal: {same['spacings']}   "
              f"median_relative_size_after_cropping ours {mrs[0]:.6f} ref {mrs[1]:.6f} equal: {mrs[0] == mrs[1]}")
        print('  channel ' + ''.join(f'{s:>22}' for s in STATS) + f"{'pooled-all mean':>22}")
        pooled = pooled_means(folder)
        for c, r in ref['foreground_intensity_properties_per_channel'].items():
            o = ours['foreground_intensity_properties_per_channel'][c]
            cells = []
            for s in STATS:
                cells.append(f'{o[s]:.4f}/{r[s]:.4f}' if o[s] != r[s] else f'= {r[s]:g}')
            cells.append(f'{pooled[int(c)]:.4f}')
            print(f'  {c:>7} ' + ''.join(f'{x:>22}' for x in cells))
            dev = {s: abs(o[s] - r[s]) / r['std'] for s in STATS}
            rows.append((folder.name, c, dev, abs(pooled[int(c)] - r['mean']) / r['std'], same, mrs[0] == mrs[1]))
    print('\nSummary: |ours - reference| / reference std, worst over channels (ours/ref shown above as "ours/ref"; "=" equal)')
    print(f"{'dataset':28}" + ''.join(f'{s:>16}' for s in STATS) + f"{'pooled mean':>14}{'geometry equal':>16}")
    for name in dict.fromkeys(r[0] for r in rows):
        rs = [r for r in rows if r[0] == name]
        worst = {s: max(r[2][s] for r in rs) for s in STATS}
        geometry = all(all(r[4].values()) and r[5] for r in rs)
        print(f'{name:28}' + ''.join(f'{worst[s]:16.2e}' for s in STATS) + f'{max(r[3] for r in rs):14.2e}{str(geometry):>16}')


if __name__ == '__main__':
    sys.exit(main())
