"End-to-end checks of the example dataset (nnunet_nb.synthetic): files, determinism, realism, safety."
import json, os
from pathlib import Path

import numpy as np
import pytest

from nnunet_nb import synthetic
from nnunet_nb.synthetic import make_example_dataset, make_case, mr_case, KIND_INFO, EXAMPLE_SIZES, case_id
from nnunet_nb.io import read_images, read_seg
from nnunet_nb.dataset import verify_dataset_integrity


def case_files(folder: Path, kind: str, index: int, split: str = 'Tr'):
    ending = KIND_INFO[kind]['file_ending']
    images = sorted((folder/f'images{split}').glob(f'{case_id(index)}_[0-9][0-9][0-9][0-9]{ending}'))
    return images, folder/f'labels{split}'/f'{case_id(index)}{ending}'


@pytest.fixture(scope='module')
def datasets(tmp_path_factory):
    "One tiny dataset per kind, written once for the module (in parallel, as users do)."
    raw = tmp_path_factory.mktemp('raw')
    return raw, {kind: make_example_dataset(i + 1, kind, size='tiny', raw=raw, num_processes=2, progress=False)
                 for i, kind in enumerate(('ct', 'mr', '2d'))}


@pytest.mark.parametrize('kind', ['ct', 'mr', '2d'])
def test_layout_and_integrity(datasets, kind):
    raw, folders = datasets
    folder = folders[kind]
    spec, info = EXAMPLE_SIZES[kind]['tiny'], KIND_INFO[kind]
    assert folder.name == f'Dataset{["ct", "mr", "2d"].index(kind) + 1:03d}_{info["name"]}'
    verify_dataset_integrity(folder, num_processes=1)          # raises on any problem
    dj = json.loads((folder/'dataset.json').read_text())
    assert dj['channel_names'] == info['channel_names'] and dj['labels'] == info['labels']
    assert dj['numTraining'] == spec.num_cases and dj['file_ending'] == info['file_ending']
    assert dj['synthetic']['kind'] == kind and dj['synthetic']['seed'] == 0
    n_files = 1 if kind == '2d' else len(info['channel_names'])
    assert len(list((folder/'imagesTr').iterdir())) == spec.num_cases * n_files
    assert len(list((folder/'labelsTr').iterdir())) == spec.num_cases
    assert len(list((folder/'imagesTs').iterdir())) == spec.num_test_cases * n_files
    assert len(list((folder/'labelsTs').iterdir())) == spec.num_test_cases    # ground truth of held-out cases
    assert not [p for p in raw.iterdir() if p.name.startswith('.')]           # no temporary folder left


@pytest.mark.parametrize('kind', ['ct', 'mr', '2d'])
def test_labels_as_declared_and_read_back_exactly(datasets, kind):
    _, folders = datasets
    folder, declared = folders[kind], set(KIND_INFO[kind]['labels'].values())
    n_train = EXAMPLE_SIZES[kind]['tiny'].num_cases
    for index in range(n_train + EXAMPLE_SIZES[kind]['tiny'].num_test_cases):
        images, label_file = case_files(folder, kind, index, 'Tr' if index < n_train else 'Ts')
        data, props = read_images(images)
        seg, _ = read_seg(label_file)
        image, label, geometry = make_case(kind, index, seed=0, size='tiny')
        assert data.shape[0] == len(KIND_INFO[kind]['channel_names'])
        np.testing.assert_array_equal(data, image)
        np.testing.assert_array_equal(seg[0], label)
        assert set(np.unique(seg).astype(int)) == declared       # tiny cases hold every label
        assert props['spacing'] == list(geometry.spacing)


@pytest.mark.parametrize('kind', ['ct', 'mr'])
def test_geometry_read_back_equals_declared(datasets, kind):
    _, folders = datasets
    directions = []
    for index in range(EXAMPLE_SIZES[kind]['tiny'].num_cases):
        images, label_file = case_files(folders[kind], kind, index)
        geometry = make_case(kind, index, seed=0, size='tiny')[2]
        for f in images + [label_file]:
            props = read_images([f])[1]
            sitk = props['sitk_stuff']
            assert tuple(sitk['spacing']) == geometry.spacing[::-1]
            assert np.allclose(sitk['origin'], geometry.origin, atol=1e-6)
            assert np.allclose(sitk['direction'], geometry.direction, atol=1e-6)
        d = np.array(geometry.direction).reshape(3, 3)
        assert np.allclose(d @ d.T, np.eye(3)) and np.isclose(np.linalg.det(d), 1)
        assert np.linalg.norm(geometry.origin) > 1                          # not at the origin
        directions.append(np.allclose(d, np.eye(3)))
    assert any(directions) and not all(directions)                          # some cases are not axis-aligned


