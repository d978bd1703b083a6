"Inference: tiling and blending, TTA, geometry round trips, nnU-Net v2 interoperability, resume, bad inputs."
import copy, json, pickle, shutil
from pathlib import Path
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from conftest import write_volume, folder_hashes
from nnunet_nb.io import read_seg
from nnunet_nb.planning import Plans, build_network
from nnunet_nb.inference import (
    InferenceError, Predictor, tile_grid, tile_starts, pad_to_patch, gaussian_importance_map, mirror_combinations,
    export_prediction, revert_preprocessing, find_input_cases, load_checkpoint, available_folds)

FIXTURE = Path(__file__).parent/'fixtures'/'nnunetv2_tiny'
CASES = ('tinyct_008', 'tinyct_009')


# ---------------------------------------------------------------- small networks with known outputs
class Identity(torch.nn.Module):
    "Returns the first input channel for every class: the predictor must give the input back."
    def __init__(self, classes=3): super().__init__(); self.classes = classes
    def forward(self, x): return x[:, :1].expand(-1, self.classes, *x.shape[2:]) * 1.


class NearestLevel(torch.nn.Module):
    "Pointwise: class k scores -(x - level_k)^2, so the argmax is the label whose intensity level is nearest."
    def __init__(self, levels): super().__init__(); self.register_buffer('levels', torch.tensor(levels, dtype=torch.float32))
    def forward(self, x):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return -(x[:, :1] - self.levels.view(shape)) ** 2 / 100.


def symmetric_conv(dim, channels_in=1, classes=3, seed=0):
    "A convolution whose kernel is the mean of its mirror images: mirror-equivariant, with spatial context."
    torch.manual_seed(seed)
    conv = (torch.nn.Conv3d if dim == 3 else torch.nn.Conv2d)(channels_in, classes, 3, padding=1)
    with torch.no_grad():
        w = conv.weight.clone()
        flips = [()] + mirror_combinations(tuple(range(dim)))
        conv.weight.copy_(sum(w.flip([a + 2 for a in c]) if c else w for c in flips) / len(flips))
    return conv


def hand_plans(spacing=(3.0, 1.0, 1.0), patch=(8, 16, 16), transpose_forward=(0, 1, 2), scheme='NoNormalization',
               channels=1, reader='SimpleITKIO', configuration='3d_fullres', features=(4, 8, 8)):
    "Plans in nnU-Net v2's schema with a tiny PlainConvUNet, written by hand (independent of the planner)."
    dim = len(patch)
    kw = lambda is_seg, order: dict(is_seg=is_seg, order=order, order_z=0, force_separate_z=None)
    n = len(features)
    arch = {'network_class_name': 'dynamic_network_architectures.architectures.unet.PlainConvUNet',
            'arch_kwargs': {'n_stages': n, 'features_per_stage': list(features), 'conv_op': f'torch.nn.modules.conv.Conv{dim}d',
                            'kernel_sizes': [[3] * dim] * n, 'strides': [[1] * dim] + [[2] * dim] * (n - 1),
                            'n_conv_per_stage': [1] * n, 'n_conv_per_stage_decoder': [1] * (n - 1), 'conv_bias': True,
                            'norm_op': f'torch.nn.modules.instancenorm.InstanceNorm{dim}d',
                            'norm_op_kwargs': {'eps': 1e-5, 'affine': True}, 'dropout_op': None, 'dropout_op_kwargs': None,
                            'nonlin': 'torch.nn.LeakyReLU', 'nonlin_kwargs': {'inplace': True}},
            '_kw_requires_import': ['conv_op', 'norm_op', 'dropout_op', 'nonlin']}
    config = dict(data_identifier=f'nnUNetPlans_{configuration}', preprocessor_name='DefaultPreprocessor', batch_size=2,
                  patch_size=list(patch), spacing=list(spacing), normalization_schemes=[scheme] * channels,
                  use_mask_for_norm=[False] * channels, architecture=arch,
                  resampling_fn_data='resample_data_or_seg_to_shape', resampling_fn_data_kwargs=kw(False, 3),
                  resampling_fn_seg='resample_data_or_seg_to_shape', resampling_fn_seg_kwargs=kw(True, 1),
                  resampling_fn_probabilities='resample_data_or_seg_to_shape', resampling_fn_probabilities_kwargs=kw(False, 1))
    backward = [int(i) for i in np.argsort(transpose_forward)]
    props = {'max': 400., 'mean': 100., 'median': 100., 'min': 0., 'percentile_00_5': 0., 'percentile_99_5': 400., 'std': 50.}
    return Plans(dict(dataset_name='Dataset399_Test', plans_name='nnUNetPlans', transpose_forward=list(transpose_forward),
                      transpose_backward=backward, image_reader_writer=reader, configurations={configuration: config},
                      foreground_intensity_properties_per_channel={str(c): props for c in range(channels)}))


