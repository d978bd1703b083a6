"""verify_dataset_integrity: one broken dataset per rule. Every test checks that the report names the
offending file and that the dataset folder is byte-identical afterwards."""
import json, shutil
from pathlib import Path
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import write_tiny_dataset, write_volume, folder_hashes, tiny_segmentation
from nnunet_nb.dataset import DatasetError, verify_dataset_integrity, verify_dataset, IntegrityReport


def check(folder, file, text, severity='error', num_processes=1):
    "Run the check; assert a problem of `severity` on `file` whose text contains `text`, and that nothing was written."
    before = folder_hashes(folder)
    if severity == 'error':
        with pytest.raises(DatasetError) as caught: verify_dataset_integrity(folder, num_processes)
        report, message = caught.value.report, str(caught.value)
    else:
        report = verify_dataset_integrity(folder, num_processes)
        message = str(report)
    assert folder_hashes(folder) == before, 'the check modified the dataset folder'
    assert isinstance(report, IntegrityReport)
    hits = [p for p in report.problems if p.file == file and text in p.problem and p.severity == severity]
    assert hits, f'no {severity} on {file} containing {text!r} in:\n{message}'
    assert file in message and text in message
    return report


def edit_json(folder, **changes):
    d = json.loads((folder/'dataset.json').read_text())
    for k, v in changes.items():
        if v is None: d.pop(k, None)
        else: d[k] = v
    (folder/'dataset.json').write_text(json.dumps(d, indent=4))


# --- a good dataset -------------------------------------------------------------------------------

def test_good_dataset_passes(tmp_path):
    folder = write_tiny_dataset(tmp_path/'Dataset001_Good', num_test_cases=2)
    before = folder_hashes(folder)
    report = verify_dataset_integrity(folder, 1)
    assert report.ok and report.problems == [] and report.num_cases == 3
    assert 'OK, no problems found' in str(report)
    assert folder_hashes(folder) == before


def test_good_regions_ignore_dataset_passes(tmp_path):
    labels = {'background': 0, 'whole': [1, 2], 'core': [2], 'ignore': 3}
    folder = write_tiny_dataset(tmp_path/'Dataset002_Regions', labels=labels, regions_class_order=[1, 2])
    assert verify_dataset_integrity(folder, 1).ok


