"""Fingerprint stage: crop semantics, schema, values on a hand-made dataset, skip/clean, atomic writes, errors."""
from __future__ import annotations
import json
from pathlib import Path
import numpy as np
import pytest
from conftest import write_volume
from nnunet_nb.fingerprint import (crop_to_nonzero, nonzero_mask, extract_fingerprint, dataset_fingerprint,
                                   fingerprint_file, mixture_percentile, FingerprintError)
from nnunet_nb.paths import PathsError
from nnunet_nb.synthetic import make_example_dataset

STAT_KEYS = ['max', 'mean', 'median', 'min', 'percentile_00_5', 'percentile_99_5', 'std']


# ---- crop -------------------------------------------------------------------------------------------

def test_crop_union_of_channels_and_bbox():
    data = np.zeros((2, 5, 6, 7), np.float32)
    data[0, 1, 1, 1] = 3.0
    data[1, 3, 4, 5] = -2.0                     # negative counts as nonzero
    d, s, bbox = crop_to_nonzero(data)
    assert bbox == [[1, 4], [1, 5], [1, 6]]
    assert d.shape == (2, 3, 4, 5)
    assert d[0, 0, 0, 0] == 3.0 and d[1, 2, 3, 4] == -2.0


def test_crop_fills_holes_and_marks_outside():
    data = np.zeros((1, 7, 7, 7), np.float32)
    data[0, 1:6, 1:6, 1:6] = 1
    data[0, 2:5, 2:5, 2:5] = 0                  # an enclosed cavity: a hole
    assert nonzero_mask(data)[3, 3, 3]
    seg = np.zeros((1, 7, 7, 7), np.float32)
    seg[0, 2, 2, 2] = 2
    tunnelled = data.copy(); tunnelled[0, 1:6, 3, 3] = 0          # a tunnel from the cavity to the box's faces
    assert not nonzero_mask(tunnelled)[3, 3, 3]                     # connected to the border: not a hole
    d, s, bbox = crop_to_nonzero(tunnelled, seg)
    mask = nonzero_mask(tunnelled)[1:6, 1:6, 1:6]
    assert bbox == [[1, 6], [1, 6], [1, 6]]
    assert s.dtype == np.float32 and s[0, 1, 1, 1] == 2            # labels untouched, even outside the mask
    assert set(np.unique(s)) == {-1, 0, 2}
    assert ((s[0] == -1) == (~mask & (seg[0, 1:6, 1:6, 1:6] == 0))).all()   # -1 exactly where outside and background
    assert seg[0, 2, 2, 2] == 2 and (seg >= 0).all()               # the input is not modified


def test_crop_hole_touching_border_is_not_filled():
    data = np.ones((1, 4, 6, 6), np.float32)
    data[0, :, 2:4, 2:4] = 0                    # a channel through all slices: reaches the first and last slice
    assert not nonzero_mask(data)[1, 2, 2]
    data[0, 0, 2:4, 2:4] = 1; data[0, -1, 2:4, 2:4] = 1       # closed at both ends: now a hole
    assert nonzero_mask(data)[1, 2, 2]
    flat = np.ones((1, 1, 6, 6), np.float32); flat[0, 0, 2:4, 2:4] = 0
    assert not nonzero_mask(flat)[0, 2, 2]      # 2D (one slice): every voxel touches the border, nothing is filled


def test_crop_unsigned_seg_gets_a_signed_type():
    data = np.zeros((1, 3, 4, 4), np.float32); data[0, 1, 1:3, 1:3] = 5
    data[0, 1, 1, 1] = 0                                       # a corner of the box outside the mask
    seg = np.zeros((1, 3, 4, 4), np.uint8); seg[0, 1, 1, 1] = 1; seg[0, 1, 2, 2] = 1
    d, s, bbox = crop_to_nonzero(data, seg)
    assert bbox == [[1, 2], [1, 3], [1, 3]]
    assert s.dtype.kind == 'i'
    assert s[0, 0, 0, 0] == 1 and s[0, 0, 1, 1] == 1           # labels kept, also the one outside the mask
    assert s[0, 0, 0, 1] == 0
    seg[0, 1, 1, 1] = 0
    assert crop_to_nonzero(data, seg)[1][0, 0, 0, 0] == -1


