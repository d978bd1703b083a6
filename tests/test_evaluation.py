"""Evaluation stage: counts and scores on hand-made masks, NaN rules and means, regions, ignore label,
summary.json schema, folder matching errors, chill mode, surface metrics at anisotropic spacing, 2D PNG files."""
from __future__ import annotations
import json, math
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from conftest import write_volume
from nnunet_nb.evaluation import (EvaluationError, compute_metrics, compute_metrics_on_arrays, confusion_counts,
                                  evaluate_folder, evaluate_folder_with_json, evaluate_simple, hd95_and_nsd,
                                  label_key, labels_or_regions_from_dataset_json, surface_distances, surface_voxels,
                                  METRICS)

METRIC_KEYS = sorted(METRICS)   # as written (sorted): Dice, FN, FP, IoU, TN, TP, n_pred, n_ref


def pair():
    "Reference: a 3 x 4 box of 1; prediction: the same box moved by (1, 1). TP 6, FP 6, FN 6, TN 30."
    ref = np.zeros((6, 8), np.uint8); ref[1:4, 1:5] = 1
    pred = np.zeros((6, 8), np.uint8); pred[2:5, 2:6] = 1
    return ref, pred


# ---- numbers on hand-made masks ----------------------------------------------------------------------

def test_counts_dice_iou():
    ref, pred = pair()
    m = compute_metrics_on_arrays(ref, pred, [1])[1]
    assert (m['TP'], m['FP'], m['FN'], m['TN'], m['n_pred'], m['n_ref']) == (6, 6, 6, 30, 12, 12)
    assert m['Dice'] == pytest.approx(0.5) and m['IoU'] == pytest.approx(1 / 3)
    assert all(isinstance(m[k], int) for k in ('TP', 'FP', 'FN', 'TN', 'n_pred', 'n_ref'))


def test_perfect_and_disjoint():
    ref, _ = pair()
    assert compute_metrics_on_arrays(ref, ref, [1])[1]['Dice'] == 1.0
    far = np.zeros_like(ref); far[5, 7] = 1
    m = compute_metrics_on_arrays(ref, far, [1])[1]
    assert (m['Dice'], m['IoU'], m['TP'], m['FP'], m['FN']) == (0.0, 0.0, 0, 1, 12)


def test_both_empty_is_nan_and_one_empty_is_zero():
    ref, pred = pair()
    m = compute_metrics_on_arrays(ref, pred, [2])[2]
    assert math.isnan(m['Dice']) and math.isnan(m['IoU']) and m['TN'] == ref.size
    only_pred = np.zeros_like(ref); only_pred[0, 0] = 2
    assert compute_metrics_on_arrays(ref, only_pred, [2])[2]['Dice'] == 0.0


def test_regions_are_unions():
    ref = np.array([[0, 1, 1, 2, 2, 3]]); pred = np.array([[0, 1, 2, 2, 3, 3]])
    m = compute_metrics_on_arrays(ref, pred, [(1, 2, 3), [2, 3], (3,), 2])
    assert list(m) == [(1, 2, 3), (2, 3), (3,), 2]
    assert m[(1, 2, 3)]['Dice'] == 1.0
    assert m[(2, 3)]['Dice'] == pytest.approx(6 / 7)
    assert m[(3,)]['Dice'] == pytest.approx(2 / 3) and m[2]['Dice'] == pytest.approx(2 / 4)
    assert [label_key(r) for r in m] == ['(1, 2, 3)', '(2, 3)', '(3,)', '2']


def test_ignore_label_excluded_from_every_count():
    ref, pred = pair()
    ref = ref.copy(); ref[:, 6:] = 3
    pred = pred.copy(); pred[0, 6:] = 1; pred[5, 7] = 2    # whatever is predicted there does not count
    m = compute_metrics_on_arrays(ref, pred, [1, 2], ignore_label=3)
    assert (m[1]['TP'], m[1]['FP'], m[1]['FN'], m[1]['TN']) == (6, 6, 6, 18)
    assert m[1]['TP'] + m[1]['FP'] + m[1]['FN'] + m[1]['TN'] == int((ref != 3).sum())
    assert math.isnan(m[2]['Dice'])
    assert confusion_counts(ref == 1, pred == 1) != confusion_counts(ref == 1, pred == 1, ref == 3)


def test_shape_mismatch_is_an_error():
    with pytest.raises(EvaluationError, match='shape'):
        compute_metrics_on_arrays(np.zeros((3, 3)), np.zeros((3, 4)), [1])


