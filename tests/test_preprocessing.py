"Preprocessing: normalisation, resampling operators against scipy, separate z, class locations, atomic writes, rerun."
import os, signal, subprocess, sys, time, pickle
from pathlib import Path
import numpy as np
import pytest
from scipy import ndimage

from nnunet_nb.synthetic import make_example_dataset
from nnunet_nb.fingerprint import dataset_fingerprint
from nnunet_nb.paths import save_json, PathsError
from nnunet_nb.dataset import find_training_cases
from nnunet_nb.preprocessing import (
    PreprocessingError, ct_normalization, zscore_normalization, no_normalization, rescale_to_0_1, rgb_to_0_1, normalize,
    zoom_operator, out_of_plane_operator, apply_operator, separate_z_axis, compute_new_shape, resample_image,
    resample_segmentation, sample_class_locations, classes_for_oversampling, preprocess_case, preprocess,
    complete_cases, load_case, save_case, STAMP_FILE)


# ---------------------------------------------------------------- a tiny dataset with hand-written plans
def make_plans(dataset_name, fingerprint, spacing=(3.0, 0.8, 0.8), scheme='CTNormalization', channels=1):
    "Plans in nnU-Net v2's schema, written by hand so these tests do not depend on the planner."
    kwargs = lambda is_seg, order: dict(is_seg=is_seg, order=order, order_z=0, force_separate_z=None)
    base = dict(data_identifier='nnUNetPlans_3d_fullres', preprocessor_name='DefaultPreprocessor', batch_size=2,
                patch_size=[8, 24, 24], spacing=list(spacing), normalization_schemes=[scheme] * channels,
                use_mask_for_norm=[False] * channels,
                resampling_fn_data='resample_data_or_seg_to_shape', resampling_fn_data_kwargs=kwargs(False, 3),
                resampling_fn_seg='resample_data_or_seg_to_shape', resampling_fn_seg_kwargs=kwargs(True, 1),
                resampling_fn_probabilities='resample_data_or_seg_to_shape', resampling_fn_probabilities_kwargs=kwargs(False, 1))
    return dict(dataset_name=dataset_name, plans_name='nnUNetPlans', transpose_forward=[0, 1, 2], transpose_backward=[0, 1, 2],
                image_reader_writer='SimpleITKIO', configurations={'3d_fullres': base},
                foreground_intensity_properties_per_channel=fingerprint['foreground_intensity_properties_per_channel'])


@pytest.fixture()
def ct(tmp_path, monkeypatch):
    "A tiny CT dataset with fingerprint, dataset.json and plans in a fresh nnUNet_preprocessed."
    for v in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        (tmp_path/v).mkdir(); monkeypatch.setenv(v, str(tmp_path/v))
    folder = make_example_dataset(211, 'ct', size='tiny', num_cases=4, num_test_cases=0, raw=tmp_path/'nnUNet_raw',
                                  num_processes=1, progress=False)
    pre = tmp_path/'nnUNet_preprocessed'/folder.name; pre.mkdir()
    fp = dataset_fingerprint(folder, num_processes=1, progress=False)
    save_json(fp, pre/'dataset_fingerprint.json')
    (pre/'dataset.json').write_bytes((folder/'dataset.json').read_bytes())
    save_json(make_plans(folder.name, fp), pre/'nnUNetPlans.json')
    return folder, pre


