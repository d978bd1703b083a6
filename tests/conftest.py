"""Shared helpers and fixtures for the pytest suite: tiny raw datasets in nnU-Net v2 format, built with
SimpleITK directly (independent of nnunet_nb, so a bug there cannot hide in the fixtures), isolated
nnUNet_* folders, a hash of a folder to prove that a check wrote nothing, and (built with nnunet_nb itself, for the
training tests) the tiny CT example planned and preprocessed with small plans.

Import the plain functions with `from conftest import write_tiny_dataset, write_volume, folder_hashes`."""
from __future__ import annotations
import contextlib, hashlib, json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import SimpleITK as sitk

DEFAULT_LABELS = {'background': 0, 'outer': 1, 'inner': 2}


def write_volume(array, file, spacing_xyz=(0.8, 0.8, 3.0), origin_xyz=(10.0, -5.0, 2.0), direction=None):
    "Write a numpy array `[z, y, x]` (or `[c, z, y, x]` as a 4D image) with SimpleITK's geometry conventions."
    file = Path(file); file.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    if array.ndim == 4:
        parts = [write_volume_image(a, spacing_xyz, origin_xyz, direction) for a in array]
        image = sitk.JoinSeries(parts)
    else:
        image = write_volume_image(array, spacing_xyz, origin_xyz, direction)
    sitk.WriteImage(image, str(file), True)
    return file


def write_volume_image(array, spacing_xyz=(0.8, 0.8, 3.0), origin_xyz=(10.0, -5.0, 2.0), direction=None):
    "A SimpleITK image from `[z, y, x]` with the given geometry."
    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin(tuple(float(o) for o in origin_xyz))
    if direction is not None: image.SetDirection(tuple(float(d) for d in direction))
    return image


def tiny_segmentation(shape=(4, 8, 8), num_labels=2):
    "Nested boxes with values 1..num_labels (0 background)."
    seg = np.zeros(shape, np.uint8)
    z, y, x = shape
    for value in range(1, num_labels + 1):
        m = value - 1
        seg[min(1, z - 1):max(z - 1, 1), 1 + m:y - 1 - m, 1 + m:x - 1 - m] = value
    return seg


def write_tiny_dataset(folder, num_cases=3, channel_names=('T2', 'ADC'), labels=None, shape=(4, 8, 8),
                       spacing_xyz=(0.8, 0.8, 3.0), origin_xyz=(10.0, -5.0, 2.0), file_ending='.nii.gz',
                       num_test_cases=0, seed=0, case_prefix='case', **dataset_json_extra):
    """A raw dataset `folder/imagesTr, labelsTr, [imagesTs], dataset.json` with `num_cases` cases
    `{case_prefix}_000, ...`, one file per channel, segmentations with every label of `labels`."""
    folder = Path(folder)
    labels = dict(DEFAULT_LABELS if labels is None else labels)
    ints = sorted(v for v in labels.values() if isinstance(v, int) and v > 0 and v != labels.get('ignore'))
    rng = np.random.default_rng(seed)
    for sub in ('imagesTr', 'labelsTr'): (folder/sub).mkdir(parents=True, exist_ok=True)
    def case_images(case, out):
        seg = tiny_segmentation(shape, len(ints))
        seg = np.vectorize(lambda v: ints[v - 1] if v else 0)(seg).astype(np.uint8) if ints else seg
        for c in range(len(channel_names)):
            image = (rng.normal(100 + 50 * c, 10, shape) + 20 * seg).astype(np.float32)
            write_volume(image, out/f'{case}_{c:04d}{file_ending}', spacing_xyz, origin_xyz)
        return seg
    for i in range(num_cases):
        case = f'{case_prefix}_{i:03d}'
        seg = case_images(case, folder/'imagesTr')
        write_volume(seg, folder/'labelsTr'/f'{case}{file_ending}', spacing_xyz, origin_xyz)
    for i in range(num_test_cases):
        (folder/'imagesTs').mkdir(exist_ok=True)
        case_images(f'{case_prefix}_{900 + i:03d}', folder/'imagesTs')
    d = {'channel_names': {str(i): n for i, n in enumerate(channel_names)}, 'labels': labels,
         'numTraining': num_cases, 'file_ending': file_ending, 'name': folder.name}
    d.update(dataset_json_extra)
    (folder/'dataset.json').write_text(json.dumps(d, indent=4))
    return folder


def folder_hashes(folder):
    "sha256 of every file (and the list of folders) under `folder`: equal before and after means nothing was written."
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob('*')):
        rel = str(p.relative_to(folder))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else 'dir'
    return out


@pytest.fixture
def tiny_dataset(tmp_path):
    "A fresh 3-case, 2-channel raw dataset folder `Dataset999_Tiny` (not under any nnUNet_raw)."
    return write_tiny_dataset(tmp_path/'Dataset999_Tiny')


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch):
    "nnUNet_raw / nnUNet_preprocessed / nnUNet_results pointing at fresh folders under tmp_path; returns them as a dict."
    folders = {}
    for var, sub in (('nnUNet_raw', 'raw'), ('nnUNet_preprocessed', 'preprocessed'), ('nnUNet_results', 'results')):
        folders[var] = tmp_path/sub
        folders[var].mkdir()
        monkeypatch.setenv(var, str(folders[var]))
    return folders


@contextlib.contextmanager
def planned_tiny_ct(root, dataset_ids, plans='nnUNetPlansTiny', patch_size=(8, 32, 32)):
    """nnUNet_* folders under `root`, set in os.environ (no augmentation workers) while inside, each dataset id holding
    the tiny CT example fingerprinted, planned, shrunk to `plans` (3d_fullres, `patch_size`) and preprocessed."""
    from nnunet_nb.synthetic import make_example_dataset
    from nnunet_nb.fingerprint import extract_fingerprint
    from nnunet_nb.planning import plan_experiment
    from nnunet_nb.preprocessing import preprocess
    from nnunet_nb.training import shrink_plans
    names = ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results', 'nnUNet_n_proc_DA')
    old = {v: os.environ.get(v) for v in names}
    try:
        for v in names[:3]:
            (Path(root)/v).mkdir(exist_ok=True); os.environ[v] = str(Path(root)/v)
        os.environ['nnUNet_n_proc_DA'] = '0'
        for d in dataset_ids:
            make_example_dataset(d, 'ct', size='tiny', num_processes=1, progress=False)
            extract_fingerprint(d, num_processes=1)
            plan_experiment(d)
            shrink_plans(d, target=plans, patch_size=list(patch_size))
            preprocess(d, ['3d_fullres'], 1, plans_name=plans, progress=False)
        yield Path(root)
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v


BIN = Path(sys.executable).parent


def run_console_script(*args, env, check=True, timeout=900):
    "Run a `nnunet_nb_*` console script of this environment as a user would; assert success unless `check=False`."
    result = subprocess.run([str(BIN/args[0]), *map(str, args[1:])], capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result


@pytest.fixture
def nnunet_env(tmp_path):
    "An environment for subprocesses with the three nnUNet_* folders in tmp_path."
    env = dict(os.environ)
    for name in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        env[name] = str(tmp_path/name)
    return env