# ---- folders and summary.json ------------------------------------------------------------------------

def write_folders(tmp_path, cases):
    "cases: name -> (reference [z, y, x], prediction [z, y, x] or None)."
    ref_folder, pred_folder = tmp_path/'ref', tmp_path/'pred'
    for name, (ref, pred) in cases.items():
        write_volume(ref.astype(np.uint8), ref_folder/f'{name}.nii.gz')
        if pred is not None: write_volume(pred.astype(np.uint8), pred_folder/f'{name}.nii.gz')
    pred_folder.mkdir(exist_ok=True)
    return ref_folder, pred_folder


def three_cases():
    a = np.zeros((3, 6, 8), np.uint8); a[1, 1:4, 1:5] = 1
    b = a.copy(); b[1, 2:5, 2:6] = 1; b[1, 1, 1:5] = 0; b[1, 1:4, 1] = 0     # moved box
    c = np.zeros_like(a); c[2, 0, 0] = 2                                       # label 1 absent in case c
    return {'case_a': (a, a), 'case_b': (a, b), 'case_c': (c, c)}


def test_summary_schema_and_means(tmp_path):
    ref_folder, pred_folder = write_folders(tmp_path, three_cases())
    out = tmp_path/'summary.json'
    summary = evaluate_folder(ref_folder, pred_folder, [1, 2], out, num_processes=1)
    text = out.read_text()
    written = json.loads(text)
    assert list(written) == ['foreground_mean', 'mean', 'metric_per_case']
    assert list(written['mean']) == ['1', '2'] and list(written['mean']['1']) == METRIC_KEYS
    assert list(written['foreground_mean']) == METRIC_KEYS
    case = written['metric_per_case'][0]
    assert list(case) == ['metrics', 'prediction_file', 'reference_file']
    assert case['prediction_file'] == str(pred_folder/'case_a.nii.gz') and case['reference_file'] == str(ref_folder/'case_a.nii.gz')
    assert [Path(c['prediction_file']).name for c in written['metric_per_case']] == ['case_a.nii.gz', 'case_b.nii.gz', 'case_c.nii.gz']
    assert 'NaN' in text                                           # nnU-Net writes NaN, not null
    # label 1: Dice 1 (a), 0.5 (b), NaN (c) -> nanmean 0.75; label 2: NaN, NaN, 1 -> 1
    assert written['mean']['1']['Dice'] == pytest.approx(0.75)
    assert written['mean']['2']['Dice'] == 1.0
    assert written['foreground_mean']['Dice'] == pytest.approx((0.75 + 1.0) / 2)
    assert written['mean']['1']['TP'] == pytest.approx((12 + 6 + 0) / 3)
    assert json.loads(json.dumps(summary)) == written or text == json.dumps(summary, indent=4, sort_keys=True) + '\n'


def test_all_nan_label_makes_foreground_mean_nan(tmp_path):
    ref_folder, pred_folder = write_folders(tmp_path, three_cases())
    s = evaluate_folder(ref_folder, pred_folder, [1, 3], num_processes=1)
    assert math.isnan(s['mean']['3']['Dice']) and s['mean']['3']['TN'] > 0
    assert math.isnan(s['foreground_mean']['Dice']) and not math.isnan(s['foreground_mean']['TP'])
    assert not (pred_folder/'summary.json').exists()                 # output_file None: nothing written


def test_region_keys_in_summary(tmp_path):
    ref_folder, pred_folder = write_folders(tmp_path, three_cases())
    s = evaluate_folder(ref_folder, pred_folder, [(1, 2), (2,), 1], num_processes=1)
    assert list(s['mean']) == ['(1, 2)', '(2,)', '1']
    assert json.loads(json.dumps(s, sort_keys=True))['mean'].keys() == {'(1, 2)', '(2,)', '1'}


def test_parallel_equals_serial(tmp_path):
    ref_folder, pred_folder = write_folders(tmp_path, three_cases())
    serial = evaluate_folder(ref_folder, pred_folder, [1, 2], num_processes=1)
    parallel = evaluate_folder(ref_folder, pred_folder, [1, 2], num_processes=2)
    assert json.dumps(serial) == json.dumps(parallel)


