"""nnunet_nb.dataset: the dataset.json model, case discovery, generate_dataset_json and the converters."""
import json, os, shutil
from pathlib import Path
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import write_tiny_dataset, write_volume, write_volume_image, folder_hashes, tiny_segmentation
from nnunet_nb.dataset import (DatasetError, DatasetJson, generate_dataset_json, find_training_cases, find_cases_in_folder,
                               image_file_name, label_file_name, parse_image_file_name, verify_dataset_integrity,
                               convert_msd_dataset, convert_old_nnunet_dataset, split_4d_image, v2_dataset_json_from_v1)

PLAIN = {'channel_names': {'0': 'T2', '1': 'ADC'}, 'labels': {'background': 0, 'PZ': 1, 'TZ': 2}, 'numTraining': 32,
         'file_ending': '.nii.gz'}
REGIONS = {'channel_names': {'0': 'T1', '1': 'T1ce', '2': 'T2', '3': 'FLAIR'},
           'labels': {'background': 0, 'whole tumor': [1, 2, 3], 'tumor core': [2, 3], 'enhancing tumor': 3, 'ignore': 4},
           'regions_class_order': [1, 2, 3], 'numTraining': 484, 'file_ending': '.nii.gz'}


# --- dataset.json model ----------------------------------------------------------------------------

def test_round_trip_plain_with_extras(tmp_path):
    d = dict(PLAIN, name='Prostate', licence='CC-BY-SA 4.0', release='1.0', reference='MSD', description='d',
             overwrite_image_reader_writer='NibabelIO', tensorImageSize='4D', my_notes={'a': [1, 2]})
    ds = DatasetJson.from_dict(d)
    assert ds.to_dict() == d and list(ds.to_dict())[:4] == ['channel_names', 'labels', 'numTraining', 'file_ending']
    assert ds.extra == {'tensorImageSize': '4D', 'my_notes': {'a': [1, 2]}}
    ds.save(tmp_path)
    again = DatasetJson.from_file(tmp_path/'dataset.json')
    assert again == ds and again.source == tmp_path/'dataset.json'
    assert (ds.num_channels, ds.foreground_labels, ds.label_values, ds.has_regions, ds.ignore_label) == (2, [1, 2], [0, 1, 2], False, None)
    assert ds.num_segmentation_heads == 3 and ds.foreground_regions == [(1,), (2,)]


def test_round_trip_regions_and_ignore(tmp_path):
    ds = DatasetJson.from_dict(REGIONS)
    assert ds.labels['whole tumor'] == (1, 2, 3) and ds.to_dict()['labels']['whole tumor'] == [1, 2, 3]
    assert ds.to_dict() == REGIONS
    assert ds.has_regions and ds.has_ignore_label and ds.ignore_label == 4
    assert ds.foreground_regions == [(1, 2, 3), (2, 3), (3,)] and ds.num_segmentation_heads == 3
    assert ds.label_values == [0, 1, 2, 3, 4] and ds.foreground_labels == [1, 2, 3]
    assert DatasetJson.from_file(ds.save(tmp_path/'x.json')) == ds


def test_ignore_label_without_regions():
    ds = DatasetJson.from_dict(dict(PLAIN, labels={'background': 0, 'PZ': 1, 'ignore': 2}))
    assert ds.ignore_label == 2 and ds.foreground_labels == [1] and ds.num_segmentation_heads == 2


def test_modality_key_is_read_as_channel_names():
    d = dict(PLAIN); d['modality'] = d.pop('channel_names')
    ds = DatasetJson.from_dict(d)
    assert ds.channel_names == {'0': 'T2', '1': 'ADC'} and 'modality' not in ds.to_dict() and 'channel_names' in ds.to_dict()