def test_good_rgb_png_dataset_passes(tmp_path):
    from PIL import Image
    folder = tmp_path/'Dataset003_Road'
    for sub in ('imagesTr', 'labelsTr'): (folder/sub).mkdir(parents=True)
    for i in range(2):
        rgb = np.random.default_rng(i).integers(0, 255, (6, 7, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder/'imagesTr'/f'road_{i}_0000.png')
        Image.fromarray((tiny_segmentation((1, 6, 7), 1)[0]).astype(np.uint8)).save(folder/'labelsTr'/f'road_{i}.png')
    (folder/'dataset.json').write_text(json.dumps({'channel_names': {'0': 'R', '1': 'G', '2': 'B'},
                                                   'labels': {'background': 0, 'road': 1}, 'numTraining': 2, 'file_ending': '.png'}))
    assert verify_dataset_integrity(folder, 1).ok


def test_parallel_check_finds_the_same(tmp_path):
    folder = write_tiny_dataset(tmp_path/'Dataset004_Par', num_cases=4)
    write_volume(tiny_segmentation() * 3, folder/'labelsTr'/'case_001.nii.gz')
    write_volume(tiny_segmentation((4, 8, 9)), folder/'labelsTr'/'case_003.nii.gz')
    one = check(folder, 'labelsTr/case_001.nii.gz', 'value(s) [3, 6]', num_processes=1)
    two = check(folder, 'labelsTr/case_003.nii.gz', 'has shape [4, 8, 9]', num_processes=2)
    assert one.problems == two.problems


def test_all_problems_in_one_report(tiny_dataset):
    (tiny_dataset/'imagesTr'/'case_000_0001.nii.gz').unlink()
    write_volume(tiny_segmentation() * 2, tiny_dataset/'labelsTr'/'case_002.nii.gz')
    report = check(tiny_dataset, 'imagesTr/case_000_0001.nii.gz', 'is missing')
    assert [p.file for p in report.errors] == ['imagesTr/case_000_0001.nii.gz', 'labelsTr/case_002.nii.gz']
    assert 'Result: 2 errors' in str(report)


# --- dataset level ---------------------------------------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match='is not a folder'): verify_dataset_integrity(tmp_path/'nope', 1)


def test_missing_dataset_json(tiny_dataset):
    (tiny_dataset/'dataset.json').unlink()
    check(tiny_dataset, 'dataset.json', 'is missing')


def test_missing_images_and_labels_folders(tiny_dataset):
    shutil.rmtree(tiny_dataset/'imagesTr'); shutil.rmtree(tiny_dataset/'labelsTr')
    report = check(tiny_dataset, 'imagesTr', 'is missing')
    assert any(p.file == 'labelsTr' and 'is missing' in p.problem for p in report.errors)


def test_empty_imagesTr(tiny_dataset):
    for f in (tiny_dataset/'imagesTr').iterdir(): f.unlink()
    check(tiny_dataset, 'imagesTr', 'holds no training images')


def test_invalid_json(tiny_dataset):
    (tiny_dataset/'dataset.json').write_text('{"labels": {"background": 0,}}')
    check(tiny_dataset, 'dataset.json', 'not valid JSON')


def test_malformed_key(tiny_dataset):
    edit_json(tiny_dataset, labels={'0': 'background', '1': 'outer', '2': 'inner'}, file_ending=None)
    report = check(tiny_dataset, 'dataset.json', "key 'labels'")
    assert any("key 'file_ending'" in p.problem for p in report.errors)


def test_old_modality_key_is_accepted(tiny_dataset):
    d = json.loads((tiny_dataset/'dataset.json').read_text())
    d['modality'] = d.pop('channel_names')
    (tiny_dataset/'dataset.json').write_text(json.dumps(d))
    assert verify_dataset_integrity(tiny_dataset, 1).ok


def test_num_training_mismatch(tiny_dataset):
    edit_json(tiny_dataset, numTraining=5)
    check(tiny_dataset, 'dataset.json', "'numTraining' is 5, but 3")


def test_non_consecutive_labels(tiny_dataset):
    edit_json(tiny_dataset, labels={'background': 0, 'outer': 1, 'inner': 2, 'rare': 4})
    check(tiny_dataset, 'dataset.json', 'not consecutive from 0 (missing: 3)')


def test_missing_label_values_are_shown_as_ranges(tiny_dataset):
    edit_json(tiny_dataset, labels={'background': 0, 'outer': 1, 'inner': 5, 'mask': 255})
    check(tiny_dataset, 'dataset.json', '(missing: 2-4, 6-254)')


def test_ignore_label_not_highest(tiny_dataset):
    edit_json(tiny_dataset, labels={'background': 0, 'outer': 1, 'ignore': 2, 'inner': 3})
    check(tiny_dataset, 'dataset.json', 'ignore label has the value 2, but 3 is higher')


def test_ignore_label_in_region(tiny_dataset):
    edit_json(tiny_dataset, labels={'background': 0, 'whole': [1, 2], 'core': [2, 3], 'ignore': 3}, regions_class_order=[1, 2])
    check(tiny_dataset, 'dataset.json', 'part of the region(s)')


def test_regions_without_order(tiny_dataset):
    edit_json(tiny_dataset, labels={'background': 0, 'whole': [1, 2], 'core': [2]})
    check(tiny_dataset, 'dataset.json', 'regions_class_order')


def test_duplicate_label_names(tiny_dataset):
    (tiny_dataset/'dataset.json').write_text(
        '{"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "outer": 1, "outer": 2},'
        ' "numTraining": 3, "file_ending": ".nii.gz"}')
    check(tiny_dataset, 'dataset.json', "'outer' appears more than once in 'labels'")


def test_unknown_reader_writer(tiny_dataset):
    edit_json(tiny_dataset, overwrite_image_reader_writer='DicomIO')
    check(tiny_dataset, 'dataset.json', "'overwrite_image_reader_writer'")


# --- names ------------------------------------------------------------------------------------------

def test_missing_channel_file(tiny_dataset):
    (tiny_dataset/'imagesTr'/'case_001_0001.nii.gz').unlink()
    check(tiny_dataset, 'imagesTr/case_001_0001.nii.gz', 'is missing')


def test_extra_channel_file(tiny_dataset):
    shutil.copy(tiny_dataset/'imagesTr'/'case_001_0001.nii.gz', tiny_dataset/'imagesTr'/'case_001_0002.nii.gz')
    check(tiny_dataset, 'imagesTr/case_001_0002.nii.gz', 'declares 2 channel(s)')


def test_image_without_channel_suffix(tiny_dataset):
    shutil.copy(tiny_dataset/'imagesTr'/'case_001_0001.nii.gz', tiny_dataset/'imagesTr'/'extra.nii.gz')
    check(tiny_dataset, 'imagesTr/extra.nii.gz', 'no four-digit channel suffix')


def test_missing_label(tiny_dataset):
    (tiny_dataset/'labelsTr'/'case_002.nii.gz').unlink()
    check(tiny_dataset, 'labelsTr/case_002.nii.gz', 'is missing')


def test_label_without_images(tiny_dataset):
    (tiny_dataset/'labelsTr'/'case_002.nii.gz').rename(tiny_dataset/'labelsTr'/'case_002_0000.nii.gz')
    report = check(tiny_dataset, 'labelsTr/case_002_0000.nii.gz', 'segmentation without images')
    assert 'rename it to case_002.nii.gz' in str(report.errors)


def test_wrong_file_ending(tiny_dataset):
    image = sitk.ReadImage(str(tiny_dataset/'imagesTr'/'case_001_0000.nii.gz'))
    sitk.WriteImage(image, str(tiny_dataset/'imagesTr'/'case_003_0000.nii'))
    check(tiny_dataset, 'imagesTr/case_003_0000.nii', 'ends in .nii, but file_ending')


def test_mixed_file_endings_everywhere(tiny_dataset):
    edit_json(tiny_dataset, file_ending='.nrrd')
    report = check(tiny_dataset, 'imagesTr/case_000_0000.nii.gz', 'ends in .nii.gz, but file_ending in dataset.json is .nrrd')
    assert any(p.file == 'imagesTr' and 'no training images ending in .nrrd' in p.problem for p in report.errors)
    assert any(p.file == 'labelsTr/case_000.nii.gz' for p in report.errors)


def test_duplicate_case_ids_differing_in_case(tiny_dataset):
    for c in (0, 1): shutil.copy(tiny_dataset/'imagesTr'/f'case_000_000{c}.nii.gz', tiny_dataset/'imagesTr'/f'CASE_000_000{c}.nii.gz')
    shutil.copy(tiny_dataset/'labelsTr'/'case_000.nii.gz', tiny_dataset/'labelsTr'/'CASE_000.nii.gz')
    edit_json(tiny_dataset, numTraining=4)
    check(tiny_dataset, 'imagesTr/case_000_0000.nii.gz', 'duplicate case id')


def test_duplicate_case_ids_in_dataset_key(tiny_dataset):
    entry = '{"images": ["imagesTr/case_000_0000.nii.gz", "imagesTr/case_000_0001.nii.gz"], "label": "labelsTr/case_000.nii.gz"}'
    (tiny_dataset/'dataset.json').write_text(
        '{"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "outer": 1, "inner": 2}, "numTraining": 1,'
        f' "file_ending": ".nii.gz", "dataset": {{"a": {entry}, "a": {entry}}}}}')
    check(tiny_dataset, 'dataset.json', "'a' appears more than once in 'dataset'")


def test_dataset_key_shared_label_and_missing_file(tiny_dataset):
    case = lambda c, label: {'images': [f'imagesTr/{c}_0000.nii.gz', f'imagesTr/{c}_0001.nii.gz'], 'label': label}
    edit_json(tiny_dataset, numTraining=3, dataset={'a': case('case_000', 'labelsTr/case_000.nii.gz'),
                                                   'b': case('case_001', 'labelsTr/case_000.nii.gz'),
                                                   'c': case('case_009', str(tiny_dataset/'labelsTr'/'case_002.nii.gz'))})
    report = check(tiny_dataset, 'labelsTr/case_000.nii.gz', "duplicate: the cases ['a', 'b']")
    assert any(p.file == 'imagesTr/case_009_0000.nii.gz' and 'is missing' in p.problem for p in report.errors)


# --- content -------------------------------------------------------------------------------------------

def test_corrupt_image(tiny_dataset):
    (tiny_dataset/'imagesTr'/'case_001_0000.nii.gz').write_bytes(b'\x1f\x8b not really a nifti')
    check(tiny_dataset, 'imagesTr/case_001_0000.nii.gz', 'could not be read')


def test_corrupt_first_image_still_checks_the_rest(tiny_dataset):
    (tiny_dataset/'imagesTr'/'case_000_0000.nii.gz').write_bytes(b'garbage')
    write_volume(tiny_segmentation() * 2, tiny_dataset/'labelsTr'/'case_002.nii.gz')
    report = check(tiny_dataset, 'imagesTr/case_000_0000.nii.gz', 'could not be read')
    assert any(p.file == 'labelsTr/case_002.nii.gz' for p in report.errors)


def test_empty_label_file(tiny_dataset):
    (tiny_dataset/'labelsTr'/'case_001.nii.gz').write_bytes(b'')
    check(tiny_dataset, 'labelsTr/case_001.nii.gz', 'empty (0 bytes)')


def test_4d_image(tiny_dataset):
    write_volume(np.zeros((2, 4, 8, 8), np.float32), tiny_dataset/'imagesTr'/'case_001_0000.nii.gz')
    report = check(tiny_dataset, 'imagesTr/case_001_0000.nii.gz', '4D')
    assert 'split_4d_image' in str(report)


def test_4d_label(tiny_dataset):
    write_volume(np.zeros((2, 4, 8, 8), np.uint8), tiny_dataset/'labelsTr'/'case_001.nii.gz')
    check(tiny_dataset, 'labelsTr/case_001.nii.gz', '4D')


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_non_finite_image(tmp_path, bad):
    folder = write_tiny_dataset(tmp_path/'Dataset005_Mha', file_ending='.mha')  # SimpleITK reads NIfTI NaN as 0
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder/'imagesTr'/'case_001_0001.mha')))
    image[1, 2, 3] = bad
    write_volume(image, folder/'imagesTr'/'case_001_0001.mha')
    check(folder, 'imagesTr/case_001_0001.mha', 'NaN' if np.isnan(bad) else '1 infinite')


