"""Training benchmark: nnunet_nb's `train` vs the reference nnU-Net v2 (black box, in its own venv via subprocess)
on the same plans and the same preprocessed inputs, equal budget (epochs x iterations).

Reports seconds per training iteration (epoch time / (iterations + validation iterations), first epoch left out)
and the final validation Dice (foreground mean of validation/summary.json) of both.

    .venv/bin/python bench/train.py [--dataset 470] [--kind ct] [--size tiny] [--epochs 10] [--iterations 25]
                                    [--val_iterations 5] [--features 32] [--configuration 3d_fullres] [--real_plans]
                                    [--speed_only] [--threads 1]
                                    [--scratch /work/scratch/training/bench]
--real_plans trains the planner's own configuration unchanged (nnUNetPlans: its patch, batch and network); without
it, a copy of the plans with a smaller patch and --features first-stage features is trained. --speed_only skips both
tools' final validation (a 3D sliding-window validation with the real plans takes minutes per case on a small CPU).
The reference is driven by a short script run with /work/refvenv/bin/python (it subclasses its trainer only to set
the epoch/iteration numbers, which nnUNetv2_train has no flags for). nnunet_nb itself never imports nnunetv2."""
import argparse, json, os, shutil, subprocess, sys, textwrap, time
from pathlib import Path

REF_PYTHON = '/work/refvenv/bin/python'
PLANS = 'nnUNetPlansBench'

REFERENCE_SCRIPT = textwrap.dedent("""
    import sys, json, torch
    torch.set_num_threads(int(sys.argv[6]))
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    pre, plans_name, epochs, iterations, val_iterations = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    class nnUNetTrainer_bench(nnUNetTrainer):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cpu')):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = epochs, iterations, val_iterations
    plans = json.load(open(f'{pre}/{plans_name}.json')); plans['continue_training'] = False; dataset_json = json.load(open(f'{pre}/dataset.json'))
    t = nnUNetTrainer_bench(plans, sys.argv[7], 0, dataset_json, device=torch.device('cpu'))
    t.run_training()
    if sys.argv[8] == 'validate': t.perform_actual_validation(False)
    print('OUTPUT', t.output_folder)
""")


def env_for(root:Path)->dict:
    env = os.environ.copy()
    for v in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'): env[v] = str(root/v)
    return env