# ---------------------------------------------------------------- normalisation
def test_normalisation_schemes():
    props = dict(mean=10., std=5., percentile_00_5=0., percentile_99_5=30.)
    np.testing.assert_allclose(ct_normalization(np.array([-50., 10., 20., 99.], np.float32), intensity_properties=props), [-2, 0, 2, 4])
    x = np.array([1., 2., 3., 4.], np.float32)
    z = zscore_normalization(x.copy())
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-6
    seg = np.array([-1, 0, 1, 0])
    zm = zscore_normalization(x.copy(), seg, use_mask=True)
    assert zm[0] == 1 and abs(zm[1:].mean()) < 1e-6 and abs(zm[1:].std() - 1) < 1e-6   # outside the mask untouched
    np.testing.assert_allclose(rescale_to_0_1(np.array([-1., 1., 3.], np.float32)), [0, .5, 1])
    np.testing.assert_allclose(rgb_to_0_1(np.array([0., 51., 255.], np.float32)), [0, .2, 1])
    with pytest.raises(PreprocessingError, match='0..255'): rgb_to_0_1(np.array([-3., 4.]))
    assert no_normalization(np.array([7], np.int16)).dtype == np.float32
    z0 = zscore_normalization(np.full(5, 3., np.float32))   # constant image: no division by zero
    assert np.all(np.isfinite(z0))
    data = np.stack([x.reshape(1, 1, 4), x.reshape(1, 1, 4)]).astype(np.float32)
    out = normalize(data, seg.reshape(1, 1, 1, 4), ['NoNormalization', 'RescaleTo01Normalization'], [False, False], {})
    np.testing.assert_allclose(out[0, 0, 0], x); np.testing.assert_allclose(out[1, 0, 0], [0, 1/3, 2/3, 1], rtol=1e-6)
    with pytest.raises(PreprocessingError, match='Unknown normalisation'):
        normalize(data[:1], seg.reshape(1, 1, 1, 4), ['Magic'], [False], {})
    with pytest.raises(PreprocessingError, match='channel'):
        normalize(data, seg.reshape(1, 1, 1, 4), ['NoNormalization'], [False], {})


# ---------------------------------------------------------------- resampling operators
@pytest.mark.parametrize('order', [0, 1, 3])
def test_operators_equal_scipy_zoom(order):
    rng = np.random.default_rng(order)
    v = rng.normal(size=(7, 12, 10))
    for new_shape in [(11, 9, 23), (3, 30, 5)]:
        ours = v
        for a in range(3): ours = apply_operator(ours, zoom_operator(v.shape[a], new_shape[a], order), a)
        theirs = ndimage.zoom(v, np.array(new_shape) / v.shape, order=order, mode='nearest', grid_mode=True)
        assert theirs.shape == new_shape
        np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_out_of_plane_operator_equals_map_coordinates():
    v = np.random.default_rng(1).normal(size=(6, 4))
    for n_out, order in [(13, 0), (4, 0), (9, 1)]:
        coords = (np.arange(n_out) + .5) * 6 / n_out - .5
        cz, cy = np.meshgrid(coords, np.arange(4), indexing='ij')
        theirs = ndimage.map_coordinates(v, [cz, cy], order=order, mode='nearest')
        np.testing.assert_allclose(apply_operator(v, out_of_plane_operator(6, n_out, order), 0), theirs, atol=1e-12)


def test_separate_z_rule():
    assert separate_z_axis((5, 1, 1), (5, 1, 1)) == 0
    assert separate_z_axis((1, 1, 1), (1, 1, 4)) == 2          # anisotropic target
    assert separate_z_axis((2.9, 1, 1), (2.9, 1, 1)) is None   # ratio 2.9 <= 3
    assert separate_z_axis((1, 3, 3), (1, 3, 3)) is None       # two coarse axes
    assert separate_z_axis((1, 1, 1), (1, 1, 1), force_separate_z=True) is None
    assert separate_z_axis((5, 1, 1), (5, 1, 1), force_separate_z=False) is None
    assert separate_z_axis((1, 2, 1), (1, 1, 1), force_separate_z=True) == 1
    assert compute_new_shape([10, 20, 30], [3, 1, 1], [1.5, 2, 1]) == [20, 10, 30]


def test_resample_image_separate_z_matches_slicewise_reference():
    "Thick slices: in-plane cubic per slice (clipped to each slice's range), nearest slice along z."
    rng = np.random.default_rng(2)
    data = rng.normal(size=(1, 5, 9, 11)).astype(np.float32)
    new_shape = (8, 14, 6)
    out = resample_image(data, new_shape, (5., 1., 1.), (3.1, .6, 1.9))
    planes = []
    for k in range(5):
        s = ndimage.zoom(data[0, k].astype(float), np.array(new_shape[1:]) / data.shape[2:], order=3, mode='nearest', grid_mode=True)
        planes.append(np.clip(s, data[0, k].min(), data[0, k].max()))
    planes = np.stack(planes)
    z = ndimage.map_coordinates(np.arange(5.), [(np.arange(8) + .5) * 5 / 8 - .5], order=0, mode='nearest').astype(int)
    np.testing.assert_allclose(out[0], planes[z], atol=1e-6)
    assert out.dtype == np.float32
    # isotropic: all three axes cubic, clipped to the volume's range
    iso = resample_image(data, (7, 7, 7), (1., 1., 1.), (1., 1., 1.))
    ref = np.clip(ndimage.zoom(data[0].astype(float), np.array((7, 7, 7)) / data.shape[1:], order=3, mode='nearest', grid_mode=True),
                  data.min(), data.max())
    np.testing.assert_allclose(iso[0], ref, atol=1e-6)