def test_label_values_not_declared(tiny_dataset):
    seg = tiny_segmentation(); seg[0, 0, 0] = 5
    write_volume(seg, tiny_dataset/'labelsTr'/'case_001.nii.gz')
    check(tiny_dataset, 'labelsTr/case_001.nii.gz', 'contains the value(s) [5]')


def test_label_values_not_integers(tiny_dataset):
    seg = tiny_segmentation().astype(np.float32); seg[1, 1, 1] = 0.5
    write_volume(seg, tiny_dataset/'labelsTr'/'case_001.nii.gz')
    check(tiny_dataset, 'labelsTr/case_001.nii.gz', 'non-integer values (e.g. 0.5)')


def test_label_shape_mismatch(tiny_dataset):
    write_volume(tiny_segmentation((4, 8, 9)), tiny_dataset/'labelsTr'/'case_001.nii.gz')
    check(tiny_dataset, 'labelsTr/case_001.nii.gz', 'has shape [4, 8, 9] but the images')


def test_channel_shape_mismatch(tiny_dataset):
    write_volume(np.zeros((4, 9, 8), np.float32), tiny_dataset/'imagesTr'/'case_001_0001.nii.gz')
    check(tiny_dataset, 'imagesTr/case_001_0001.nii.gz', 'has shape [4, 9, 8] but case_001_0000.nii.gz')