def test_missing_prediction_names_the_file_and_chill(tmp_path):
    cases = three_cases(); cases['case_b'] = (cases['case_b'][0], None)
    ref_folder, pred_folder = write_folders(tmp_path, cases)
    with pytest.raises(EvaluationError, match='case_b.nii.gz') as e:
        evaluate_simple(ref_folder, pred_folder, [1, 2], num_processes=1)
    assert 'chill' in str(e.value)
    assert not (pred_folder/'summary.json').exists()
    s = evaluate_simple(ref_folder, pred_folder, [1, 2], num_processes=1, chill=True)
    assert [Path(c['reference_file']).name for c in s['metric_per_case']] == ['case_a.nii.gz', 'case_c.nii.gz']
    assert (pred_folder/'summary.json').exists()


def test_prediction_without_reference_names_the_file(tmp_path):
    ref_folder, pred_folder = write_folders(tmp_path, three_cases())
    write_volume(np.zeros((3, 6, 8), np.uint8), pred_folder/'stranger.nii.gz')
    (pred_folder/'stranger.npz').write_bytes(b'')                    # other endings are not looked at
    for chill in (False, True):
        with pytest.raises(EvaluationError, match='stranger.nii.gz'):
            evaluate_folder(ref_folder, pred_folder, [1], num_processes=1, chill=chill)


def test_missing_folder_and_wrong_shape(tmp_path):
    ref_folder, pred_folder = write_folders(tmp_path, three_cases())
    with pytest.raises(EvaluationError, match='nowhere'):
        evaluate_folder(ref_folder, tmp_path/'nowhere', [1], num_processes=1)
    write_volume(np.zeros((3, 6, 9), np.uint8), pred_folder/'case_a.nii.gz')
    with pytest.raises(EvaluationError, match='case_a.nii.gz'):
        evaluate_folder(ref_folder, pred_folder, [1], num_processes=1)


def test_evaluate_folder_with_json_regions_and_ignore(tmp_path):
    ref = np.zeros((3, 6, 8), np.uint8); ref[1, 1:4, 1:5] = 1; ref[1, 2, 2] = 2; ref[:, :, 7] = 3
    pred = ref.copy(); pred[1, 2, 2] = 1; pred[:, :, 7] = 1                  # lesion missed; ignored column predicted
    ref_folder, pred_folder = write_folders(tmp_path, {'c1': (ref, pred)})
    dj = {'channel_names': {'0': 'CT'}, 'labels': {'background': 0, 'organ': 1, 'lesion': 2, 'both': [1, 2], 'ignore': 3},
          'regions_class_order': [1, 2, 1], 'numTraining': 1, 'file_ending': '.nii.gz'}
    (tmp_path/'dataset.json').write_text(json.dumps(dj))
    (tmp_path/'plans.json').write_text(json.dumps({'image_reader_writer': 'SimpleITKIO'}))
    assert labels_or_regions_from_dataset_json(tmp_path/'dataset.json') == [1, 2, (1, 2)]
    s = evaluate_folder_with_json(ref_folder, pred_folder, tmp_path/'dataset.json', tmp_path/'plans.json', num_processes=1)
    assert (pred_folder/'summary.json').exists()
    m = s['metric_per_case'][0]['metrics']
    assert list(m) == ['1', '2', '(1, 2)']
    assert m['(1, 2)']['Dice'] == 1.0 and m['2']['Dice'] == 0.0
    assert m['1']['FP'] == 1                                               # only the missed lesion voxel
    assert m['1']['TN'] + m['1']['TP'] + m['1']['FP'] + m['1']['FN'] == int((ref != 3).sum())


def test_labels_from_dataset_json_like_nnunet():
    assert labels_or_regions_from_dataset_json({'labels': {'background': 0, 'a': 1, 'b': 2, 'ignore': 3}}) == [1, 2]
    assert labels_or_regions_from_dataset_json({'labels': {'background': 0, 'wt': [1, 2, 3], 'tc': [2, 3], 'et': [3]}}) == \
        [(1, 2, 3), (2, 3), (3,)]


def test_png_files(tmp_path):
    ref, pred = pair()
    for folder, a in (('ref', ref), ('pred', pred)):
        (tmp_path/folder).mkdir()
        Image.fromarray(a).save(tmp_path/folder/'img_1.png')
        Image.fromarray(a).save(tmp_path/folder/'img_2.png')
    s = evaluate_simple(tmp_path/'ref', tmp_path/'pred', [1], num_processes=1, surface_metrics=True, tolerance_mm=1.0)
    m = s['metric_per_case'][0]['metrics']['1']
    assert (m['TP'], m['FP'], m['FN'], m['TN']) == (6, 6, 6, 30)
    # 2D outlines (z dropped), pixel spacing 1: 10 surface pixels each way, 7 at 1, 2 at 0, one corner at sqrt(2);
    # the 95th percentile interpolates between the two largest (position 0.95 x 9 = 8.55)
    assert m['HD95'] == pytest.approx(1 + 0.55 * (np.sqrt(2) - 1))
    assert m['NSD'] == pytest.approx(18 / 20)
    assert s['surface_metrics'] == {'tolerance_mm': 1.0}
    assert 'HD95' in s['mean']['1'] and 'NSD' in s['foreground_mean']