def test_resample_segmentation_onehot_argmax_nearest_ties():
    rng = np.random.default_rng(3)
    seg = ndimage.zoom(rng.integers(-1, 4, size=(3, 4, 4)), 2, order=0)[None].astype(np.float32)   # blocks of labels
    new_shape = (4, 12, 5)
    out = resample_segmentation(seg, new_shape, (1., 1., 1.), (1.5, .67, 1.6))
    labels = np.unique(seg)
    scores = np.stack([ndimage.zoom((seg[0] == l).astype(float), np.array(new_shape) / seg.shape[1:], order=1,
                                    mode='nearest', grid_mode=True) for l in labels])
    nearest = ndimage.zoom(seg[0], np.array(new_shape) / seg.shape[1:], order=0, mode='nearest', grid_mode=True)
    expected = labels[scores.argmax(0)]
    nearest_idx = np.searchsorted(labels, nearest)
    tie_to_nearest = np.take_along_axis(scores, nearest_idx[None], 0)[0] == scores.max(0)
    expected[tie_to_nearest] = nearest[tie_to_nearest]
    np.testing.assert_array_equal(out[0], expected)
    assert set(np.unique(out)) <= set(labels)
    # separate z: in-plane per slice, then the nearest slice
    thick = resample_segmentation(seg, (9, 12, 12), (4., 1., 1.), (2.6, .67, .67))
    inplane = resample_segmentation(seg, (6, 12, 12), (4., 1., 1.), (4., .67, .67))
    z = ndimage.map_coordinates(np.arange(6.), [(np.arange(9) + .5) * 6 / 9 - .5], order=0, mode='nearest').astype(int)
    np.testing.assert_array_equal(thick[0], inplane[0][z])


# ---------------------------------------------------------------- class locations
def test_class_locations_seeded_and_inside_their_class():
    rng = np.random.default_rng(4)
    seg = rng.choice([0, 1, 2], p=[.5, .45, .05], size=(1, 30, 40, 50)).astype(np.int8)
    locs = sample_class_locations(seg, [1, 2, (1, 2), 3])
    again = sample_class_locations(seg, [1, 2, (1, 2), 3])
    for k in (1, 2, (1, 2)):
        np.testing.assert_array_equal(locs[k], again[k])
        values = seg[tuple(locs[k].T)]
        assert set(np.unique(values)) <= ({k} if isinstance(k, int) else set(k))
        assert len(np.unique(locs[k], axis=0)) == len(locs[k])   # without replacement
        n = int(np.isin(seg, k).sum())
        assert len(locs[k]) == max(min(10000, n), int(np.ceil(n * .01)))
    assert locs[3] == []
    assert len(locs[1]) == 10000                     # capped ...
    big = np.ones((1, 100, 100, 120), np.int8)       # ... unless 1% is more
    assert len(sample_class_locations(big, [1])[1]) == 12000
    assert classes_for_oversampling({'background': 0, 'a': 1, 'b': 2, 'ignore': 3}) == [1, 2, (-1, 0, 1, 2)]


# ---------------------------------------------------------------- cases and datasets
def test_preprocess_case_and_storage(ct, tmp_path):
    folder, pre = ct
    case = find_training_cases(folder)['case_000']
    plans_file = pre/'nnUNetPlans.json'
    data, seg, props = preprocess_case(case['images'], case['label'], plans_file, '3d_fullres', pre/'dataset.json')
    assert data.dtype == np.float32 and data.shape[1:] == seg.shape[1:]
    for k in ('spacing', 'shape_before_cropping', 'bbox_used_for_cropping', 'shape_after_cropping_and_before_resampling', 'class_locations'):
        assert k in props
    assert set(np.unique(seg)) <= {-1, 0, 1, 2}
    for c, l in props['class_locations'].items():
        if len(l): assert np.all(seg[tuple(l.T)] == c)
    save_case(tmp_path/'out', 'case_000', data, seg, props, [8, 24, 24])
    d, s, p = load_case(tmp_path/'out', 'case_000')
    np.testing.assert_array_equal(d[:], data); np.testing.assert_array_equal(s[:], seg)
    assert d.dtype == np.float32 and s.dtype == np.int16
    with pytest.raises(PreprocessingError, match='nnunet_nb_preprocess'): load_case(tmp_path/'out', 'case_009')
    with pytest.raises(PreprocessingError, match='nnunet_nb_plan_experiment'): preprocess(211, '3d_fullres', plans_name='nope')