def test_ct_is_anisotropic_and_in_hounsfield_units(datasets):
    _, folders = datasets
    contrasts = []
    for index in range(EXAMPLE_SIZES['ct']['tiny'].num_cases):
        images, label_file = case_files(folders['ct'], 'ct', index)
        data, props = read_images(images)
        seg = read_seg(label_file)[0][0]
        hu = data[0]
        z, y, x = props['spacing']
        assert 3 <= z <= 5 and 0.7 <= y == x <= 1.0 and z / y > 3            # thick slices
        assert hu.min() >= -1024 and hu.max() <= 3071
        assert (hu < -900).mean() > 0.05                                     # air around the body
        assert ((hu > -150) & (hu < -50)).mean() > 0.01                      # fat
        assert 30 < np.median(hu[seg == 1]) < 140                            # the organ: soft tissue
        contrasts.append(abs(np.median(hu[seg == 2]) - np.median(hu[seg == 1])))
        assert hu.max() > 300                                                # bone
    assert np.median(contrasts) > 10      # lesions stand out (tiny ones are diluted by partial volume)


def test_ct_lesions_darker_and_brighter():
    signs = set()
    for index in range(8):
        image, label, _ = make_case('ct', index, seed=0, size='tiny')
        signs.add(np.sign(np.median(image[0][label == 2]) - np.median(image[0][label == 1])))
    assert signs == {-1, 1}


