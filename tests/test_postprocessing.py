"""Postprocessing stage: connected components on hand-made label maps, the acceptance rules, determine/apply
postprocessing on folders (labels and regions), postprocessing.pkl/json round trips (nnU-Net's function reference,
restricted unpickling), ensembling known probabilities (average, argmax, regions), find_best_configuration on a
simulated results tree (winner, files, printed commands) and errors that name the file."""
from __future__ import annotations
import json, pickle
from pathlib import Path
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import write_volume
from nnunet_nb.io import make_properties, read_seg
from nnunet_nb.paths import load_json, save_json, model_folder_name
from nnunet_nb.postprocessing import (
    PostprocessingError, NNUNET_PP_MODULE, keep_largest_component, remove_all_but_largest_component_from_segmentation,
    postprocess_segmentation, accept_whole_foreground_step, accept_label_step, save_postprocessing, load_postprocessing,
    determine_postprocessing, apply_postprocessing, apply_postprocessing_to_folder, average_probabilities,
    ensemble_folders, ensemble_crossvalidations, accumulate_crossvalidation, simulate_crossvalidation,
    find_best_configuration, ensemble_name, crossvalidation_folder_name)

LABELS = {'background': 0, 'organ': 1, 'lesion': 2}
DATASET_JSON = {'channel_names': {'0': 'CT'}, 'labels': LABELS, 'numTraining': 3, 'file_ending': '.nii.gz'}
PLANS = {'dataset_name': 'Dataset530_Test', 'plans_name': 'nnUNetPlans', 'image_reader_writer': 'SimpleITKIO',
         'configurations': {'2d': {}, '3d_fullres': {}}}
STEP = remove_all_but_largest_component_from_segmentation


def read(file): return sitk.GetArrayFromImage(sitk.ReadImage(str(file)))


# ---- connected components -------------------------------------------------------------------------------

def test_full_connectivity_in_3d():
    m = np.zeros((4, 6, 6), bool)
    m[0:2, 0:2, 0:2] = True           # 8 voxels
    m[2, 2, 2] = True                 # touches the block only at a corner: same component (26-connectivity)
    m[3, 5, 5] = m[3, 4, 5] = True    # separate, 2 voxels (no contact with (2, 2, 2))
    kept = keep_largest_component(m)
    assert kept.sum() == 9 and kept[2, 2, 2] and not kept[3, 5, 5]


def test_whole_foreground_then_per_label():
    seg = np.zeros((1, 12, 12), np.uint8)
    seg[0, 1:7, 1:7] = 1; seg[0, 3:5, 3:5] = 2     # organ with an inner lesion
    seg[0, 10, 10] = 1                              # organ island
    seg[0, 9:11, 1:3] = 2                           # a lesion outside the organ
    whole = STEP(seg, [1, 2])
    assert whole[0, 10, 10] == 0 and not (whole[0, 9:11, 1:3] == 2).any() and (whole[0, 3:5, 3:5] == 2).all()
    organ = STEP(seg, 1)
    assert organ[0, 10, 10] == 0 and (organ[0, 9:11, 1:3] == 2).all()    # lesions untouched
    lesion = STEP(seg, 2)                                                 # two lesions of 4: a tie, both kept
    np.testing.assert_array_equal(lesion, seg)
    assert seg[0, 10, 10] == 1                                            # input unchanged
    np.testing.assert_array_equal(STEP(seg, (1, 2)), whole)               # region == union
    chained = postprocess_segmentation(seg, [STEP, STEP], [{'labels_or_regions': 1}, {'labels_or_regions': 2}])
    np.testing.assert_array_equal(chained, organ)


def test_empty_mask():
    assert not keep_largest_component(np.zeros((2, 3, 3), bool)).any()
    seg = np.zeros((1, 4, 4), np.uint8)
    np.testing.assert_array_equal(STEP(seg, [1, 2]), seg)


# ---- acceptance rules --------------------------------------------------------------------------------------

def summary(fg, **labels):
    return {'foreground_mean': {'Dice': fg}, 'mean': {k.lstrip('_'): {'Dice': v} for k, v in labels.items()}}