@pytest.mark.parametrize('change, key, text', [
    ({'numTraining': None}, 'numTraining', 'is missing'),
    ({'file_ending': 'nii.gz'}, 'file_ending', 'leading dot'),
    ({'labels': {'0': 'background', '1': 'PZ'}}, 'labels', 'nnU-Net v1 way round'),
    ({'labels': {'background': 0, 'PZ': 1.5}}, 'labels', "'PZ' has the value 1.5"),
    ({'channel_names': {'0': 'T2', '2': 'ADC'}}, 'channel_names', 'without gaps'),
    ({'labels': {'background': 0, 'PZ': 2}}, 'labels', 'not consecutive'),
    ({'labels': {'PZ': 1, 'TZ': 2, 'x': 3}}, 'labels', 'background'),
    ({'labels': {'background': 0, 'PZ': 1, 'TZ': 1}}, 'labels', 'share the value 1'),
    ({'labels': {'background': 0, 'ignore': 1, 'PZ': 2}}, 'labels', 'ignore label has the value 1'),
    ({'labels': {'background': 0, 'a': [1, 2], 'ignore': [3]}}, 'labels', 'ignore label is the region'),
    ({'labels': {'background': 0, 'a': [1, 2], 'b': 2}}, 'regions_class_order', 'is missing'),
    ({'labels': {'background': 0, 'a': [1, 2], 'b': 2}, 'regions_class_order': [1]}, 'regions_class_order', '1 entries for 2 regions'),
])
def test_malformed_dataset_json_names_file_and_key(tmp_path, change, key, text):
    d = dict(PLAIN)
    for k, v in change.items():
        if v is None: d.pop(k)
        else: d[k] = v
    (tmp_path/'dataset.json').write_text(json.dumps(d))
    with pytest.raises(DatasetError) as e: DatasetJson.from_file(tmp_path)
    message = str(e.value)
    assert str(tmp_path/'dataset.json') in message and f"key '{key}'" in message and text in message, message


def test_label_rules_can_be_deferred():
    ds = DatasetJson.from_dict(dict(PLAIN, labels={'background': 0, 'PZ': 2}), check=False)
    assert [k for k, *_ in ds.problems()] == ['labels']
    with pytest.raises(DatasetError, match='not consecutive'): ds.raise_on_problems()


def test_duplicate_keys_are_named(tmp_path):
    (tmp_path/'dataset.json').write_text('{"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "liver": 2},'
                                         ' "numTraining": 1, "file_ending": ".nii.gz"}')
    with pytest.raises(DatasetError, match="'liver' appears more than once in 'labels'"): DatasetJson.from_file(tmp_path)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(DatasetError, match='does not exist'): DatasetJson.from_file(tmp_path/'dataset.json')
    (tmp_path/'dataset.json').write_text('{"a": 1,,}')
    with pytest.raises(DatasetError, match='not valid JSON'): DatasetJson.from_file(tmp_path)


# --- generate_dataset_json ----------------------------------------------------------------------------

def test_generate_dataset_json(tmp_path):
    out = generate_dataset_json(tmp_path, {0: 'CT'}, {'background': 0, 'liver': 1, 'tumour': np.int64(2)}, np.int64(131),
                                '.nii.gz', dataset_name='LiTS', reference='ref', release='1.0', license='CC', description='desc',
                                overwrite_image_reader_writer='NibabelIOWithReorient', converted_by='me')
    assert out == tmp_path/'dataset.json'
    d = json.loads(out.read_text())
    assert list(d) == ['channel_names', 'labels', 'numTraining', 'file_ending', 'name', 'reference', 'release', 'licence',
                       'description', 'overwrite_image_reader_writer', 'converted_by']
    assert d['channel_names'] == {'0': 'CT'} and d['labels']['tumour'] == 2 and d['numTraining'] == 131 and d['licence'] == 'CC'
    assert [p.name for p in tmp_path.iterdir()] == ['dataset.json']  # atomic: no temporary left


def test_generate_dataset_json_regions_and_refusal(tmp_path):
    generate_dataset_json(tmp_path, {0: 'FLAIR'}, {'background': 0, 'whole': (1, 2, 3), 'core': (2, 3), 'enh': 3}, 5, '.nii.gz',
                          regions_class_order=(1, 2, 3))
    d = json.loads((tmp_path/'dataset.json').read_text())
    assert d['labels']['whole'] == [1, 2, 3] and d['regions_class_order'] == [1, 2, 3]
    before = (tmp_path/'dataset.json').read_bytes()
    with pytest.raises(DatasetError, match='regions_class_order'):
        generate_dataset_json(tmp_path, {0: 'FLAIR'}, {'background': 0, 'whole': (1, 2)}, 5, '.nii.gz')
    assert (tmp_path/'dataset.json').read_bytes() == before