def test_crop_empty_image_keeps_extent_and_rejects_bad_seg():
    d, s, bbox = crop_to_nonzero(np.zeros((1, 2, 3, 4), np.float32))
    assert bbox == [[0, 2], [0, 3], [0, 4]] and (s == -1).all()
    with pytest.raises(ValueError, match='seg must be'):
        crop_to_nonzero(np.ones((1, 2, 3, 4), np.float32), np.zeros((1, 2, 3, 5)))


# ---- statistics ---------------------------------------------------------------------------------------

def _hand_made_dataset(folder: Path) -> Path:
    """Two cases, one channel, known foreground: case A fg values 1..4 (4 voxels), case B fg values 10 and 20;
    a zero frame around case B (cropped away)."""
    (folder/'imagesTr').mkdir(parents=True); (folder/'labelsTr').mkdir()
    a = np.full((2, 3, 4), 7, np.int16); sa = np.zeros_like(a, np.uint8)
    a[0, 0, :] = [1, 2, 3, 4]; sa[0, 0, :] = 1
    b = np.zeros((3, 5, 5), np.int16); sb = np.zeros_like(b, np.uint8)
    b[1, 1:4, 1:4] = 50; b[1, 2, 2] = 10; b[1, 2, 3] = 20; sb[1, 2, 2] = 1; sb[1, 2, 3] = 2
    for case, img, seg, sp in (('a', a, sa, (1.0, 1.0, 2.0)), ('b', b, sb, (0.5, 0.5, 3.0))):
        write_volume(img, folder/'imagesTr'/f'{case}_0000.nii.gz', spacing_xyz=sp)
        write_volume(seg, folder/'labelsTr'/f'{case}.nii.gz', spacing_xyz=sp)
    (folder/'dataset.json').write_text(json.dumps({'channel_names': {'0': 'CT'}, 'labels': {'background': 0, 'x': 1, 'y': 2},
                                                   'numTraining': 2, 'file_ending': '.nii.gz'}))
    return folder


def test_expected_values_hand_made(tmp_path):
    folder = _hand_made_dataset(tmp_path/'raw'/'Dataset140_Hand')
    fp = dataset_fingerprint(folder, num_processes=1, progress=False)
    assert fp['shapes_after_crop'] == [[2, 3, 4], [1, 3, 3]]
    assert fp['spacings'] == [[2.0, 1.0, 1.0], [3.0, 0.5, 0.5]]
    assert fp['median_relative_size_after_cropping'] == pytest.approx(np.median([1.0, 9 / 75]))
    st = fp['foreground_intensity_properties_per_channel']['0']
    assert list(st) == STAT_KEYS
    # equal-weight mixture of {1,2,3,4} and {10,20}
    assert st['mean'] == pytest.approx((2.5 + 15) / 2)
    mixture = np.concatenate([np.repeat([1, 2, 3, 4], 1000), np.repeat([10, 20], 2000)]).astype(float)
    assert st['std'] == pytest.approx(mixture.std())
    assert (st['min'], st['max'], st['median'], st['percentile_00_5'], st['percentile_99_5']) == (1, 20, 4, 1, 20)


def test_mixture_percentile_matches_numpy_for_one_case():
    x = np.sort(np.random.default_rng(1).integers(-100, 100, 5000).astype(np.float32))
    for q in (0.5, 50, 99.5):
        assert mixture_percentile([x], q) == np.percentile(x, q, method='inverted_cdf')


