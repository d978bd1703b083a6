"""Benchmark: nnunet_nb's predictor against nnU-Net v2's `nnUNetv2_predict_from_modelfolder`, same model, same cases.

    python bench/predict.py [--big 40 160 160] [--repeats 2] [-npp 2 -nps 2] [--ref /work/refvenv/bin]
    python bench/predict.py --memory 300 512 512     # peak memory of ours on one large CT-like volume

The model is nnU-Net v2's own fixture model folder (tests/fixtures/nnunetv2_tiny/model, 3d_fullres, patch 12x56x56).
Two workloads: the fixture's two small test cases, and (with --big Z Y X, 0 to skip) one synthetic CT-like case of
that many voxels with the fixture's spacing, so that the network dominates. Each workload is predicted with and
without mirroring TTA by both tools, on the CPU, each command `--repeats` times alternately; the fastest wall time
of each counts (the machine may be shared). Peak memory is the largest sum of RSS over each command's process tree
(sampled every 50 ms), from the command's first run. Both tools use the same numbers of preprocessing and export
workers (-npp, -nps). The outputs are compared (max |probability difference|, voxels equal).

`--memory Z Y X`: the peak resident memory of our predictor (process tree) on one synthetic CT-like volume of that
size (spacing 1.0 x 0.8 x 0.8 mm), with a randomly initialised tiny network (3 stages, 4-16 features, patch
64 x 160 x 160, 3 classes) whose plans resample to 1.0 x 0.85 x 0.85 mm, so that the export resamples the logits back
to the full grid. No TTA, no probabilities saved (the common case); `--memory-save-probabilities` adds them.
The reference runs only as a subprocess from its own virtualenv; nothing of it is imported here.
"""
import argparse, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
import psutil
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT/'tests'/'fixtures'/'nnunetv2_tiny'


def run_ours(args):
    "The measured command for nnunet_nb (run in a subprocess by `main`)."
    from nnunet_nb.inference import Predictor
    p = Predictor.from_model_folder(args.model, folds=(0,), use_mirroring=not args.disable_tta, progress=False)
    p.predict_from_files(args.input, args.output, save_probabilities=args.save_probabilities,
                         num_processes_preprocessing=args.npp, num_processes_export=args.nps)


def synthetic_case(file, shape, spacing_zyx, seed=0):
    "A CT-like volume (HU): air around a body ellipse with an organ and a small lesion, noise."
    import SimpleITK as sitk
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing='ij')
    image = np.full(shape, -1000., np.float32)
    body = (y / .9) ** 2 + (x / .8) ** 2 < 1
    image[body] = 0
    image[(z / .7) ** 2 + ((y - .1) / .4) ** 2 + ((x + .2) / .35) ** 2 < 1] = 65
    image[(z / .2) ** 2 + ((y - .1) / .1) ** 2 + ((x + .2) / .1) ** 2 < 1] = 110
    image += rng.normal(0, 15, shape).astype(np.float32) * body
    img = sitk.GetImageFromArray(image)
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    sitk.WriteImage(img, str(file), True)


def large_model_folder(folder):
    "A model folder in nnU-Net v2's layout with the fixture's plans, a tiny random network and a large patch."
    import json, torch
    from nnunet_nb.planning import build_network
    folder = Path(folder)
    if (folder/'fold_0'/'checkpoint_final.pth').exists(): return folder
    (folder/'fold_0').mkdir(parents=True, exist_ok=True)
    plans = json.loads((FIXTURE/'model'/'plans.json').read_text())
    config = plans['configurations']['3d_fullres']
    config.update(patch_size=[64, 160, 160], spacing=[1.0, 0.85, 0.85])
    config['architecture']['arch_kwargs'].update(n_stages=3, features_per_stage=[4, 8, 16], kernel_sizes=[[3, 3, 3]] * 3,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1])
    (folder/'plans.json').write_text(json.dumps(plans, indent=4))
    shutil.copy(FIXTURE/'model'/'dataset.json', folder/'dataset.json')
    torch.manual_seed(0)
    net = build_network(config['architecture'], 1, 3)
    torch.save({'network_weights': net.state_dict(), 'trainer_name': 'nnUNetTrainer', 'current_epoch': 0,
                'inference_allowed_mirroring_axes': (0, 1, 2), 'init_args': {'configuration': '3d_fullres', 'fold': 0}},
               folder/'fold_0'/'checkpoint_final.pth')
    return folder


def compare(ours, theirs):
    "max |probability difference| and fraction of equal voxels over the cases of two output folders."
    import SimpleITK as sitk
    worst, equal, total = 0., 0, 0
    for f in sorted(Path(theirs).glob('*.nii.gz')):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(ours)/f.name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        equal += int((a == b).sum()); total += a.size
        npz = f.name[:-7] + '.npz'
        if (Path(theirs)/npz).exists():
            worst = max(worst, float(np.abs(np.load(Path(ours)/npz)['probabilities'] - np.load(Path(theirs)/npz)['probabilities']).max()))
    return worst, equal / max(total, 1)


