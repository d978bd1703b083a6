"""Data loading (nnunet_nb.dataloading): patch sampling and padding, foreground oversampling, augmentation keeps image
and label aligned, seeding, deep-supervision targets, regions, workers starting and stopping, cascade channels.
One tiny example dataset is made and preprocessed once for the module (a few seconds)."""
from __future__ import annotations
import math, multiprocessing, os, time
from pathlib import Path
import numpy as np
import pytest
import torch
from nnunet_nb.dataloading import (CaseStore, PatchSampler, SpatialAugment, augmentation_settings, crop_and_pad,
                                   deep_supervision_scales, forced_foreground, resample_patch, training_batches,
                                   validation_batches, DataloadingError, default_num_workers)
from nnunet_nb.planning import Plans
from nnunet_nb.paths import load_json


@pytest.fixture(scope='module')
def ct(tmp_path_factory):
    from nnunet_nb.synthetic import make_example_dataset
    from nnunet_nb.fingerprint import extract_fingerprint
    from nnunet_nb.planning import plan_experiment
    from nnunet_nb.preprocessing import preprocess
    root = tmp_path_factory.mktemp('dl')
    old = {v: os.environ.get(v) for v in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results')}
    for v in old: (root/v).mkdir(); os.environ[v] = str(root/v)
    raw = make_example_dataset(252, 'ct', size='tiny', num_cases=4, num_test_cases=0, num_processes=1, progress=False)
    extract_fingerprint(252, num_processes=1, progress=False)
    plans = Plans.load(plan_experiment(252))
    preprocess(252, configurations=('3d_fullres', '2d'), num_processes=1, progress=False)
    pre = root/'nnUNet_preprocessed'/raw.name
    yield dict(plans=plans, dataset_json=load_json(pre/'dataset.json'), pre=pre,
               folder=pre/plans.configuration('3d_fullres')['data_identifier'])
    for v, x in old.items():
        if x is None: os.environ.pop(v, None)
        else: os.environ[v] = x


def loader(ct, **kw):
    kw = {'num_workers': 0, 'seed': 3, **kw}
    return training_batches(ct['plans'], '3d_fullres', ct['dataset_json'], ct['folder'], **kw)


def test_crop_and_pad_pads_image_with_0_and_seg_with_minus_1(ct):
    store = CaseStore(ct['folder'])
    data, seg, _ = store.load(store.cases[0])
    big = [s + 10 for s in data.shape[1:]]
    d = crop_and_pad(data, [-5, -5, -5], big, 0, np.float32)
    s = crop_and_pad(seg, [-5, -5, -5], big, -1, np.int16)
    assert d.shape == (data.shape[0], *big) and s.shape == (1, *big)
    assert (d[:, :5] == 0).all() and (s[:, :5] == -1).all() and (s[:, :, :, -5:] == -1).all()
    np.testing.assert_array_equal(d[:, 5:-5, 5:-5, 5:-5], data[:])


def test_sampler_shapes_and_images_smaller_than_the_patch(ct):
    store = CaseStore(ct['folder'])
    shape = store.load(store.cases[0])[0].shape[1:]
    patch = [s + 8 for s in shape]                        # larger than every axis: must be padded
    b = PatchSampler(CaseStore(ct['folder'], store.cases[:1]), 3, patch, seed=0).next_batch()
    assert b['data'].shape == (3, 1, *patch) and b['seg'].shape == (3, 1, *patch)
    assert (b['seg'] == -1).any() and b['data'].dtype == np.float32


def test_foreground_is_forced_in_the_last_third(ct):
    assert forced_foreground(6) == [False] * 4 + [True] * 2
    val = validation_batches(ct['plans'], '3d_fullres', ct['dataset_json'], ct['folder'], batch_size=6,
                             deep_supervision=False, num_workers=0, seed=0)
    for _ in range(5):
        b = next(val)
        for i in (4, 5): assert (b['target'][i] > 0).any(), 'a forced sample without foreground'


def test_augmentation_keeps_image_and_label_aligned():
    rng = np.random.RandomState(0)
    seg = np.zeros((1, 1, 24, 40, 40), np.int16)
    seg[0, 0, 6:18, 8:30, 10:28] = 1; seg[0, 0, 10:14, 15:22, 12:20] = 2
    aug = SpatialAugment([16, 28, 28], (-math.pi / 6, math.pi / 6), p_rotation=1, p_scaling=1)
    for seed in range(4):
        np.random.seed(seed)
        out = aug(data=seg.astype(np.float32), seg=seg.copy())
        inside = out['seg'] >= 0
        agree = (np.rint(out['data']) == out['seg'])[inside].mean()
        assert agree > 0.97, agree
        assert (out['seg'] > 0).any()


def test_in_plane_augmentation_for_anisotropic_patches():
    s = augmentation_settings([8, 64, 64])
    assert s.in_plane_only and s.initial_patch_size[0] == 8 and s.rotation[1] == pytest.approx(math.pi)
    assert augmentation_settings([40, 112, 112]).initial_patch_size == [106, 179, 137]


def test_batches_are_seeded(ct):
    a, b, c = loader(ct, seed=5), loader(ct, seed=5), loader(ct, seed=6)
    for _ in range(2):
        x, y, z = next(a), next(b), next(c)
        assert torch.equal(x['data'], y['data']) and all(torch.equal(p, q) for p, q in zip(x['target'], y['target']))
    assert not torch.equal(x['data'], z['data'])


def test_deep_supervision_pyramid(ct):
    config = ct['plans'].configuration('3d_fullres')
    b = next(loader(ct))
    scales = deep_supervision_scales(config)
    assert scales[0] == [1.0, 1.0, 1.0] and len(scales) == len(config['architecture']['arch_kwargs']['strides']) - 1
    assert [tuple(t.shape) for t in b['target']] == [
        (config['batch_size'], 1, *[int(round(p * s)) for p, s in zip(config['patch_size'], sc)]) for sc in scales]
    assert b['data'].shape == (config['batch_size'], 1, *config['patch_size'])
    assert all(t.min() >= 0 for t in b['target'])     # -1 became background
    full, half = b['target'][0], b['target'][1]
    assert set(torch.unique(half).tolist()) <= set(torch.unique(full).tolist())


def test_regions_become_binary_channels(ct):
    ds = dict(ct['dataset_json'], labels={'background': 0, 'whole': [1, 2], 'lesion': 2}, regions_class_order=[1, 2])
    b = next(training_batches(ct['plans'], '3d_fullres', ds, ct['folder'], num_workers=0, deep_supervision=False, seed=1))
    t = b['target']
    assert t.shape[1] == 2 and set(torch.unique(t).tolist()) <= {0.0, 1.0}
    assert (t[:, 1] <= t[:, 0]).all()                 # lesion is inside whole


def test_2d_configuration(ct):
    config = ct['plans'].configuration('2d')
    b = next(training_batches(ct['plans'], '2d', ct['dataset_json'], ct['pre']/config['data_identifier'],
                              num_workers=0, batch_size=4))
    assert b['data'].shape == (4, 1, *config['patch_size'])


def test_workers_start_and_stop_cleanly(ct):
    before = set(p.pid for p in multiprocessing.active_children())
    with loader(ct, num_workers=2, seed=9) as l1:
        batches = [next(l1) for _ in range(3)]
        assert len(set(p.pid for p in multiprocessing.active_children()) - before) == 2
    deadline = time.time() + 10
    while set(p.pid for p in multiprocessing.active_children()) - before and time.time() < deadline: time.sleep(0.1)
    assert not set(p.pid for p in multiprocessing.active_children()) - before
    l2 = loader(ct, num_workers=2, seed=9)              # same seed and workers: same batches
    again = [next(l2) for _ in range(3)]
    l2.close()
    assert all(torch.equal(a['data'], b['data']) for a, b in zip(batches, again))


def test_num_workers_from_environment(monkeypatch):
    monkeypatch.setenv('nnUNet_n_proc_DA', '3'); assert default_num_workers() == 3
    monkeypatch.setenv('nnUNet_n_proc_DA', 'x')
    with pytest.raises(DataloadingError, match='nnUNet_n_proc_DA'): default_num_workers()


def test_cascade_channels(ct, tmp_path):
    store = CaseStore(ct['folder'])
    for c in store.cases: np.savez_compressed(tmp_path/f'{c}.npz', seg=np.maximum(store.load(c)[1][0], 0))
    val = validation_batches(ct['plans'], '3d_fullres', ct['dataset_json'], ct['folder'], previous_stage_folder=tmp_path,
                             deep_supervision=False, num_workers=0)
    b = next(val)
    labels = [1, 2]
    assert b['data'].shape[1] == 1 + len(labels)
    for i, l in enumerate(labels):                    # the previous stage was the ground truth: channels match it
        assert torch.equal(b['data'][:, 1 + i], (b['target'][:, 0] == l).float())
    tr = next(training_batches(ct['plans'], '3d_fullres', ct['dataset_json'], ct['folder'], previous_stage_folder=tmp_path,
                               num_workers=0))
    assert tr['data'].shape[1] == 3 and set(torch.unique(tr['data'][:, 1:]).tolist()) <= {0.0, 1.0}
    with pytest.raises(DataloadingError, match='previous-stage'):
        CaseStore(ct['folder'], previous_stage_folder=tmp_path/'missing')


def test_label_resampling_equals_per_label_interpolation():
    "The shortcut (interpolate only where a cell's corners disagree) gives the per-label linear + argmax result."
    rng = np.random.RandomState(1)
    lab = np.zeros((30, 40, 36), np.int16)
    z, y, x = np.ogrid[:30, :40, :36]
    lab[((z - 15) / 10.) ** 2 + ((y - 20) / 14.) ** 2 + ((x - 18) / 12.) ** 2 < 1] = 1
    lab[((z - 14) / 4.) ** 2 + ((y - 18) / 5.) ** 2 + ((x - 16) / 4.) ** 2 < 1] = 2
    lab[:3] = -1
    from nnunet_nb.dataloading import _rotation_matrix
    for _ in range(3):
        m = _rotation_matrix(rng.uniform(-0.5, 0.5, 3)) * rng.uniform(0.7, 1.4)
        _, s = resample_patch(lab[None].astype(np.float32), lab[None], m, (20, 28, 28))
        # brute force: every label (and "outside" as -1) through grid_sample on the padded input
        padded = np.pad(lab, 1, constant_values=-1)
        theta_in = torch.from_numpy(padded[None, None].astype(np.float32))
        labels = np.unique(padded)
        half = (np.array([20, 28, 28]) - 1) / 2
        centre = (np.array(lab.shape) - 1) / 2 + 1
        idx = np.indices((20, 28, 28)).reshape(3, -1).T - half
        coords = idx @ m.T + centre
        grid = torch.from_numpy((coords[:, ::-1] * 2 / (np.array(padded.shape)[::-1] - 1) - 1).astype(np.float32)).reshape(1, 20, 28, 28, 3)
        scores = torch.cat([torch.nn.functional.grid_sample((theta_in == int(l)).float(), grid, align_corners=True,
                                                            padding_mode='border') for l in labels], 1)[0]
        expected = labels[scores.argmax(0).numpy()]
        assert (s[0] == expected).mean() > 0.999, (s[0] == expected).mean()


def test_simulated_low_resolution_is_nearest_down_linear_up():
    from nnunet_nb.dataloading import SimulateLowResolution
    x = np.random.RandomState(0).rand(2, 1, 8, 12, 14).astype(np.float32)
    np.random.seed(0)
    out = SimulateLowResolution((0.75, 0.75), p_per_sample=1, p_per_channel=1)(data=x.copy())['data']
    t = torch.from_numpy(x)
    expected = torch.nn.functional.interpolate(torch.nn.functional.interpolate(t, [6, 9, 10], mode='nearest-exact'),
                                               [8, 12, 14], mode='trilinear').numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)
    kept = SimulateLowResolution((0.5, 0.5), p_per_sample=1, p_per_channel=1, ignore_axes=(0,))(data=x.copy())['data']
    assert kept.shape == x.shape and not np.allclose(kept, x)