def test_mr_background_zero_and_bias_field(datasets):
    _, folders = datasets
    relative_sizes = []
    for index in range(EXAMPLE_SIZES['mr']['tiny'].num_cases):
        images, label_file = case_files(folders['mr'], 'mr', index)
        data, _ = read_images(images)
        seg = read_seg(label_file)[0][0]
        nonzero = (data != 0).any(0)
        assert ((data != 0).all(0) == nonzero).all()                         # all channels share the head mask
        assert not (seg[~nonzero] > 0).any()                                 # labels inside the head
        bbox = [np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
        relative_sizes.append(np.prod([b[-1] - b[0] + 1 for b in bbox]) / nonzero.size)
    assert np.median(relative_sizes) < 0.75      # cropping to nonzero matters (and switches on masked z-scoring)
    # the bias field: same seed with and without it, noise off; the ratio is smooth and far from flat
    a, _ = mr_case(np.random.default_rng(5), (32, 40, 40), (1.2, 1, 1), noise_level=0)
    b, _ = mr_case(np.random.default_rng(5), (32, 40, 40), (1.2, 1, 1), noise_level=0, bias_strength=0)
    inside = b[0] > 0
    ratio = a[0][inside] / b[0][inside]
    assert ratio.std() / ratio.mean() > 0.05
    full = np.where(inside, a[0] / np.where(inside, b[0], 1), np.nan)
    assert np.nanmean(np.abs(np.diff(full, axis=2))) / ratio.mean() < 0.02


def test_mr_channels_have_arbitrary_scales():
    scales = [make_case('mr', i, seed=0, size='tiny')[0].astype(float) for i in range(4)]
    medians = np.array([[np.median(s[c][s[c] > 0]) for c in range(2)] for s in scales])
    assert medians.max() / medians.min() > 2                                 # no fixed unit: z-scoring is needed


def test_2d_is_rgb_png(datasets):
    _, folders = datasets
    images, label_file = case_files(folders['2d'], '2d', 0)
    assert len(images) == 1 and images[0].suffix == '.png'
    data, props = read_images(images)
    assert data.shape[:2] == (3, 1) and props['spacing'] == [999.0, 1.0, 1.0]
    shapes = {make_case('2d', i, size='tiny')[2].shape for i in range(4)}
    assert len(shapes) > 1                                                   # sizes differ per case


@pytest.mark.parametrize('kind', ['ct', 'mr', '2d'])
def test_determinism_arrays(kind):
    a, la, ga = make_case(kind, 2, seed=7, size='tiny')
    b, lb, gb = make_case(kind, 2, seed=7, size='tiny')
    assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes() and ga == gb
    c, lc, gc = make_case(kind, 2, seed=8, size='tiny')
    assert gc != ga or not np.array_equal(c, a)


def test_determinism_files(tmp_path):
    "Same seed, same bytes on disk, whatever the number of processes; another seed, other bytes."
    one = make_example_dataset(5, 'ct', raw=tmp_path/'a', num_cases=3, num_test_cases=1, num_processes=1, progress=False)
    two = make_example_dataset(5, 'ct', raw=tmp_path/'b', num_cases=3, num_test_cases=1, num_processes=2, progress=False)
    other = make_example_dataset(5, 'ct', raw=tmp_path/'c', num_cases=3, num_test_cases=1, seed=1, num_processes=1, progress=False)
    files = sorted(p.relative_to(one) for p in one.rglob('*') if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob('*') if p.is_file())
    for f in files: assert (one/f).read_bytes() == (two/f).read_bytes(), f
    assert (one/'imagesTr/case_000_0000.nii.gz').read_bytes() != (other/'imagesTr/case_000_0000.nii.gz').read_bytes()


def test_overwrite_protection(tmp_path):
    raw = tmp_path/'raw'
    folder = make_example_dataset(1, 'ct', raw=raw, num_processes=1, progress=False)
    stamp = (folder/'dataset.json').stat().st_mtime_ns
    assert make_example_dataset(1, 'ct', raw=raw, progress=False) == folder      # same recipe: nothing to do
    assert (folder/'dataset.json').stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match='Dataset001_SyntheticCT'):
        make_example_dataset(1, 'ct', raw=raw, seed=3, progress=False)
    with pytest.raises(FileExistsError, match='overwrite'):
        make_example_dataset(1, 'mr', raw=raw, progress=False)
    new = make_example_dataset(1, 'mr', raw=raw, overwrite=True, num_processes=1, progress=False)
    assert sorted(p.name for p in raw.iterdir()) == ['Dataset001_SyntheticMR'] and new.name == 'Dataset001_SyntheticMR'
    # a dataset that is not an example dataset is never deleted, even with overwrite=True
    mine = raw/'Dataset002_MyData'; (mine/'imagesTr').mkdir(parents=True)
    (mine/'dataset.json').write_text('{"labels": {"background": 0}}')
    with pytest.raises(FileExistsError, match='Dataset002_MyData'):
        make_example_dataset(2, 'ct', raw=raw, overwrite=True, progress=False)
    assert (mine/'dataset.json').exists()


def test_interrupted_run_leaves_no_half_dataset(tmp_path, monkeypatch):
    real = synthetic.make_case
    def failing(kind, index, seed=0, size='tiny'):
        if index == 2: raise RuntimeError('simulated crash')
        return real(kind, index, seed, size)
    monkeypatch.setattr(synthetic, 'make_case', failing)
    raw = tmp_path/'raw'
    with pytest.raises(RuntimeError, match='simulated crash'):
        make_example_dataset(4, 'ct', raw=raw, num_processes=1, progress=False)
    assert list(raw.iterdir()) == []
    # a leftover of a killed run (its process is gone) is cleaned up by the next run
    (raw/'.Dataset004_SyntheticCT.partial-999999999-abcd'/'imagesTr').mkdir(parents=True)
    monkeypatch.setattr(synthetic, 'make_case', real)
    make_example_dataset(4, 'ct', raw=raw, num_processes=1, progress=False)
    assert sorted(p.name for p in raw.iterdir()) == ['Dataset004_SyntheticCT']


def test_default_raw_folder_and_bad_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv('nnUNet_raw', str(tmp_path/'env_raw'))
    folder = make_example_dataset(9, '2d', num_cases=2, num_test_cases=0, num_processes=1, progress=False)
    assert folder == tmp_path/'env_raw'/'Dataset009_Synthetic2D'
    assert not any((folder/'imagesTs').iterdir())
    with pytest.raises(ValueError, match='kind'): make_example_dataset(10, 'us', progress=False)
    with pytest.raises(ValueError, match='size'): make_example_dataset(10, 'ct', size='huge', progress=False)
    with pytest.raises(ValueError, match='num_cases'): make_example_dataset(10, 'ct', num_cases=0, progress=False)