def measure_memory(a):
    work = Path(a.work or tempfile.mkdtemp(prefix='bench_predict_memory_'))
    (work/'large_input').mkdir(parents=True, exist_ok=True)
    file = work/'large_input'/'large_0000.nii.gz'
    if not file.exists(): synthetic_case(file, tuple(a.memory), (1.0, 0.8, 0.8))
    model = large_model_folder(work/'large_model')
    out = work/'large_output'; shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), '--run-ours', '--model', str(model), '--input', str(file.parent),
           '--output', str(out), '-npp', str(a.npp), '-nps', str(a.nps), '--disable-tta'] + \
          (['--save-probabilities'] if a.memory_save_probabilities else [])
    t, m = run_measured(cmd, dict(os.environ))
    voxels = int(np.prod(a.memory))
    print(f"large volume {a.memory[0]}x{a.memory[1]}x{a.memory[2]} ({voxels / 1e6:.0f} M voxels), 3 classes, no TTA"
          f"{', probabilities saved' if a.memory_save_probabilities else ''}: {t:.0f} s, peak RSS {m / 2**20:.0f} MB "
          f"({m / (voxels * 4):.1f}x one float32 copy of the image)")
    if not a.work: shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--big', type=int, nargs=3, default=[40, 160, 160], help='synthetic case shape z y x (0 0 0: skip)')
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('-npp', type=int, default=2, help='preprocessing workers, both tools')
    ap.add_argument('-nps', type=int, default=2, help='export workers, both tools')
    ap.add_argument('--ref', default='/work/refvenv/bin', help="folder with the reference's nnUNetv2_* commands")
    ap.add_argument('--work', default=None, help='working folder (default: a temporary one, removed)')
    ap.add_argument('--no-tta-only', action='store_true', help='skip the TTA runs')
    ap.add_argument('--memory', type=int, nargs=3, default=None, help='only measure our peak memory on a Z Y X volume')
    ap.add_argument('--memory-save-probabilities', action='store_true', help='with --memory: also write the .npz')
    # internal: the measured command for nnunet_nb
    ap.add_argument('--run-ours', action='store_true', help=argparse.SUPPRESS)
    for k in ('--model', '--input', '--output'): ap.add_argument(k, help=argparse.SUPPRESS)
    ap.add_argument('--disable-tta', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--save-probabilities', action='store_true', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.run_ours: return run_ours(a)
    if a.memory: return measure_memory(a)

    work = Path(a.work or tempfile.mkdtemp(prefix='bench_predict_'))
    env = dict(os.environ, nnUNet_raw=str(work/'raw'), nnUNet_preprocessed=str(work/'pre'), nnUNet_results=str(work/'res'))
    # The fixture's checkpoint names the trainer `nnUNetTrainer_bench`, which the reference cannot find in its own
    # package (its search then imports every trainer module and trips over an unrelated broken import). The network
    # is the plain nnUNetTrainer's, so the reference gets a copy of the folder whose checkpoint names that trainer.
    import torch
    ref_model = work/'ref_model'
    if not ref_model.exists():
        shutil.copytree(FIXTURE/'model', ref_model)
        ckpt = torch.load(ref_model/'fold_0'/'checkpoint_final.pth', map_location='cpu', weights_only=False)
        ckpt['trainer_name'] = 'nnUNetTrainer'
        torch.save(ckpt, ref_model/'fold_0'/'checkpoint_final.pth')
    workloads = {'fixture (2 cases ~12x50x50)': FIXTURE/'input'}
    if all(a.big):
        big = work/'big_input'; big.mkdir(parents=True, exist_ok=True)
        synthetic_case(big/'big_0000.nii.gz', tuple(a.big), (3.7, 1.6, 1.6))
        workloads[f'synthetic CT {a.big[0]}x{a.big[1]}x{a.big[2]}'] = big
    rows = []
    for wname, folder in workloads.items():
        for tta in ([False] if a.no_tta_only else [True, False]):
            tag = f"{wname.split()[0]}_{'tta' if tta else 'notta'}"
            flags = [] if tta else ['--disable_tta']
            ref_cmd = lambda out: [str(Path(a.ref)/'nnUNetv2_predict_from_modelfolder'), '-i', str(folder), '-o', str(out),
                                   '-m', str(ref_model), '-f', '0', '-device', 'cpu', '-npp', str(a.npp), '-nps', str(a.nps),
                                   '--save_probabilities'] + flags
            our_cmd = lambda out: [sys.executable, str(Path(__file__).resolve()), '--run-ours', '--model', str(FIXTURE/'model'),
                                   '--input', str(folder), '--output', str(out), '-npp', str(a.npp), '-nps', str(a.nps),
                                   '--save-probabilities'] + (['--disable-tta'] if not tta else [])
            times = {'ref': [], 'ours': []}; mem = {}
            for r in range(a.repeats):
                for who, cmd in (('ref', ref_cmd), ('ours', our_cmd)):
                    out = work/f'{tag}_{who}'
                    shutil.rmtree(out, ignore_errors=True)
                    t, m = run_measured(cmd(out), env)
                    times[who].append(t); mem.setdefault(who, m)
            diff, equal = compare(work/f'{tag}_ours', work/f'{tag}_ref')
            rows.append((wname, tta, min(times['ref']), min(times['ours']), mem['ref'], mem['ours'], diff, equal))
            print(f"{wname:32} TTA {'on ' if tta else 'off'}  reference {min(times['ref']):6.1f} s {mem['ref']/2**20:6.0f} MB | "
                  f"ours {min(times['ours']):6.1f} s {mem['ours']/2**20:6.0f} MB | time {min(times['ours'])/min(times['ref']):.2f}x, "
                  f"memory {mem['ours']/mem['ref']:.2f}x | max |dp| {diff:.1e}, voxels equal {equal:.4%}", flush=True)
    print('\n| workload | TTA | reference s | ours s | time ratio | reference peak MB | ours peak MB | memory ratio | max abs prob diff | voxels equal |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for w, tta, tr, to, mr, mo, d, e in rows:
        print(f"| {w} | {'on' if tta else 'off'} | {tr:.1f} | {to:.1f} | {to/tr:.2f}x | {mr/2**20:.0f} | {mo/2**20:.0f} | {mo/mr:.2f}x | {d:.1e} | {e:.4%} |")
    if not a.work: shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
