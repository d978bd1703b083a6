"""Benchmark: training-batch throughput of nnunet_nb's loader alone (no network), and of nnU-Net v2's for comparison.

    python bench/dataloading.py [--root /work/scratch/dataloading] [-c 3d_fullres] [-n 30] [--workers N] [--ref /work/refvenv/bin/python]

Makes the small example CT dataset (id 250) under ROOT if needed, with nnunet_nb's fingerprint, planning and
preprocessing, then times `next(loader)` for N batches after a warm-up, with 0 workers (batches made in this process)
and with `--workers` background workers. The reference (nnU-Net v2.8.1) is timed the same way in a subprocess of its
own virtualenv on the SAME preprocessed folder (its on-disk format is ours): nnUNetTrainer(...).get_dataloaders(),
with nnUNet_n_proc_DA set to the worker count. Nothing of the reference is imported here. Prints batches/s and the ratio.
"""
import argparse, json, os, subprocess, sys, textwrap, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout


def prepare(root:Path, dataset_id:int=250):
    for v, d in (('nnUNet_raw', 'raw'), ('nnUNet_preprocessed', 'pre'), ('nnUNet_results', 'res')):
        (root/d).mkdir(parents=True, exist_ok=True); os.environ[v] = str(root/d)
    from nnunet_nb.synthetic import make_example_dataset
    from nnunet_nb.fingerprint import extract_fingerprint
    from nnunet_nb.planning import plan_experiment
    from nnunet_nb.preprocessing import preprocess
    from nnunet_nb.paths import dataset_name
    try: name = dataset_name(dataset_id)
    except Exception: name = None
    if name is None or not (root/'raw'/name).is_dir():
        make_example_dataset(dataset_id, 'ct', size='small', raw=root/'raw')
        name = dataset_name(dataset_id)
    pre = root/'pre'/name
    if not (pre/'nnUNetPlans.json').is_file():
        extract_fingerprint(dataset_id, num_processes=2); plan_experiment(dataset_id)
    preprocess(dataset_id, configurations=('3d_fullres',), num_processes=2)
    return pre


def time_ours(pre:Path, configuration:str, n:int, workers:int)->float:
    from nnunet_nb.dataloading import training_batches
    with training_batches(pre/'nnUNetPlans.json', configuration, pre/'dataset.json', num_workers=workers, seed=0) as loader:
        for _ in range(max(2, workers)): next(loader)          # warm-up: workers started, queues filled once
        start = time.perf_counter()
        for _ in range(n): next(loader)
        return n / (time.perf_counter() - start)


REFERENCE = textwrap.dedent('''
    import json, os, sys, time, warnings
    warnings.filterwarnings('ignore')
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    pre, configuration, n, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    plans = json.load(open(os.path.join(pre, 'nnUNetPlans.json')))
    plans['continue_training'] = False   # 2.8.1's trainer pops this key (set by its run_training)
    dataset_json = json.load(open(os.path.join(pre, 'dataset.json')))
    trainer = nnUNetTrainer(plans, configuration, 0, dataset_json, device=torch.device('cpu'))
    trainer.initialize()
    tr, val = trainer.get_dataloaders()
    for _ in range(max(2, workers)): next(tr)
    start = time.perf_counter()
    for _ in range(n): next(tr)
    rate = n / (time.perf_counter() - start)
    print('RESULT', rate, flush=True)
    os._exit(0)   # its augmenter threads would otherwise keep the process alive
''')


def reference_view(pre:Path, configuration:str)->Path:
    "A preprocessed root for the reference: links to our files, without our bookkeeping files (it infers its format from the file endings)."
    import shutil
    from nnunet_nb.planning import Plans
    ident = Plans.load(pre/'nnUNetPlans.json').configuration(configuration)['data_identifier']
    view = pre.parent.parent/'pre_reference'/pre.name
    shutil.rmtree(view, ignore_errors=True); (view/ident).mkdir(parents=True)
    for f in ('nnUNetPlans.json', 'dataset.json', 'dataset_fingerprint.json'): shutil.copy(pre/f, view/f)
    for f in (pre/ident).iterdir():
        if f.suffix in ('.b2nd', '.pkl') and not f.name.startswith('.'): (view/ident/f.name).symlink_to(f)
    return view

def time_reference(python:str, pre:Path, configuration:str, n:int, workers:int):
    pre = reference_view(pre, configuration)
    env = dict(os.environ, nnUNet_n_proc_DA=str(workers), OMP_NUM_THREADS='1', nnUNet_compile='false',
               nnUNet_preprocessed=str(pre.parent), nnUNet_results=str(pre.parent.parent/'res_reference'))
    import signal, tempfile
    with tempfile.TemporaryFile('w+') as log:
        # its own session, and output to a file: the reference's augmenter processes outlive its main process
        proc = subprocess.Popen([python, '-c', REFERENCE, str(pre), configuration, str(n), str(workers)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try: proc.wait(timeout=1200)
        except subprocess.TimeoutExpired: pass
        finally:
            try: os.killpg(proc.pid, signal.SIGKILL)   # only the group this call started
            except ProcessLookupError: pass
            proc.wait()
        log.seek(0); text = log.read()
    out = subprocess.CompletedProcess(proc.args, proc.returncode, text, text)
    for line in out.stdout.splitlines():
        if line.startswith('RESULT'): return float(line.split()[1]), ''
    return None, (out.stderr or out.stdout)[-1500:]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--root', default='/work/scratch/dataloading')
    ap.add_argument('-c', '--configuration', default='3d_fullres')
    ap.add_argument('-n', type=int, default=30, help='batches timed')
    ap.add_argument('--workers', type=int, default=None, help='background workers (default: nnunet_nb default)')
    ap.add_argument('--ref', default='/work/refvenv/bin/python', help="reference interpreter ('' to skip)")
    a = ap.parse_args()
    from nnunet_nb.dataloading import default_num_workers
    workers = default_num_workers() if a.workers is None else a.workers
    pre = prepare(Path(a.root))
    rows = []
    for w in sorted({0, workers}):
        ours = time_ours(pre, a.configuration, a.n, w)
        ref, err = time_reference(a.ref, pre, a.configuration, a.n, w) if a.ref else (None, 'skipped')
        rows.append((w, ours, ref))
        print(f'{a.configuration}, {w} workers: nnunet_nb {ours:.2f} batches/s'
              + (f', nnU-Net v2 {ref:.2f} batches/s, ratio {ours / ref:.2f}x' if ref else f', reference not timed: {err.strip()[-300:]}'),
              flush=True)
    print(json.dumps([{'workers': w, 'nnunet_nb_batches_per_s': o, 'reference_batches_per_s': r} for w, o, r in rows]))


if __name__ == '__main__':
    main()