def test_acceptance_rules():
    base = summary(0.8, _1=0.9, _2=0.7)
    assert accept_whole_foreground_step(base, summary(0.81, _1=0.92, _2=0.7))
    assert not accept_whole_foreground_step(base, summary(0.9, _1=1.0, _2=0.69))   # one class worse
    assert not accept_whole_foreground_step(base, base)                            # equal: rejected
    assert not accept_whole_foreground_step(base, summary(0.79, _1=0.9, _2=0.7))
    assert accept_label_step(base, summary(0.7, _1=0.95, _2=0.1), '1')             # only that label counts
    assert not accept_label_step(base, base, '1')
    nan = float('nan')
    assert accept_whole_foreground_step(summary(0.8, _1=0.8, _3=nan), summary(0.9, _1=0.9, _3=nan))
    assert not accept_label_step(summary(0.8, _3=nan), summary(0.9, _3=nan), '3')


# ---- determine / apply on folders ---------------------------------------------------------------------------

def organ_case(island=True, outer_lesion=False, shape=(4, 16, 16)):
    "Reference and prediction: organ box with inner lesion; the prediction adds an organ island (and the reference and prediction an outer lesion)."
    ref = np.zeros(shape, np.uint8); ref[1:3, 2:10, 2:10] = 1; ref[1:3, 4:6, 4:6] = 2
    if outer_lesion: ref[1:3, 13:15, 2:4] = 2
    pred = ref.copy()
    if island: pred[1:3, 13:15, 12:15] = 1
    return ref, pred


def write_folders(tmp_path, cases, dataset_json=DATASET_JSON):
    ref_folder, pred_folder = tmp_path/'ref', tmp_path/'pred'
    for i, (ref, pred) in enumerate(cases):
        write_volume(ref, ref_folder/f'case_{i:03d}.nii.gz'); write_volume(pred, pred_folder/f'case_{i:03d}.nii.gz')
    save_json(PLANS, pred_folder/'plans.json'); save_json(dataset_json, pred_folder/'dataset.json')
    return ref_folder, pred_folder


def test_determine_postprocessing_rejects_whole_foreground_when_a_class_worsens(tmp_path, capsys):
    # the whole-foreground step removes the organ island (organ better) but also the true outer lesion (lesion worse)
    cases = [organ_case(island=True, outer_lesion=True), organ_case(island=True, outer_lesion=False)]
    ref_folder, pred_folder = write_folders(tmp_path, cases)
    fns, kwargs = determine_postprocessing(pred_folder, ref_folder, num_processes=1)
    assert fns == [STEP] and kwargs == [{'labels_or_regions': 1}]
    out = capsys.readouterr().out
    assert 'foreground component does not improve' in out and 'Accepted' in out
    pp = load_json(pred_folder/'postprocessing.json')
    assert pp['postprocessing_fns'] == ['remove_all_but_largest_component_from_segmentation']
    assert pp['postprocessing_kwargs'] == [{'labels_or_regions': 1}]
    assert pp['input_folder']['mean']['1']['Dice'] < 1 and pp['postprocessed']['mean']['1']['Dice'] == 1.0
    assert pp['postprocessed']['mean']['2']['Dice'] == 1.0
    assert load_postprocessing(pred_folder/'postprocessing.pkl') == (fns, kwargs)
    post = pred_folder/'postprocessed'
    assert sorted(p.name for p in post.glob('*.nii.gz')) == ['case_000.nii.gz', 'case_001.nii.gz']
    for i, (ref, _) in enumerate(cases): np.testing.assert_array_equal(read(post/f'case_{i:03d}.nii.gz'), ref)
    s = load_json(post/'summary.json')
    assert s['foreground_mean']['Dice'] == 1.0 and s['metric_per_case'][0]['prediction_file'].startswith(str(post))
    assert (pred_folder/'summary.json').is_file()                       # written because it was missing
    assert read_seg(post/'case_000.nii.gz')[1]['spacing'] == read_seg(pred_folder/'case_000.nii.gz')[1]['spacing']


def test_determine_postprocessing_accepts_whole_foreground(tmp_path):
    ref_folder, pred_folder = write_folders(tmp_path, [organ_case(), organ_case(island=False)])
    fns, kwargs = determine_postprocessing(pred_folder, ref_folder, num_processes=2, keep_postprocessed_files=False,
                                           verbose=False)
    assert kwargs == [{'labels_or_regions': [1, 2]}]          # per-label steps change nothing afterwards: rejected
    assert not (pred_folder/'postprocessed').exists()