# --- discovery ------------------------------------------------------------------------------------------

def test_file_names():
    assert image_file_name('liver_7', 1, '.nii.gz') == 'liver_7_0001.nii.gz' and label_file_name('liver_7', '.png') == 'liver_7.png'
    assert parse_image_file_name('la_003_0000_0002.nrrd', '.nrrd') == ('la_003_0000', 2)
    assert parse_image_file_name('la_003.nrrd', '.nrrd') is None
    assert parse_image_file_name('la_003_0000.nii', '.nii.gz') is None


def test_find_training_cases(tiny_dataset):
    (tiny_dataset/'imagesTr'/'._case_000_0000.nii.gz').write_bytes(b'macOS')   # hidden files are skipped
    (tiny_dataset/'labelsTr'/'.DS_Store').write_bytes(b'x')
    cases = find_training_cases(tiny_dataset)
    assert list(cases) == ['case_000', 'case_001', 'case_002']
    assert cases['case_002'] == {'images': [tiny_dataset/'imagesTr'/'case_002_0000.nii.gz', tiny_dataset/'imagesTr'/'case_002_0001.nii.gz'],
                                 'label': tiny_dataset/'labelsTr'/'case_002.nii.gz'}


def test_find_training_cases_digits_in_case_ids(tmp_path):
    folder = write_tiny_dataset(tmp_path/'Dataset001_X', num_cases=2, channel_names=('CT',), case_prefix='liver_0001')
    assert list(find_training_cases(folder)) == ['liver_0001_000', 'liver_0001_001']


def test_find_training_cases_dataset_key(tiny_dataset, tmp_path):
    elsewhere = tmp_path/'elsewhere'; elsewhere.mkdir()
    shutil.copy(tiny_dataset/'labelsTr'/'case_001.nii.gz', elsewhere/'seg_b.nii.gz')
    ds = DatasetJson.from_file(tiny_dataset)
    ds.dataset = {'a': {'images': ['imagesTr/case_000_0000.nii.gz', 'imagesTr/case_000_0001.nii.gz'], 'label': 'labelsTr/case_000.nii.gz'},
                  'b': {'images': [str(tiny_dataset/'imagesTr'/'case_001_0000.nii.gz'), 'imagesTr/case_001_0001.nii.gz'],
                        'label': str(elsewhere/'seg_b.nii.gz')}}
    ds.num_training = 2
    ds.save(tiny_dataset)
    cases = find_training_cases(tiny_dataset)
    assert list(cases) == ['a', 'b'] and cases['b']['label'] == elsewhere/'seg_b.nii.gz'
    assert cases['a']['images'][1] == tiny_dataset/'imagesTr'/'case_000_0001.nii.gz'
    assert verify_dataset_integrity(tiny_dataset, 1).ok


def test_find_training_cases_errors(tiny_dataset):
    (tiny_dataset/'imagesTr'/'case_001_0001.nii.gz').unlink()
    (tiny_dataset/'labelsTr'/'case_002.nii.gz').unlink()
    with pytest.raises(DatasetError) as e: find_training_cases(tiny_dataset)
    assert 'case_001_0001.nii.gz is missing' in str(e.value) and 'case_002.nii.gz is missing' in str(e.value)