def per_iteration_seconds(logging:dict, iterations:int, val_iterations:int)->float:
    times = [e - s for s, e in zip(logging['epoch_start_timestamps'], logging['epoch_end_timestamps'])][1:]
    return sum(times) / len(times) / (iterations + val_iterations)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--dataset', type=int, default=470); ap.add_argument('--kind', default='ct')
    ap.add_argument('--size', default='tiny'); ap.add_argument('--epochs', type=int, default=10)
    ap.add_argument('--iterations', type=int, default=25); ap.add_argument('--val_iterations', type=int, default=5)
    ap.add_argument('--features', type=int, default=32, help='features of the first stage (plans: 32)')
    ap.add_argument('--configuration', default='3d_fullres'); ap.add_argument('--real_plans', action='store_true')
    ap.add_argument('--speed_only', action='store_true', help='no final validation (no Dice): s/iteration only')
    ap.add_argument('--threads', type=int, default=1); ap.add_argument('--scratch', default='/work/scratch/training/bench')
    a = ap.parse_args()
    ours_root, ref_root = Path(a.scratch)/'ours', Path(a.scratch)/'reference'
    for r in (ours_root, ref_root):
        shutil.rmtree(r, ignore_errors=True)
        for v in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'): (r/v).mkdir(parents=True)
    os.environ.update(env_for(ours_root)); os.environ['nnUNet_n_proc_DA'] = '0'
    import torch; torch.set_num_threads(a.threads)
    from nnunet_nb.synthetic import make_example_dataset
    from nnunet_nb.fingerprint import extract_fingerprint
    from nnunet_nb.planning import plan_experiment, Plans
    from nnunet_nb.paths import preprocessed_folder
    from nnunet_nb.preprocessing import preprocess
    from nnunet_nb.training import train, shrink_plans, load_checkpoint
    raw = make_example_dataset(a.dataset, a.kind, size=a.size, num_processes=1, progress=False)
    extract_fingerprint(a.dataset, num_processes=1)
    plan_experiment(a.dataset)
    c = a.configuration
    plans_file = (shrink_plans(a.dataset, target=PLANS, configuration=c, base_features=a.features) if not a.real_plans else
                  Plans({**Plans.load(preprocessed_folder()/raw.name/'nnUNetPlans.json').to_dict(), 'plans_name': PLANS}
                        ).save(preprocessed_folder()/raw.name/f'{PLANS}.json'))
    preprocess(a.dataset, [c], 1, plans_name=PLANS, progress=False)
    # the reference gets the same raw data, fingerprint, dataset.json and plans, and preprocesses them itself
    shutil.copytree(raw, ref_root/'nnUNet_raw'/raw.name)
    ref_pre = ref_root/'nnUNet_preprocessed'/raw.name; ref_pre.mkdir()
    for f in ('dataset.json', 'dataset_fingerprint.json', f'{PLANS}.json'):
        shutil.copy(plans_file.parent/f, ref_pre/f)
    subprocess.run([str(Path(REF_PYTHON).parent/'nnUNetv2_preprocess'), '-d', str(a.dataset), '-plans_name', PLANS,
                    '-c', c, '-np', '1'], env=env_for(ref_root), check=True, capture_output=True)
    shutil.copy(ref_pre/'splits_final.json', plans_file.parent) if (ref_pre/'splits_final.json').exists() else None

    trainer = 'nnUNetTrainer'
    if a.speed_only:
        from nnunet_nb.training import Trainer
        class nnUNetTrainerNoFinalValidation(Trainer):
            def final_validation(self, *args, **kwargs): return None
        trainer = nnUNetTrainerNoFinalValidation
    t0 = time.time()
    folder = train(a.dataset, c, 0, trainer, plans=PLANS, device='cpu', epochs=a.epochs, iterations_per_epoch=a.iterations,
                   validation_iterations=a.val_iterations, seed=0, progress=False)
    ours_wall = time.time() - t0
    ours = load_checkpoint(folder/'checkpoint_final.pth')
    ours_dice = None if a.speed_only else json.loads((folder/'validation/summary.json').read_text())['foreground_mean']['Dice']

    t0 = time.time()
    env = env_for(ref_root); env['nnUNet_n_proc_DA'] = '0'
    out = subprocess.run([REF_PYTHON, '-c', REFERENCE_SCRIPT, str(ref_pre), PLANS, str(a.epochs), str(a.iterations),
                          str(a.val_iterations), str(a.threads), c,
                          'skip' if a.speed_only else 'validate'], env=env, capture_output=True, text=True)
    ref_wall = time.time() - t0
    if out.returncode != 0: sys.exit(f'reference failed:\n{out.stderr[-3000:]}')
    ref_folder = Path(next(l for l in out.stdout.splitlines() if l.startswith('OUTPUT')).split(' ', 1)[1])
    ref = torch.load(ref_folder/'checkpoint_final.pth', map_location='cpu', weights_only=False)
    ref_dice = None if a.speed_only else json.loads((ref_folder/'validation/summary.json').read_text())['foreground_mean']['Dice']
    same_split = json.loads((plans_file.parent/'splits_final.json').read_text()) == json.loads((ref_pre/'splits_final.json').read_text())
    result = {'dataset': raw.name, 'plans': PLANS, 'configuration': c, 'real_plans': a.real_plans, 'budget': f'{a.epochs} epochs x {a.iterations} (+{a.val_iterations} val) iterations',
              'threads': a.threads, 'same_split': same_split,
              'ours_s_per_iteration': round(per_iteration_seconds(ours['logging'], a.iterations, a.val_iterations), 4),
              'reference_s_per_iteration': round(per_iteration_seconds(ref['logging'], a.iterations, a.val_iterations), 4),
              'ours_wall_s': round(ours_wall, 1), 'reference_wall_s': round(ref_wall, 1),
              'ours_val_dice': ours_dice and round(ours_dice, 4), 'reference_val_dice': ref_dice and round(ref_dice, 4)}
    result['ratio_s_per_iteration'] = round(result['ours_s_per_iteration'] / result['reference_s_per_iteration'], 3)
    print(json.dumps(result, indent=2))


if __name__ == '__main__': main()