def test_nothing_to_remove_keeps_predictions(tmp_path):
    ref_folder, pred_folder = write_folders(tmp_path, [organ_case(island=False)] * 2)
    assert determine_postprocessing(pred_folder, ref_folder, num_processes=1, verbose=False) == ([], [])
    assert load_json(pred_folder/'postprocessing.json')['postprocessing_fns'] == []
    assert (pred_folder/'postprocessed'/'case_000.nii.gz').is_file()


def test_determine_postprocessing_regions(tmp_path):
    regions = dict(DATASET_JSON, labels={'background': 0, 'whole': [1, 2], 'core': [2]}, regions_class_order=[1, 2])
    ref, pred = organ_case(island=False)
    pred = pred.copy(); pred[1:3, 13:15, 12:15] = 2      # an island of core (inside 'whole' too)
    ref_folder, pred_folder = write_folders(tmp_path, [(ref, pred)], regions)
    fns, kwargs = determine_postprocessing(pred_folder, ref_folder, num_processes=1, verbose=False)
    assert kwargs[0] == {'labels_or_regions': [1, 2]}     # whole foreground removes the island
    s = load_json(pred_folder/'postprocessed'/'summary.json')
    assert set(s['mean']) == {'(1, 2)', '(2,)'} and s['foreground_mean']['Dice'] == 1.0


def test_apply_postprocessing_folder(tmp_path):
    ref_folder, pred_folder = write_folders(tmp_path, [organ_case(), organ_case()])
    save_postprocessing([STEP], [{'labels_or_regions': [1, 2]}], tmp_path/'postprocessing.pkl')
    written = apply_postprocessing(pred_folder, tmp_path/'out', tmp_path/'postprocessing.pkl', num_processes=1)
    assert [p.name for p in written] == ['case_000.nii.gz', 'case_001.nii.gz']
    np.testing.assert_array_equal(read(tmp_path/'out'/'case_000.nii.gz'), organ_case()[0])
    # the CLI-shaped function and explicit plans/dataset.json
    (pred_folder/'plans.json').unlink()
    with pytest.raises(PostprocessingError, match='plans.json does not exist.*-plans_json'):
        apply_postprocessing(pred_folder, tmp_path/'out2', tmp_path/'postprocessing.pkl', num_processes=1)
    apply_postprocessing(pred_folder, tmp_path/'out2', tmp_path/'postprocessing.pkl', num_processes=1, plans_json=PLANS)
    assert (tmp_path/'out2'/'case_001.nii.gz').is_file()
    with pytest.raises(PostprocessingError, match='is the input folder'):
        apply_postprocessing_to_folder(pred_folder, pred_folder, [STEP], [{'labels_or_regions': 1}], PLANS)
    with pytest.raises(PostprocessingError, match='missing.pkl does not exist'):
        apply_postprocessing(pred_folder, tmp_path/'o3', tmp_path/'missing.pkl')


# ---- pkl / json ---------------------------------------------------------------------------------------------

def test_pkl_uses_nnunet_reference_and_round_trips(tmp_path):
    kwargs = [{'labels_or_regions': [1, 2]}, {'labels_or_regions': (1, 2)}, {'labels_or_regions': 2}]
    save_postprocessing([STEP] * 3, kwargs, tmp_path/'pp.pkl')
    data = (tmp_path/'pp.pkl').read_bytes()
    assert NNUNET_PP_MODULE.encode() in data and b'nnunet_nb' not in data
    assert load_postprocessing(tmp_path/'pp.pkl') == ([STEP] * 3, kwargs)
    with pytest.raises(ModuleNotFoundError):        # plain pickle needs nnunetv2: that is what nnU-Net will find
        pickle.loads(data)


def test_restricted_unpickler_and_json(tmp_path):
    import os
    (tmp_path/'bad.pkl').write_bytes(pickle.dumps(([os.system], [{'command': 'true'}])))
    with pytest.raises(PostprocessingError, match='bad.pkl refers to .*system'):
        load_postprocessing(tmp_path/'bad.pkl')
    (tmp_path/'junk.pkl').write_bytes(b'not a pickle')
    with pytest.raises(PostprocessingError, match='junk.pkl is not a readable'):
        load_postprocessing(tmp_path/'junk.pkl')
    save_json({'postprocessing_fns': ['remove_all_but_largest_component_from_segmentation'],
               'postprocessing_kwargs': [{'labels_or_regions': [1, 2]}]}, tmp_path/'postprocessing.json')
    assert load_postprocessing(tmp_path/'postprocessing.json') == ([STEP], [{'labels_or_regions': [1, 2]}])
    save_json({'postprocessing_fns': ['something_else'], 'postprocessing_kwargs': [{}]}, tmp_path/'other.json')
    with pytest.raises(PostprocessingError, match='unknown functions'):
        load_postprocessing(tmp_path/'other.json')