def test_sampling_quota_keeps_exact_moments(tmp_path):
    raw = tmp_path/'raw'
    ds = make_example_dataset(141, 'ct', num_cases=2, raw=raw, num_processes=1, progress=False, num_test_cases=0)
    full = dataset_fingerprint(ds, num_processes=1, progress=False)
    sampled = dataset_fingerprint(ds, num_processes=2, progress=False, num_foreground_voxels=500)
    a, b = (f['foreground_intensity_properties_per_channel']['0'] for f in (full, sampled))
    for k in ('min', 'max', 'mean', 'std'): assert a[k] == pytest.approx(b[k], rel=1e-12)
    assert abs(a['median'] - b['median']) < 0.2 * a['std']
    assert sampled == dataset_fingerprint(ds, num_processes=1, progress=False, num_foreground_voxels=500)  # seeded


# ---- the stage -------------------------------------------------------------------------------------------

def test_schema_skip_clean_atomic(tmp_path, nnunet_folders):
    make_example_dataset(142, 'mr', num_cases=2, num_test_cases=0, num_processes=1, progress=False)
    path = extract_fingerprint(142, num_processes=1, progress=False)
    pre = nnunet_folders['nnUNet_preprocessed']
    assert path == pre/'Dataset142_SyntheticMR'/'dataset_fingerprint.json' == fingerprint_file(142)
    assert sorted(p.name for p in path.parent.iterdir()) == ['dataset.json', 'dataset_fingerprint.json']   # no temp files
    assert (path.parent/'dataset.json').read_bytes() == (nnunet_folders['nnUNet_raw']/'Dataset142_SyntheticMR'/'dataset.json').read_bytes()
    fp = json.loads(path.read_text())
    assert list(fp) == ['foreground_intensity_properties_per_channel', 'median_relative_size_after_cropping',
                        'shapes_after_crop', 'spacings']
    assert list(fp['foreground_intensity_properties_per_channel']) == ['0', '1']
    assert all(list(v) == STAT_KEYS for v in fp['foreground_intensity_properties_per_channel'].values())
    assert len(fp['shapes_after_crop']) == len(fp['spacings']) == 2
    assert 0 < fp['median_relative_size_after_cropping'] < 1          # MR background is 0: cropped
    # rerun: untouched, even when the content is different
    path.write_text('{"sentinel": 1}')
    stat = path.stat()
    assert extract_fingerprint(142, num_processes=1, progress=False) == path
    assert path.read_text() == '{"sentinel": 1}' and path.stat().st_mtime_ns == stat.st_mtime_ns
    # clean: rewritten, identical to the first run
    extract_fingerprint(142, num_processes=1, clean=True, progress=False, verify_dataset_integrity=True)
    assert json.loads(path.read_text()) == fp
    assert sorted(p.name for p in path.parent.iterdir()) == ['dataset.json', 'dataset_fingerprint.json']


def test_errors(tmp_path, nnunet_folders, monkeypatch):
    with pytest.raises(PathsError, match='No dataset with id 143'):
        extract_fingerprint(143, progress=False)
    monkeypatch.delenv('nnUNet_preprocessed')
    with pytest.raises(PathsError, match='nnUNet_preprocessed'):
        extract_fingerprint(143, progress=False)
    # no foreground at all: named
    folder = _hand_made_dataset(nnunet_folders['nnUNet_raw']/'Dataset144_Empty')
    for f in (folder/'labelsTr').iterdir():
        shape = (2, 3, 4) if f.name.startswith('a') else (3, 5, 5)
        write_volume(np.zeros(shape, np.uint8), f, spacing_xyz=(1.0, 1.0, 2.0) if f.name.startswith('a') else (0.5, 0.5, 3.0))
    with pytest.raises(FingerprintError, match='Dataset144_Empty.*no foreground'):
        extract_fingerprint(144, preprocessed=tmp_path/'pre', progress=False, num_processes=1)
    assert not (tmp_path/'pre'/'Dataset144_Empty'/'dataset_fingerprint.json').exists()