def test_preprocess_rerun_skip_clean_and_plans_change(ct):
    folder, pre = ct
    out = preprocess(211, ['3d_fullres', '3d_lowres'], 1, progress=False)   # 3d_lowres is not in the plans: skipped
    assert len(out) == 1 and complete_cases(out[0]) == ['case_000', 'case_001', 'case_002', 'case_003']
    assert sorted(p.name for p in (pre/'gt_segmentations').iterdir()) == [f'case_00{i}.nii.gz' for i in range(4)]
    stamp = {c: (out[0]/f'{c}.b2nd').stat().st_mtime_ns for c in complete_cases(out[0])}
    (out[0]/'case_002.b2nd').unlink()               # as if the run had stopped there
    preprocess(211, '3d_fullres', 1, progress=False)
    assert complete_cases(out[0]) == sorted(stamp)
    assert all((out[0]/f'{c}.b2nd').stat().st_mtime_ns == stamp[c] for c in stamp if c != 'case_002')   # others skipped
    preprocess(211, '3d_fullres', 1, clean=True, progress=False)
    assert all((out[0]/f'{c}.b2nd').stat().st_mtime_ns != stamp[c] for c in stamp)   # clean: all rewritten
    # different plans (another spacing): the folder is rebuilt, not mixed
    from nnunet_nb.paths import load_json
    plans = load_json(pre/'nnUNetPlans.json'); plans['configurations']['3d_fullres']['spacing'] = [4.0, 1.0, 1.0]
    save_json(plans, pre/'nnUNetPlans.json')
    before = load_case(out[0], 'case_000')[0].shape
    preprocess(211, '3d_fullres', 1, progress=False)
    assert load_case(out[0], 'case_000')[0].shape != before
    with pytest.raises((PathsError, PreprocessingError)): preprocess(299, '3d_fullres', 1, progress=False)


def test_parallel_equals_serial(ct, tmp_path):
    folder, pre = ct
    a = preprocess(211, '3d_fullres', 2, progress=False)[0]
    ref = {c: load_case(a, c)[0][:] for c in complete_cases(a)}
    preprocess(211, '3d_fullres', 1, clean=True, progress=False)
    for c, d in ref.items(): np.testing.assert_array_equal(load_case(a, c)[0][:], d)


def test_kill_minus_9_leaves_only_complete_cases(ct):
    "SIGKILL a run mid-way: every case a reader can see is complete, and a rerun finishes the rest."
    folder, pre = ct
    target = pre/'nnUNetPlans_3d_fullres'
    code = ("import time, nnunet_nb.preprocessing as p\n"
            "orig = p.save_case\n"
            "def slow(*a, **k):\n    r = orig(*a, **k); time.sleep(0.4); return r\n"
            "p.save_case = slow\n"
            "p.preprocess(211, '3d_fullres', 1, progress=False)\n")
    proc = subprocess.Popen([sys.executable, '-c', code], env=os.environ.copy())
    deadline = time.time() + 60
    while time.time() < deadline and len(complete_cases(target)) < 2: time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL); proc.wait()
    present = complete_cases(target)
    assert 1 <= len(present) < 4
    for c in present:                                 # complete: data, seg and properties all readable
        d, s, p = load_case(target, c)
        assert d[:].shape[1:] == s[:].shape[1:] and 'class_locations' in p
    preprocess(211, '3d_fullres', 1, progress=False)
    assert complete_cases(target) == ['case_000', 'case_001', 'case_002', 'case_003']
    assert not [p for p in target.iterdir() if p.name.endswith('.part')]