# ---- ensembling -------------------------------------------------------------------------------------------

def write_prediction_folder(folder, probabilities_per_case, dataset_json=DATASET_JSON):
    folder.mkdir(parents=True, exist_ok=True)
    props = make_properties((3.0, 0.8, 0.8))
    for case, p in probabilities_per_case.items():
        np.savez_compressed(folder/f'{case}.npz', probabilities=p.astype(np.float32))
        (folder/f'{case}.pkl').write_bytes(pickle.dumps(props))
    save_json(dataset_json, folder/'dataset.json'); save_json(PLANS, folder/'plans.json')
    return folder


def test_ensemble_two_folders_average_and_argmax(tmp_path):
    a = np.zeros((3, 1, 2, 3)); a[0] = .5; a[1] = .4; a[2] = .1      # background everywhere, organ second
    b = np.zeros((3, 1, 2, 3)); b[0] = .1; b[1] = .4; b[2] = .5      # lesion everywhere, organ second
    b[:, 0, 1, 2] = [.9, .05, .05]                                   # one voxel: clearly background
    f1 = write_prediction_folder(tmp_path/'m1', {'case_000': a, 'case_001': a})
    f2 = write_prediction_folder(tmp_path/'m2', {'case_000': b, 'case_001': b})
    written = ensemble_folders([f1, f2], tmp_path/'ens', save_merged_probabilities=True, num_processes=1)
    assert [p.name for p in written] == ['case_000.nii.gz', 'case_001.nii.gz']
    seg = read(tmp_path/'ens'/'case_000.nii.gz')
    expected = np.ones((1, 2, 3), np.uint8); expected[0, 1, 2] = 0     # mean (.3, .4, .3) -> organ
    np.testing.assert_array_equal(seg, expected)
    np.testing.assert_allclose(np.load(tmp_path/'ens'/'case_000.npz')['probabilities'], (a + b) / 2, atol=1e-7)
    assert (tmp_path/'ens'/'case_000.pkl').is_file() and (tmp_path/'ens'/'dataset.json').is_file()
    assert sitk.ReadImage(str(tmp_path/'ens'/'case_000.nii.gz')).GetSpacing() == pytest.approx((0.8, 0.8, 3.0))
    np.testing.assert_allclose(average_probabilities([f1/'case_000.npz', f2/'case_000.npz']), (a + b) / 2, atol=1e-7)


def test_ensemble_regions(tmp_path):
    regions = dict(DATASET_JSON, labels={'background': 0, 'whole': [1, 2], 'core': [2]}, regions_class_order=[1, 2])
    a = np.zeros((2, 1, 1, 3)); a[0, 0, 0] = [.9, .7, .1]; a[1, 0, 0] = [.8, .1, .1]
    b = np.zeros((2, 1, 1, 3)); b[0, 0, 0] = [.9, .5, .2]; b[1, 0, 0] = [.4, .2, .0]
    f1 = write_prediction_folder(tmp_path/'m1', {'c': a}, regions)
    f2 = write_prediction_folder(tmp_path/'m2', {'c': b}, regions)
    ensemble_folders([f1, f2], tmp_path/'ens', num_processes=1)
    # whole: .9 .6 .15 -> 1 1 0; core: .6 .15 .05 -> 2 at voxel 0
    np.testing.assert_array_equal(read(tmp_path/'ens'/'c.nii.gz'), [[[2, 1, 0]]])