def test_find_cases_in_folder(tmp_path):
    folder = write_tiny_dataset(tmp_path/'D', num_cases=0, num_test_cases=2)/'imagesTs'
    (folder/'case_900.json').write_text('{}')  # other endings are ignored
    assert find_cases_in_folder(folder, '.nii.gz', 2) == {c: [folder/f'{c}_0000.nii.gz', folder/f'{c}_0001.nii.gz']
                                                          for c in ('case_900', 'case_901')}
    with pytest.raises(DatasetError, match='case_900_0001.nii.gz is channel 0001 of case case_900, but dataset.json declares 1'):
        find_cases_in_folder(folder, '.nii.gz', 1)
    with pytest.raises(DatasetError, match='case_901_0002.nii.gz is missing'): find_cases_in_folder(folder, '.nii.gz', 3)
    shutil.copy(folder/'case_900_0000.nii.gz', folder/'lonely.nii.gz')
    with pytest.raises(DatasetError, match='lonely.nii.gz has no four-digit channel suffix'): find_cases_in_folder(folder, '.nii.gz', 2)
    with pytest.raises(DatasetError, match='is not a folder'): find_cases_in_folder(tmp_path/'none', '.nii.gz', 2)


# --- MSD conversion -------------------------------------------------------------------------------------------

OBLIQUE = (np.cos(0.3), -np.sin(0.3), 0, np.sin(0.3), np.cos(0.3), 0, 0, 0, 1)
MSD_JSON = {'name': 'Prostate', 'description': 'Prostate transitional zone and peripheral zone segmentation',
            'reference': 'Radboud University, Nijmegen Medical Centre', 'licence': 'CC-BY-SA 4.0', 'release': '1.0 04/05/2018',
            'tensorImageSize': '4D', 'modality': {'0': 'T2', '1': 'ADC'}, 'labels': {'0': 'background', '1': 'PZ', '2': 'TZ'},
            'numTraining': 2, 'numTest': 1,
            'training': [{'image': './imagesTr/prostate_00.nii.gz', 'label': './labelsTr/prostate_00.nii.gz'},
                         {'image': './imagesTr/prostate_01.nii.gz', 'label': './labelsTr/prostate_01.nii.gz'}],
            'test': ['./imagesTs/prostate_90.nii.gz']}


def write_msd_task(folder, num_channels=2, msd_json=MSD_JSON):
    folder = Path(folder)
    rng = np.random.default_rng(0)
    geometry = dict(spacing_xyz=(0.6, 0.62, 3.6), origin_xyz=(-20.0, 15.0, 7.5), direction=OBLIQUE)
    for case, sub in (('prostate_00', 'imagesTr'), ('prostate_01', 'imagesTr'), ('prostate_90', 'imagesTs')):
        seg = tiny_segmentation()
        data = np.stack([(rng.normal(300 * (c + 1), 20, seg.shape) + 50 * seg).astype(np.float32) for c in range(num_channels)])
        write_volume(data if num_channels > 1 else data[0], folder/sub/f'{case}.nii.gz', **geometry)
        if sub == 'imagesTr': write_volume(seg, folder/'labelsTr'/f'{case}.nii.gz', **geometry)
    (folder/'imagesTr'/'._prostate_00.nii.gz').write_bytes(b'\x00\x05\x16\x07 AppleDouble')
    (folder/'labelsTr'/'._prostate_00.nii.gz').write_bytes(b'\x00\x05\x16\x07 AppleDouble')
    (folder/'dataset.json').write_text(json.dumps(msd_json, indent=4))
    return folder