def test_label_spacing_mismatch(tiny_dataset):
    write_volume(tiny_segmentation(), tiny_dataset/'labelsTr'/'case_001.nii.gz', spacing_xyz=(0.8, 0.8, 2.0))
    check(tiny_dataset, 'labelsTr/case_001.nii.gz', 'different spacing')


def test_channel_spacing_mismatch(tiny_dataset):
    image = sitk.ReadImage(str(tiny_dataset/'imagesTr'/'case_001_0001.nii.gz'))
    image.SetSpacing((0.8, 0.9, 3.0)); sitk.WriteImage(image, str(tiny_dataset/'imagesTr'/'case_001_0001.nii.gz'))
    check(tiny_dataset, 'imagesTr/case_001_0001.nii.gz', 'different geometry')


def test_channel_origin_mismatch(tiny_dataset):
    image = sitk.ReadImage(str(tiny_dataset/'imagesTr'/'case_001_0001.nii.gz'))
    image.SetOrigin((0.0, 0.0, 0.0)); sitk.WriteImage(image, str(tiny_dataset/'imagesTr'/'case_001_0001.nii.gz'))
    check(tiny_dataset, 'imagesTr/case_001_0001.nii.gz', 'origin')


def test_label_origin_mismatch_is_a_warning(tiny_dataset):
    write_volume(tiny_segmentation(), tiny_dataset/'labelsTr'/'case_001.nii.gz', origin_xyz=(0.0, 0.0, 0.0))
    report = check(tiny_dataset, 'labelsTr/case_001.nii.gz', 'different origin or direction', severity='warning')
    assert report.ok and '1 warning' in str(report)