# ---- surface metrics -----------------------------------------------------------------------------------

@pytest.mark.parametrize('axis, k, expected', [(0, 1, 3.0), (0, 2, 6.0), (1, 2, 2.0), (2, 3, 1.5)])
def test_hd95_cube_shift_anisotropic(axis, k, expected):
    cube = np.zeros((12, 12, 12), bool); cube[3:9, 3:9, 3:9] = True
    moved = np.roll(cube, k, axis=axis)
    spacing = (3.0, 1.0, 0.5)
    m = hd95_and_nsd(cube, moved, spacing, tolerance_mm=expected)
    assert m['HD95'] == pytest.approx(expected)
    assert m['NSD'] == 1.0                                       # everything within k voxel steps
    smaller = hd95_and_nsd(cube, moved, spacing, tolerance_mm=expected - 1e-3)['NSD']
    assert 0 < smaller < 1
    to_pred, to_ref = surface_distances(cube, moved, spacing)
    assert to_pred.max() == pytest.approx(expected) and to_ref.max() == pytest.approx(expected)


def test_surface_distances_match_brute_force():
    rng = np.random.default_rng(0)
    a = np.zeros((6, 9, 9), bool); a[1:5, 2:7, 1:6] = True
    b = a.copy(); b[rng.random(b.shape) < 0.1] ^= True
    spacing = (2.5, 0.7, 1.1)
    to_b, to_a = surface_distances(a, b, spacing)
    pa, pb = np.argwhere(surface_voxels(a)) * spacing, np.argwhere(surface_voxels(b)) * spacing
    d = np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1))
    assert np.allclose(np.sort(to_b), np.sort(d.min(1))) and np.allclose(np.sort(to_a), np.sort(d.min(0)))


def test_surface_metric_edge_cases():
    cube = np.zeros((4, 5, 6), bool); cube[1:3, 1:4, 1:5] = True
    empty = np.zeros_like(cube)
    both = hd95_and_nsd(empty, empty, (2, 1, 1))
    assert math.isnan(both['HD95']) and math.isnan(both['NSD'])
    for r, p in ((cube, empty), (empty, cube)):
        m = hd95_and_nsd(r, p, (2, 1, 1))
        assert m['NSD'] == 0.0 and m['HD95'] == pytest.approx(np.sqrt(8 ** 2 + 5 ** 2 + 6 ** 2))
    assert hd95_and_nsd(cube, cube, (2, 1, 1)) == {'HD95': 0.0, 'NSD': 1.0}


def test_surface_metrics_in_folder_means(tmp_path):
    cube = np.zeros((8, 10, 10), np.uint8); cube[2:6, 2:8, 2:8] = 1
    moved = np.roll(cube, 1, axis=0)
    ref_folder, pred_folder = write_folders(tmp_path, {'a': (cube, cube), 'b': (cube, moved)})
    s = evaluate_folder(ref_folder, pred_folder, [1, 2], num_processes=1, surface_metrics=True, tolerance_mm=1.0)
    per_case = [c['metrics']['1'] for c in s['metric_per_case']]
    assert per_case[0]['HD95'] == 0.0 and per_case[1]['HD95'] == pytest.approx(3.0)   # spacing z = 3 mm (conftest)
    assert s['mean']['1']['HD95'] == pytest.approx(1.5)
    assert math.isnan(s['mean']['2']['HD95'])
    assert s['surface_metrics'] == {'tolerance_mm': 1.0}


def test_compute_metrics_reads_files(tmp_path):
    ref, pred = pair()
    write_volume(ref[None], tmp_path/'r.nii.gz'); write_volume(pred[None], tmp_path/'p.nii.gz')
    out = compute_metrics(tmp_path/'r.nii.gz', tmp_path/'p.nii.gz', [1], reader_writer='SimpleITKIO')
    assert list(out) == ['reference_file', 'prediction_file', 'metrics'] and out['metrics'][1]['TP'] == 6
    with pytest.raises(EvaluationError, match='missing.nii.gz'):
        compute_metrics(tmp_path/'r.nii.gz', tmp_path/'missing.nii.gz', [1])