def dataset_json(channels=1, labels=None, ending='.nii.gz'):
    return {'channel_names': {str(c): f'ch{c}' for c in range(channels)},
            'labels': labels or {'background': 0, 'a': 1, 'b': 2}, 'numTraining': 1, 'file_ending': ending}


def model_folder(folder, plans, ds, folds=(0,), configuration='3d_fullres', classes=None, in_channels=None, seed=0):
    "A model folder with randomly initialised checkpoints in nnU-Net v2's checkpoint layout."
    folder = Path(folder); folder.mkdir(parents=True)
    plans.save(folder/'plans.json'); (folder/'dataset.json').write_text(json.dumps(ds))
    arch = plans.configuration(configuration)['architecture']
    for f in folds:
        torch.manual_seed(seed + (f if isinstance(f, int) else 99))
        net = build_network(arch, in_channels or len(ds['channel_names']), classes or len(ds['labels']))
        (folder/f'fold_{f}').mkdir()
        torch.save({'network_weights': net.state_dict(), 'trainer_name': 'nnUNetTrainer', 'current_epoch': 1,
                    'inference_allowed_mirroring_axes': (0, 1, 2), 'init_args': {'configuration': configuration, 'fold': f}},
                   folder/f'fold_{f}'/'checkpoint_final.pth')
    return folder


# ---------------------------------------------------------------- tiling and blending
@pytest.mark.parametrize('shape,patch', [((12, 100, 120), (12, 56, 56)), ((9, 31, 77), (8, 16, 16)), ((5, 40, 33), (32, 32)),
                                         ((20, 27, 200), (8, 24, 24))])