def test_convert_msd_dataset(tmp_path, nnunet_folders):
    task = write_msd_task(tmp_path/'Task05_Prostate')
    source_before = folder_hashes(task)
    out = convert_msd_dataset(task, num_processes=2)
    raw = nnunet_folders['nnUNet_raw']
    assert out == raw/'Dataset005_Prostate' and sorted(p.name for p in raw.iterdir()) == ['Dataset005_Prostate']
    assert folder_hashes(task) == source_before
    assert sorted(p.name for p in (out/'imagesTr').iterdir()) == ['prostate_00_0000.nii.gz', 'prostate_00_0001.nii.gz',
                                                                  'prostate_01_0000.nii.gz', 'prostate_01_0001.nii.gz']
    assert sorted(p.name for p in (out/'imagesTs').iterdir()) == ['prostate_90_0000.nii.gz', 'prostate_90_0001.nii.gz']
    assert sorted(p.name for p in (out/'labelsTr').iterdir()) == ['prostate_00.nii.gz', 'prostate_01.nii.gz']
    assert (out/'labelsTr'/'prostate_01.nii.gz').read_bytes() == (task/'labelsTr'/'prostate_01.nii.gz').read_bytes()
    source = sitk.ReadImage(str(task/'imagesTr'/'prostate_01.nii.gz'))
    for c in range(2):
        part = sitk.ReadImage(str(out/'imagesTr'/f'prostate_01_000{c}.nii.gz'))
        assert part.GetDimension() == 3
        np.testing.assert_allclose(part.GetSpacing(), source.GetSpacing()[:3], rtol=1e-6)
        np.testing.assert_allclose(part.GetOrigin(), source.GetOrigin()[:3], atol=1e-5)
        np.testing.assert_allclose(part.GetDirection(), np.array(source.GetDirection()).reshape(4, 4)[:3, :3].ravel(), atol=1e-5)
        np.testing.assert_allclose(part.GetDirection(), OBLIQUE, atol=1e-5)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(part), sitk.GetArrayFromImage(source)[c])
    d = json.loads((out/'dataset.json').read_text())
    assert d['channel_names'] == {'0': 'T2', '1': 'ADC'} and d['labels'] == {'background': 0, 'PZ': 1, 'TZ': 2}
    assert d['numTraining'] == 2 and d['file_ending'] == '.nii.gz' and d['licence'] == 'CC-BY-SA 4.0' and d['name'] == 'Prostate'
    assert not {'training', 'test', 'modality', 'numTest'} & set(d)
    assert verify_dataset_integrity(out, 1).ok


def test_convert_msd_3d_single_channel_copies_bytes(tmp_path):
    msd = dict(MSD_JSON, modality={'0': 'MRI'}, labels={'0': 'background', '1': 'Anterior', '2': 'Posterior'})
    task = write_msd_task(tmp_path/'Task04_Hippocampus', num_channels=1, msd_json=msd)
    out = convert_msd_dataset(task, overwrite_id=104, num_processes=1, raw=tmp_path/'raw')
    assert out.name == 'Dataset104_Hippocampus'
    assert (out/'imagesTr'/'prostate_01_0000.nii.gz').read_bytes() == (task/'imagesTr'/'prostate_01.nii.gz').read_bytes()
    assert DatasetJson.from_file(out).labels == {'background': 0, 'Anterior': 1, 'Posterior': 2}
    assert verify_dataset_integrity(out, 1).ok


def test_convert_msd_refuses_taken_id_and_existing_target(tmp_path, nnunet_folders):
    task = write_msd_task(tmp_path/'Task05_Prostate')
    (nnunet_folders['nnUNet_results']/'Dataset005_Other').mkdir()
    with pytest.raises(DatasetError, match='already taken by Dataset005_Other'): convert_msd_dataset(task, num_processes=1)
    raw = nnunet_folders['nnUNet_raw']
    (raw/'Dataset006_Prostate').mkdir()                  # an empty target folder is fine
    assert convert_msd_dataset(task, overwrite_id=6, num_processes=1) == raw/'Dataset006_Prostate'
    with pytest.raises(DatasetError, match='already exists and is not empty'): convert_msd_dataset(task, overwrite_id=6, num_processes=1)
    assert sorted(p.name for p in raw.iterdir()) == ['Dataset006_Prostate']


def test_failed_msd_conversion_leaves_nothing(tmp_path):
    task = write_msd_task(tmp_path/'Task05_Prostate', msd_json=dict(MSD_JSON, modality={'0': 'T2', '1': 'ADC', '2': 'DWI'}))
    raw = tmp_path/'raw'; raw.mkdir()
    with pytest.raises(DatasetError, match="holds 2 volume\\(s\\), but 'modality'"): convert_msd_dataset(task, num_processes=1, raw=raw)
    assert list(raw.iterdir()) == []
    (task/'imagesTr'/'prostate_01.nii.gz').write_bytes(b'broken')
    with pytest.raises(DatasetError, match='prostate_01.nii.gz cannot be read'): convert_msd_dataset(task, num_processes=2, raw=raw)
    assert list(raw.iterdir()) == []