def test_label_direction_mismatch_is_a_warning(tiny_dataset):
    write_volume(tiny_segmentation(), tiny_dataset/'labelsTr'/'case_001.nii.gz', direction=(0, 1, 0, 1, 0, 0, 0, 0, 1))
    report = check(tiny_dataset, 'labelsTr/case_001.nii.gz', 'direction', severity='warning')
    assert report.ok


def test_background_only_label_is_a_warning(tiny_dataset):
    write_volume(np.zeros((4, 8, 8), np.uint8), tiny_dataset/'labelsTr'/'case_001.nii.gz')
    check(tiny_dataset, 'labelsTr/case_001.nii.gz', 'only background', severity='warning')


def test_imagesTs_problems_are_warnings(tmp_path):
    folder = write_tiny_dataset(tmp_path/'Dataset006_Ts', num_test_cases=2)
    (folder/'imagesTs'/'case_901_0001.nii.gz').unlink()
    check(folder, 'imagesTs/case_901_0001.nii.gz', 'is missing', severity='warning')


def test_verify_dataset_by_id(nnunet_folders):
    folder = write_tiny_dataset(nnunet_folders['nnUNet_raw']/'Dataset042_Tiny')
    assert verify_dataset(42, 1).num_cases == 3
    assert verify_dataset('Dataset042_Tiny', 1).ok
    (folder/'labelsTr'/'case_000.nii.gz').unlink()
    with pytest.raises(DatasetError, match='labelsTr/case_000.nii.gz'): verify_dataset('042', 1)