def test_tiles_cover_every_voxel(shape, patch):
    full = [1] * (3 - len(patch)) + list(patch)
    hits = np.zeros(shape, int)
    tiles = tile_grid(shape, patch)
    for t in tiles:
        assert all(s.stop - s.start == p for s, p in zip(t, full))
        hits[t] += 1
    assert hits.min() >= 1
    for n, p in zip(shape, full):   # the last tile ends at the border, steps at most half a patch
        starts = tile_starts(n, p)
        assert starts[0] == 0 and starts[-1] == n - p
        assert max(np.diff(starts), default=0) <= max(p // 2, 1)


def test_gaussian_importance_map():
    g = gaussian_importance_map((12, 56, 56))
    assert g.dtype == np.float32 and g.max() == 1 and g.min() > 0
    assert g[6, 28, 28] == 1 and g[0, 0, 0] == g.min()
    g2 = gaussian_importance_map((5, 64))
    assert g2.shape == (5, 64) and g2.min() > 0


@pytest.mark.parametrize('shape', [(13, 70, 61), (3, 10, 9), (8, 16, 16)])   # larger, smaller than and equal to the patch
def test_blending_normalises(shape):
    plans, ds = hand_plans(patch=(8, 16, 16)), dataset_json()
    volume = torch.rand(1, *shape)
    out = Predictor(Identity(), plans, '3d_fullres', ds, use_mirroring=True).predict_logits(volume)
    assert out.shape == (3, *shape) and out.dtype == torch.float32
    torch.testing.assert_close(out, volume.expand(3, -1, -1, -1), atol=1e-5, rtol=1e-5)
    x, keep = pad_to_patch(volume, (8, 16, 16))
    assert all(n >= p for n, p in zip(x.shape[1:], (8, 16, 16)))
    torch.testing.assert_close(x[(slice(None),) + keep], volume)


def test_blending_2d_configuration_on_3d_image():
    plans, ds = hand_plans(spacing=(1., 1.), patch=(16, 16), configuration='2d'), dataset_json()
    volume = torch.rand(1, 4, 37, 20)
    out = Predictor(Identity(), plans, '2d', ds).predict_logits(volume)
    torch.testing.assert_close(out, volume.expand(3, -1, -1, -1), atol=1e-5, rtol=1e-5)


def test_fold_average():
    "Two 'folds' (state dicts) are averaged: the mean of their logits."
    plans, ds = hand_plans(), dataset_json()
    a, b = symmetric_conv(3, seed=1), symmetric_conv(3, seed=2)
    volume = torch.rand(1, 10, 20, 30)
    pa = Predictor(a, plans, '3d_fullres', ds, use_mirroring=False).predict_logits(volume)
    pb = Predictor(b, plans, '3d_fullres', ds, use_mirroring=False).predict_logits(volume)
    both = Predictor(symmetric_conv(3), plans, '3d_fullres', ds, use_mirroring=False).load_weights([a.state_dict(), b.state_dict()])
    torch.testing.assert_close(both.predict_logits(volume), (pa + pb) / 2, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- TTA
@pytest.mark.parametrize('dim', [3, 2])
def test_tta_of_mirror_equivariant_network_equals_no_tta(dim):
    configuration = '3d_fullres' if dim == 3 else '2d'
    plans = hand_plans(spacing=(3., 1., 1.)[-dim:], patch=(8, 16, 16)[-dim:], configuration=configuration)
    volume = torch.rand(1, 11, 23, 30)
    net = symmetric_conv(dim)
    tta = Predictor(net, plans, configuration, dataset_json(), use_mirroring=True)
    plain = Predictor(net, plans, configuration, dataset_json(), use_mirroring=False)
    assert len(mirror_combinations(tta.mirror_axes)) + 1 == 2 ** dim and plain.mirror_axes == ()
    torch.testing.assert_close(tta.predict_logits(volume), plain.predict_logits(volume), atol=1e-5, rtol=1e-5)
    # a network that is not equivariant does change under TTA
    torch.manual_seed(0)
    skew = (torch.nn.Conv3d if dim == 3 else torch.nn.Conv2d)(1, 3, 3, padding=1)
    a = Predictor(skew, plans, configuration, dataset_json(), use_mirroring=True).predict_logits(volume)
    b = Predictor(skew, plans, configuration, dataset_json(), use_mirroring=False).predict_logits(volume)
    assert (a - b).abs().max() > 1e-3


# ---------------------------------------------------------------- geometry round trips
LEVELS = [10., 110., 210.]

def labelled_volume(shape, seed=0):
    "Labels: two boxes (1 and 2) inside a nonzero region; image = 10 + 100 * label there, 0 outside (cropped away)."
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, np.uint8)
    inside = tuple(slice(max(1, n // 6), n - max(1, n // 5)) for n in shape)
    region = np.zeros(shape, bool); region[inside] = True
    a = tuple(slice(s.start + (s.stop - s.start) // 5, s.stop - (s.stop - s.start) // 3) for s in inside)
    seg[a] = 1
    b = tuple(slice(s.start + (s.stop - s.start) // 2, s.stop - 1) for s in inside)
    seg[b] = 2
    image = np.where(region, 10 + 100. * seg + rng.uniform(-3, 3, shape), 0).astype(np.float32)
    seg[~region] = 0
    return image, seg


@pytest.mark.parametrize('resample', [False, True])
def test_round_trip_anisotropic(tmp_path, resample):
    """Coarse x axis (transposed first), a crop, and (optionally) resampling: a pointwise network that reads the
    label from the intensity gives the label map back in the input geometry."""
    shape_zyx, spacing_xyz = (24, 30, 10), (4.0, 0.9, 1.1)       # x is the coarse axis
    image, seg = labelled_volume(shape_zyx)
    origin, direction = (12., -30., 7.), (0., 1., 0., 1., 0., 0., 0., 0., -1.)
    write_volume(image, tmp_path/'in'/'case_0000.nii.gz', spacing_xyz, origin, direction)
    spacing_zyx = spacing_xyz[::-1]
    forward = (2, 0, 1)                                          # x, z, y: the coarse axis first
    target = [spacing_zyx[a] for a in forward]
    if resample: target = [target[0], target[1] * 1.3, target[2] * 0.8]
    plans = hand_plans(spacing=target, patch=(8, 16, 16), transpose_forward=forward)
    predictor = Predictor(NearestLevel(LEVELS), plans, '3d_fullres', dataset_json())
    data, props = predictor.preprocess([tmp_path/'in'/'case_0000.nii.gz'])
    assert props['bbox_used_for_cropping'] != [[0, n] for n in data.shape[1:]]   # something was cropped
    if resample: assert data.shape[1:] != tuple(props['shape_after_cropping_and_before_resampling'])
    out = predictor.predict_from_files(tmp_path/'in', tmp_path/'out', save_probabilities=True)
    assert out == [tmp_path/'out'/'case.nii.gz']
    written = sitk.ReadImage(str(out[0]))
    assert np.allclose(written.GetSpacing(), spacing_xyz) and np.allclose(written.GetOrigin(), origin)
    assert np.allclose(written.GetDirection(), direction)
    predicted = sitk.GetArrayFromImage(written)
    probabilities = np.load(tmp_path/'out'/'case.npz')['probabilities']
    assert probabilities.shape == (3, *shape_zyx) and probabilities.dtype == np.float32
    np.testing.assert_array_equal(probabilities.argmax(0), predicted)
    if not resample: np.testing.assert_array_equal(predicted, seg)
    else:
        for label in (1, 2):
            dice = 2 * ((predicted == label) & (seg == label)).sum() / ((predicted == label).sum() + (seg == label).sum())
            assert dice > 0.9, (label, dice)
        assert (predicted == seg).mean() > 0.95


def test_round_trip_2d_png(tmp_path):
    "A 2D configuration on PNG images: crop undone, written as PNG of the input's size."
    image, seg = labelled_volume((1, 40, 52))
    (tmp_path/'in').mkdir()
    Image.fromarray(np.round(image[0]).astype(np.uint8)).save(tmp_path/'in'/'img_0000.png')
    plans = hand_plans(spacing=(1., 1.), patch=(16, 16), configuration='2d', reader='NaturalImage2DIO')
    predictor = Predictor(NearestLevel(LEVELS), plans, '2d', dataset_json(ending='.png'))
    out = predictor.predict_from_files(tmp_path/'in', tmp_path/'out')
    predicted = np.asarray(Image.open(out[0]))
    assert out[0].name == 'img.png' and predicted.shape == (40, 52)
    np.testing.assert_array_equal(predicted, seg[0])


def test_export_prediction_from_preprocessed_logits(tmp_path):
    "What training's final validation does: logits of a preprocessed case + its props -> file in input geometry."
    image, seg = labelled_volume((12, 20, 22))
    write_volume(image, tmp_path/'c_0000.nii.gz', (0.7, 0.7, 2.5))
    plans = hand_plans(spacing=(2.5, 0.7, 0.7))
    p = Predictor(NearestLevel(LEVELS), plans, '3d_fullres', dataset_json())
    data, props = p.preprocess([tmp_path/'c_0000.nii.gz'])
    logits = p.predict_logits(data)
    file = export_prediction(logits, props, plans, '3d_fullres', dataset_json(), tmp_path/'val'/'c')
    assert file == tmp_path/'val'/'c.nii.gz' and sorted(q.name for q in (tmp_path/'val').iterdir()) == ['c.nii.gz']
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(file))), seg)
    # regions: sigmoid > 0.5, painted in regions_class_order
    regions = dataset_json(labels={'background': 0, 'whole': [1, 2], 'inner': 2})
    regions['regions_class_order'] = [1, 2]
    region_logits = torch.stack([(logits.argmax(0) >= 1).float() * 8 - 4, (logits.argmax(0) == 2).float() * 8 - 4])
    s, probs = revert_preprocessing(region_logits, props, plans, '3d_fullres', regions, return_probabilities=True)
    np.testing.assert_array_equal(s, seg)
    assert probs.shape == (2, *seg.shape) and probs.max() <= 1 and probs.min() >= 0


# ---------------------------------------------------------------- nnU-Net v2 interoperability
@pytest.fixture(scope='module')
def fixture_predictions(tmp_path_factory):
    out = tmp_path_factory.mktemp('interop')
    for tta in (True, False):
        for dtype in (torch.float32, torch.float16):
            p = Predictor.from_model_folder(FIXTURE/'model', folds=(0,), use_mirroring=tta, accumulation_dtype=dtype, progress=False)
            p.predict_from_files(FIXTURE/'input', out/f'{tta}_{dtype}', save_probabilities=True)
    return out


@pytest.mark.parametrize('tta', [True, False])
@pytest.mark.parametrize('dtype,tolerance', [(torch.float32, 1e-3), (torch.float16, 1e-5)])
def test_reproduces_nnunet_v2(fixture_predictions, tta, dtype, tolerance):
    """Our predictor on nnU-Net v2.8.1's model folder reproduces nnU-Net's own outputs. nnU-Net accumulates in float16:
    our default float32 is within 1e-3; with float16 accumulators we reproduce it to rounding."""
    ours, expected = fixture_predictions/f'{tta}_{dtype}', FIXTURE/('expected_tta' if tta else 'expected_notta')
    for case in CASES:
        a, b = np.load(ours/f'{case}.npz')['probabilities'], np.load(expected/f'{case}.npz')['probabilities']
        assert a.shape == b.shape and a.dtype == b.dtype == np.float32
        assert np.abs(a - b).max() <= tolerance, np.abs(a - b).max()
        sa, pa = read_seg(ours/f'{case}.nii.gz'); sb, pb = read_seg(expected/f'{case}.nii.gz')
        assert (sa == sb).mean() >= 0.999
        assert np.allclose(pa['sitk_stuff']['spacing'], pb['sitk_stuff']['spacing']) and pa['sitk_stuff']['origin'] == pb['sitk_stuff']['origin']
        with open(ours/f'{case}.pkl', 'rb') as f: props_a = pickle.load(f)
        with open(expected/f'{case}.pkl', 'rb') as f: props_b = pickle.load(f)
        assert sorted(props_a) == sorted(props_b)
        for k in ('shape_before_cropping', 'shape_after_cropping_and_before_resampling'): assert tuple(props_a[k]) == tuple(props_b[k])
        assert [list(b) for b in props_a['bbox_used_for_cropping']] == [list(b) for b in props_b['bbox_used_for_cropping']]
        assert np.allclose(props_a['spacing'], props_b['spacing'])


def test_checkpoint_loads_without_unpickling_code():
    c = load_checkpoint(FIXTURE/'model'/'fold_0'/'checkpoint_final.pth')
    assert c['trainer_name'] == 'nnUNetTrainer_bench' and tuple(c['inference_allowed_mirroring_axes']) == (0, 1, 2)
    assert available_folds(FIXTURE/'model') == [0]


# ---------------------------------------------------------------- resume, parts, cascade
def test_continue_prediction_skips_finished_cases(tmp_path, monkeypatch):
    (tmp_path/'in').mkdir()
    for case in CASES: shutil.copy(FIXTURE/'input'/f'{case}_0000.nii.gz', tmp_path/'in')
    p = Predictor.from_model_folder(FIXTURE/'model', use_mirroring=False, progress=False)
    p.predict_from_files(tmp_path/'in', tmp_path/'out', save_probabilities=True)
    before = folder_hashes(tmp_path/'out')
    (tmp_path/'out'/'tinyct_009.nii.gz').unlink()             # an interrupted case: its segmentation is missing
    predicted = []
    original = Predictor.predict_logits
    monkeypatch.setattr(Predictor, 'predict_logits', lambda self, data: predicted.append(data.shape) or original(self, data))
    p.predict_from_files(tmp_path/'in', tmp_path/'out', save_probabilities=True, continue_prediction=True)
    assert len(predicted) == 1                                 # only the unfinished case
    assert folder_hashes(tmp_path/'out') == before
    p.predict_from_files(tmp_path/'in', tmp_path/'out', save_probabilities=True, continue_prediction=True)
    assert len(predicted) == 1


def test_parts_split_the_cases(tmp_path):
    p = Predictor.from_model_folder(FIXTURE/'model', use_mirroring=False, progress=False)
    a = p.predict_from_files(FIXTURE/'input', tmp_path/'out', num_parts=2, part_id=0)
    b = p.predict_from_files(FIXTURE/'input', tmp_path/'out', num_parts=2, part_id=1)
    assert [f.name for f in a] == ['tinyct_008.nii.gz'] and [f.name for f in b] == ['tinyct_009.nii.gz']
    with pytest.raises(InferenceError, match='part_id'): p.predict_from_files(FIXTURE/'input', tmp_path/'x', num_parts=2, part_id=2)


def test_cascade_appends_previous_stage(tmp_path):
    image, seg = labelled_volume((10, 20, 24))
    write_volume(image, tmp_path/'in'/'c_0000.nii.gz', (1., 1., 2.))
    write_volume(seg, tmp_path/'prev'/'c.nii.gz', (1., 1., 2.))
    plans = hand_plans(spacing=(2., 1., 1.))
    plans.plans['configurations']['3d_fullres']['previous_stage'] = '3d_lowres'
    class FromOneHot(torch.nn.Module):      # predicts the previous stage's labels from the appended channels
        def forward(self, x): return torch.cat([1 - x[:, 1:].sum(1, keepdim=True), x[:, 1:]], 1) * 10
    p = Predictor(FromOneHot(), plans, '3d_fullres', dataset_json())
    data, _ = p.preprocess([tmp_path/'in'/'c_0000.nii.gz'], tmp_path/'prev'/'c.nii.gz')
    assert data.shape[0] == 3
    with pytest.raises(InferenceError, match='previous_stage_predictions'): p.predict_from_files(tmp_path/'in', tmp_path/'out')
    out = p.predict_from_files(tmp_path/'in', tmp_path/'out', previous_stage_predictions=tmp_path/'prev')
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out[0]))), seg)


# ---------------------------------------------------------------- bad inputs: clear errors, nothing written
@pytest.fixture
def two_channel_model(tmp_path):
    return model_folder(tmp_path/'model', hand_plans(channels=2), dataset_json(channels=2))


def test_missing_channel_file(tmp_path, two_channel_model):
    image, _ = labelled_volume((8, 16, 16))
    write_volume(image, tmp_path/'in'/'a_0000.nii.gz'); write_volume(image, tmp_path/'in'/'a_0001.nii.gz')
    write_volume(image, tmp_path/'in'/'b_0000.nii.gz')
    p = Predictor.from_model_folder(two_channel_model, progress=False)
    with pytest.raises(InferenceError, match='b_0001.nii.gz'): p.predict_from_files(tmp_path/'in', tmp_path/'out')
    with pytest.raises(InferenceError, match='needs 2 channel'):
        p.predict_from_files([[tmp_path/'in'/'b_0000.nii.gz']], tmp_path/'out')
    assert not (tmp_path/'out').exists()


def test_wrong_file_ending(tmp_path):
    image, _ = labelled_volume((8, 16, 16))
    write_volume(image, tmp_path/'in'/'a_0000.nrrd')
    p = Predictor.from_model_folder(FIXTURE/'model', progress=False)
    with pytest.raises(InferenceError, match=r'no images ending in \.nii\.gz.*found \.nrrd'):
        p.predict_from_files(tmp_path/'in', tmp_path/'out')
    with pytest.raises(InferenceError, match=r'a_0000\.nrrd: does not end in \.nii\.gz'):
        p.predict_from_files([[tmp_path/'in'/'a_0000.nrrd']], tmp_path/'out')
    assert not (tmp_path/'out').exists()


def test_model_folder_without_requested_fold(tmp_path):
    with pytest.raises(InferenceError, match=r'fold_3/checkpoint_final\.pth does not exist.*fold\(s\) \[0\]'):
        Predictor.from_model_folder(FIXTURE/'model', folds=(0, 3))
    with pytest.raises(InferenceError, match='checkpoint_best.pth'):
        Predictor.from_model_folder(FIXTURE/'model', checkpoint_name='checkpoint_best.pth')


def test_plans_and_dataset_mismatch(tmp_path):
    folder = tmp_path/'model'
    shutil.copytree(FIXTURE/'model', folder)
    ds = json.loads((folder/'dataset.json').read_text())
    ds['channel_names'] = {'0': 'CT', '1': 'PET'}
    (folder/'dataset.json').write_text(json.dumps(ds))
    with pytest.raises(InferenceError, match=r'plans\.json names 1 normalisation scheme.*dataset\.json declares 2 channel'):
        Predictor.from_model_folder(folder)
    ds['channel_names'] = {'0': 'CT'}; ds['labels'] = {'background': 0, 'organ': 1}
    (folder/'dataset.json').write_text(json.dumps(ds))
    with pytest.raises(InferenceError, match=r'checkpoint_final\.pth.*predicts 3 class\(es\).*labels give 2'):
        Predictor.from_model_folder(folder)


def test_checkpoint_input_channels_mismatch(tmp_path):
    folder = model_folder(tmp_path/'model', hand_plans(), dataset_json(), in_channels=2)
    with pytest.raises(InferenceError, match=r'takes 2 input channel\(s\); plans\.json/dataset\.json give 1'):
        Predictor.from_model_folder(folder)


def test_failed_export_leaves_nothing_partial(tmp_path, monkeypatch):
    import nnunet_nb.inference as inference
    def broken(*args, **kwargs): raise OSError('disk full')
    monkeypatch.setattr(inference, 'write_seg', broken)
    p = Predictor.from_model_folder(FIXTURE/'model', use_mirroring=False, progress=False)
    with pytest.raises(OSError, match='disk full'): p.predict_from_files(FIXTURE/'input', tmp_path/'out')
    assert not list((tmp_path/'out').glob('*.nii.gz')) and not list((tmp_path/'out').glob('.*'))