def test_convert_msd_bad_source(tmp_path):
    with pytest.raises(DatasetError, match='TaskXX_Name'): convert_msd_dataset(tmp_path/'Prostate', raw=tmp_path)
    (tmp_path/'Task05_Prostate').mkdir()
    with pytest.raises(DatasetError, match='dataset.json is missing'): convert_msd_dataset(tmp_path/'Task05_Prostate', raw=tmp_path)


def test_split_4d_image_3d_input(tmp_path):
    f = write_volume(np.ones((3, 4, 5), np.float32), tmp_path/'a.nii.gz')
    assert split_4d_image(f, tmp_path/'out', 'a') == [tmp_path/'out'/'a_0000.nii.gz']


def test_v1_labels_with_duplicate_names():
    with pytest.raises(DatasetError, match="name\\(s\\) \\['tumour'\\]"):
        v2_dataset_json_from_v1(dict(MSD_JSON, labels={'0': 'background', '1': 'tumour', '2': 'tumour'}), 'x/dataset.json', 2)


# --- nnU-Net v1 conversion ---------------------------------------------------------------------------------------

def write_v1_task(folder):
    folder = write_tiny_dataset(folder, num_test_cases=1)
    (folder/'imagesTr'/'._case_000_0000.nii.gz').write_bytes(b'junk')
    (folder/'dataset.json').write_text(json.dumps({
        'name': 'Tiny', 'description': 'tiny', 'tensorImageSize': '4D', 'reference': 'r', 'licence': 'l', 'release': '0',
        'modality': {'0': 'T2', '1': 'ADC'}, 'labels': {'0': 'background', '1': 'outer', '2': 'inner'},
        'numTraining': 3, 'numTest': 1,
        'training': [{'image': f'./imagesTr/case_00{i}.nii.gz', 'label': f'./labelsTr/case_00{i}.nii.gz'} for i in range(3)],
        'test': ['./imagesTs/case_900.nii.gz']}))
    return folder


def test_convert_old_nnunet_dataset(tmp_path, nnunet_folders):
    task = write_v1_task(tmp_path/'nnUNet_raw_data'/'Task017_Tiny')
    out = convert_old_nnunet_dataset(task, 'Dataset017_Tiny')
    assert out == nnunet_folders['nnUNet_raw']/'Dataset017_Tiny'
    for sub in ('imagesTr', 'labelsTr', 'imagesTs'):
        expected = {k: v for k, v in folder_hashes(task/sub).items() if not k.startswith('.')}
        assert folder_hashes(out/sub) == expected
    d = json.loads((out/'dataset.json').read_text())
    assert d['channel_names'] == {'0': 'T2', '1': 'ADC'} and d['labels'] == {'background': 0, 'outer': 1, 'inner': 2}
    assert d['numTraining'] == 3 and d['file_ending'] == '.nii.gz' and d['name'] == 'Tiny' and d['tensorImageSize'] == '4D'
    assert not {'training', 'test', 'modality', 'numTest'} & set(d)
    assert verify_dataset_integrity(out, 1).ok
    with pytest.raises(DatasetError, match='already exists and is not empty'): convert_old_nnunet_dataset(task, 'Dataset017_Tiny')
    with pytest.raises(DatasetError, match='already taken by Dataset017_Tiny'): convert_old_nnunet_dataset(task, 'Dataset017_Other')
    with pytest.raises(DatasetError, match='DatasetXXX_Name'): convert_old_nnunet_dataset(task, 'Task018_Tiny')


def test_failed_v1_conversion_leaves_nothing(tmp_path):
    task = write_v1_task(tmp_path/'Task017_Tiny')
    d = json.loads((task/'dataset.json').read_text()); d['labels'] = {'0': 'background', '2': 'inner'}
    (task/'dataset.json').write_text(json.dumps(d))
    raw = tmp_path/'raw'
    with pytest.raises(DatasetError, match='not consecutive'): convert_old_nnunet_dataset(task, 'Dataset017_Tiny', raw=raw)
    assert not raw.exists() or list(raw.iterdir()) == []
