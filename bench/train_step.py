"""CPU allocator benchmark: training steps and inference passes with glibc's allocator defaults vs
`inference.keep_freed_memory` (freed blocks up to 1 GiB kept for reuse), same network, same batch, same seeds.

Each measurement runs in its own process (the allocator setting is per process), the two modes alternate, and the
script prints, per configuration of the example's own plans (`nnUNetPlans`, unchanged): median seconds per training
step and per inference pass, the ratio kept/default, minor page faults, peak resident memory, and whether the losses
agree (they must: only memory reuse changes).

    .venv/bin/python bench/train_step.py [--kind ct] [--size small] [--configurations 2d 3d_fullres] [--steps 4]
                                         [--repeats 2] [--threads 2] [--scratch /work/scratch/bench_alloc]
"""
import argparse, json, os, subprocess, sys, textwrap
from pathlib import Path
import numpy as np

PROBE = textwrap.dedent("""
    import json, os, resource, sys, time
    mode, pre, configuration, steps, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    from nnunet_nb.inference import keep_freed_memory
    applied = keep_freed_memory() if mode == 'keep' else False
    import torch
    torch.set_num_threads(threads)
    from nnunet_nb.network import network_from_plans, loss_from_plans
    from nnunet_nb.training import make_optimizer, train_step, set_deep_supervision
    from nnunet_nb.dataloading import deep_supervision_scales
    plans, dataset_json = json.load(open(f'{pre}/nnUNetPlans.json')), json.load(open(f'{pre}/dataset.json'))
    c = plans['configurations'][configuration]
    torch.manual_seed(0)
    net, loss = network_from_plans(plans, configuration, dataset_json), loss_from_plans(plans, configuration, dataset_json)
    optimizer = make_optimizer(net)
    g = torch.Generator().manual_seed(0)
    b, patch = c['batch_size'], c['patch_size']
    data = torch.randn(b, 1, *patch, generator=g)
    label = torch.randint(0, len(dataset_json['labels']), (b, 1, *patch), generator=g).float()
    targets = [torch.nn.functional.interpolate(label, scale_factor=tuple(float(f) for f in s), mode='nearest')
               for s in deep_supervision_scales(c)]
    batch = {'data': data, 'target': targets}
    train_step(net, batch, loss, optimizer)  # warm-up
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step_s = []
    for _ in range(steps):
        t = time.perf_counter(); value = train_step(net, batch, loss, optimizer); step_s.append(time.perf_counter() - t)
    step_faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    net.eval(); set_deep_supervision(net, False)
    pass_s = []
    with torch.no_grad():
        tile = data[:1]; net(tile)
        for i in range(steps):
            t = time.perf_counter(); net(torch.flip(tile, (2,)) if i % 2 else tile); pass_s.append(time.perf_counter() - t)
    print(json.dumps({'applied': applied, 'step_s': step_s, 'pass_s': pass_s, 'loss': value, 'faults_per_step': step_faults,
                      'max_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      'batch': b, 'patch': patch}))
""")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--kind', default='ct'); ap.add_argument('--size', default='small')
    ap.add_argument('--configurations', nargs='+', default=['2d', '3d_fullres'])
    ap.add_argument('--steps', type=int, default=4); ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--threads', type=int, default=2); ap.add_argument('--scratch', default='/work/scratch/bench_alloc')
    a = ap.parse_args()
    root = Path(a.scratch)
    for v in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        (root/v).mkdir(parents=True, exist_ok=True); os.environ[v] = str(root/v)
    from nnunet_nb.inference import GLIBC_MALLOC_VARIABLES
    env = {k: v for k, v in os.environ.items() if k not in ('NNUNET_NB_MALLOC', *GLIBC_MALLOC_VARIABLES)}
    from nnunet_nb.synthetic import make_example_dataset
    from nnunet_nb.fingerprint import extract_fingerprint
    from nnunet_nb.planning import plan_experiment
    raw = make_example_dataset(471, a.kind, size=a.size, overwrite=True, num_processes=1, progress=False)
    extract_fingerprint(471, num_processes=1, clean=True)
    plan_experiment(471)
    pre = root/'nnUNet_preprocessed'/raw.name
    rows = []
    for configuration in a.configurations:
        runs = {'default': [], 'keep': []}
        for _ in range(a.repeats):
            for mode in ('default', 'keep'):
                out = subprocess.run([sys.executable, '-c', PROBE, mode, str(pre), configuration, str(a.steps), str(a.threads)],
                                     capture_output=True, text=True, env=env)
                if out.returncode: sys.exit(f'{configuration} {mode} failed:\n{out.stderr[-3000:]}')
                runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = lambda mode, key: float(np.median([s for r in runs[mode] for s in r[key]]))
        d, k = runs['default'][0], runs['keep'][0]
        rows.append({'configuration': configuration, 'batch': d['batch'], 'patch': d['patch'], 'applied': k['applied'],
                     'step_s_default': round(med('default', 'step_s'), 3), 'step_s_keep': round(med('keep', 'step_s'), 3),
                     'step_ratio': round(med('keep', 'step_s') / med('default', 'step_s'), 3),
                     'pass_s_default': round(med('default', 'pass_s'), 3), 'pass_s_keep': round(med('keep', 'pass_s'), 3),
                     'pass_ratio': round(med('keep', 'pass_s') / med('default', 'pass_s'), 3),
                     'page_faults_per_step': [int(d['faults_per_step']), int(k['faults_per_step'])],
                     'max_rss_gb': [round(d['max_rss_gb'], 2), round(k['max_rss_gb'], 2)],
                     'same_loss': all(r['loss'] == d['loss'] for m in runs.values() for r in m)})
        print(json.dumps(rows[-1]), flush=True)


if __name__ == '__main__': main()