def test_ensemble_errors_name_files(tmp_path):
    p = np.full((3, 1, 2, 2), 1 / 3)
    f1 = write_prediction_folder(tmp_path/'m1', {'case_000': p, 'case_001': p})
    f2 = write_prediction_folder(tmp_path/'m2', {'case_000': p})
    with pytest.raises(PostprocessingError, match=r'missing from .*m2: .*m2/case_001.npz does not exist'):
        ensemble_folders([f1, f2], tmp_path/'ens', num_processes=1)
    assert not (tmp_path/'ens').exists()                       # nothing half-written
    write_prediction_folder(f2, {'case_001': np.full((3, 1, 3, 3), 1 / 3)})
    with pytest.raises(PostprocessingError, match=r'case_001.npz holds probabilities of shape \[3, 1, 3, 3\]'):
        ensemble_folders([f1, f2], tmp_path/'ens', num_processes=1)
    (f1/'case_000.pkl').unlink()
    with pytest.raises(PostprocessingError, match='case_000.pkl does not exist'):
        ensemble_folders([f1, f2], tmp_path/'ens2', num_processes=1)
    with pytest.raises(PostprocessingError, match='at least two'):
        ensemble_folders([f1], tmp_path/'ens3')
    empty = tmp_path/'empty'; empty.mkdir(); save_json(DATASET_JSON, empty/'dataset.json'); save_json(PLANS, empty/'plans.json')
    with pytest.raises(PostprocessingError, match='No .npz probability files'):
        ensemble_folders([empty, empty], tmp_path/'ens4')


# ---- cross-validation and find_best_configuration ------------------------------------------------------------

@pytest.fixture
def results_tree(tmp_path, monkeypatch):
    "Five reference cases, plans with 2d and 3d_fullres, two simulated configurations (3d_fullres cleaner)."
    for var, sub in (('nnUNet_raw', 'raw'), ('nnUNet_preprocessed', 'preprocessed'), ('nnUNet_results', 'results')):
        monkeypatch.setenv(var, str(tmp_path/sub))
    name = PLANS['dataset_name']
    labels = tmp_path/'raw'/name/'labelsTr'
    for i in range(5):
        ref, _ = organ_case(island=False, shape=(6, 20, 20))
        write_volume(np.roll(ref, i, axis=2), labels/f'case_{i:03d}.nii.gz')
    save_json(dict(DATASET_JSON, numTraining=5), tmp_path/'raw'/name/'dataset.json')
    save_json(PLANS, tmp_path/'preprocessed'/name/'nnUNetPlans.json')
    import shutil; shutil.copytree(labels, tmp_path/'preprocessed'/name/'gt_segmentations')
    results = tmp_path/'results'/name
    for config, noise, islands, seed in (('2d', 2.0, 0.8, 1), ('3d_fullres', 0.8, 0.6, 2)):
        simulate_crossvalidation(labels, results/model_folder_name(configuration=config), dict(DATASET_JSON, numTraining=5),
                                 PLANS, noise=noise, island_probability=islands, island_size=2, seed=seed)
    return tmp_path


def test_find_best_configuration_on_simulated_tree(results_tree, capsys):
    info = find_best_configuration('530', ['2d', '3d_fullres', '3d_lowres'], num_processes=1)
    out = capsys.readouterr().out
    assert 'Configuration 3d_lowres is not in' in out             # not planned: skipped, not an error
    results = results_tree/'results'/PLANS['dataset_name']
    m2d, m3d = (f'nnUNetTrainer__nnUNetPlans__{c}' for c in ('2d', '3d_fullres'))
    ens = ensemble_name(m2d, m3d, range(5))
    assert list(info['all_results']) == [m2d, m3d, ens]
    for k in (m2d, m3d):
        s = load_json(results/k/crossvalidation_folder_name(range(5))/'summary.json')
        assert s['foreground_mean']['Dice'] == info['all_results'][k] and len(s['metric_per_case']) == 5
    assert load_json(results/'ensembles'/ens/'summary.json')['foreground_mean']['Dice'] == info['all_results'][ens]
    best = max(info['all_results'], key=info['all_results'].get)
    b = info['best_model_or_ensemble']
    assert b['result_on_crossval_pre_pp'] == info['all_results'][best]
    expected = [m2d, m3d] if best == ens else [best]
    assert [f"nnUNetTrainer__nnUNetPlans__{m['configuration']}" for m in b['selected_model_or_models']] == expected
    assert b['result_on_crossval_post_pp'] >= b['result_on_crossval_pre_pp']
    assert Path(b['postprocessing_file']).is_file() and Path(b['some_plans_file']).is_file()
    on_disk = load_json(results/'inference_information.json')
    assert sorted(on_disk) == ['all_results', 'best_model_or_ensemble', 'considered_models', 'dataset_name_or_id',
                               'ensembling_allowed', 'folds']
    assert on_disk['folds'] == [0, 1, 2, 3, 4] and on_disk['dataset_name_or_id'] == PLANS['dataset_name']
    assert on_disk['considered_models'] == [{'plans': 'nnUNetPlans', 'configuration': c, 'trainer': 'nnUNetTrainer'}
                                            for c in ('2d', '3d_fullres')]
    text = (results/'inference_instructions.txt').read_text()
    assert 'nnunet_nb_predict -d Dataset530_Test -i INPUT_FOLDER' in text and 'nnunet_nb_apply_postprocessing' in text
    assert f"-pp_pkl_file {b['postprocessing_file']}" in text and text.strip() in out
    assert ('nnunet_nb_ensemble -i OUTPUT_FOLDER_MODEL_1 OUTPUT_FOLDER_MODEL_2' in text) == (best == ens)
    # without ensembling: only the two configurations, the better one wins
    info = find_best_configuration('530', ('2d', '3d_fullres'), num_processes=1, allow_ensembling=False, verbose=False)
    assert list(info['all_results']) == [m2d, m3d]
    assert info['best_model_or_ensemble']['selected_model_or_models'][0]['configuration'] == \
        max(('2d', '3d_fullres'), key=lambda c: info['all_results'][f'nnUNetTrainer__nnUNetPlans__{c}'])


def test_find_best_configuration_errors(results_tree):
    name = PLANS['dataset_name']
    plans = dict(PLANS, configurations={'2d': {}, '3d_fullres': {}, '3d_lowres': {}})
    save_json(plans, results_tree/'preprocessed'/name/'nnUNetPlans.json')
    with pytest.raises(PostprocessingError, match=r'nnUNetTrainer__nnUNetPlans__3d_lowres does not exist.*-c'):
        find_best_configuration(530, ('2d', '3d_lowres'), num_processes=1, verbose=False)
    with pytest.raises(PostprocessingError, match=r'OtherPlans.json does not exist'):
        find_best_configuration(530, ('2d',), plans=('OtherPlans',), num_processes=1, verbose=False)
    folder = results_tree/'results'/name/'nnUNetTrainer__nnUNetPlans__3d_fullres'
    for f in (folder/'fold_2'/'validation').glob('*.npz'): f.unlink()
    with pytest.raises(PostprocessingError, match=r'fold_2/validation holds no .npz.*--npz'):
        find_best_configuration(530, ('2d', '3d_fullres'), num_processes=1, verbose=False)


def test_crossvalidation_mismatches(results_tree):
    name = PLANS['dataset_name']
    m2d = results_tree/'results'/name/'nnUNetTrainer__nnUNetPlans__2d'
    m3d = results_tree/'results'/name/'nnUNetTrainer__nnUNetPlans__3d_fullres'
    v = m3d/'fold_1'/'validation'
    (v/'case_001.npz').rename(v/'case_099.npz')         # 3d_fullres lacks case_001 and has a case 2d lacks
    with pytest.raises(PostprocessingError, match=r'__2d has no validation probabilities for 1 case.*case_099.npz'):
        ensemble_crossvalidations([m2d, m3d], results_tree/'ens', num_processes=1)
    import shutil
    shutil.copy(m2d/'fold_0'/'validation'/'case_000.nii.gz', m2d/'fold_1'/'validation'/'case_000.nii.gz')
    with pytest.raises(PostprocessingError, match=r'case_000.nii.gz is predicted by two folds'):
        accumulate_crossvalidation(m2d, num_processes=1)
    with pytest.raises(PostprocessingError, match=r'fold_7/validation does not exist'):
        accumulate_crossvalidation(m3d, folds=(0, 7), num_processes=1)
    s = accumulate_crossvalidation(m3d, folds=(0, 1), num_processes=1)     # a subset of folds: scored on its cases
    assert len(s['metric_per_case']) == 2


def test_determine_postprocessing_without_keeping_files(tmp_path):
    ref_folder, pred_folder = write_folders(tmp_path, [organ_case()])
    fns, kwargs = determine_postprocessing(pred_folder, ref_folder, num_processes=1, keep_postprocessed_files=False)
    assert kwargs == [{'labels_or_regions': [1, 2]}] and not (pred_folder/'postprocessed').exists()
    with pytest.raises(PostprocessingError, match='nope does not exist'):
        determine_postprocessing(tmp_path/'nope', ref_folder)
