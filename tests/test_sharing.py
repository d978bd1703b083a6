"""Model sharing: export/install zip round trips, strict-mode errors, zip-slip and overwrite protection, download
from a local HTTP server, and ONNX export (onnxruntime's output equals PyTorch's)."""
import functools, hashlib, http.server, json, os, shutil, socket, stat, subprocess, sys, threading, zipfile
from pathlib import Path
import numpy as np
import pytest
import torch

from conftest import folder_hashes
from nnunet_nb.sharing import (SharingError, make_results_tree, files_to_export, export_model_to_zip, install_model_from_zip,
                               download_pretrained_model_by_url, network_for_fold, export_onnx, run_onnx)

FIXTURE_MODEL = Path(__file__).parent/'fixtures'/'nnunetv2_tiny'/'model'
DATASET = 'Dataset904_TinyCT'
MODEL = 'nnUNetTrainer_bench__nnUNetPlansTiny__3d_fullres'
NAMES = dict(trainer='nnUNetTrainer_bench', plans='nnUNetPlansTiny')
EXPECTED_MEMBERS = sorted(f'{DATASET}/{p}' for p in [
    f'{MODEL}/plans.json', f'{MODEL}/dataset.json', f'{MODEL}/dataset_fingerprint.json',
    f'{MODEL}/fold_0/checkpoint_final.pth', f'{MODEL}/fold_0/debug.json', f'{MODEL}/fold_0/progress.png',
    f'{MODEL}/fold_0/validation/summary.json', f'{MODEL}/crossval_results_folds_0/summary.json',
    f'{MODEL}/crossval_results_folds_0/postprocessing.pkl', f'{MODEL}/crossval_results_folds_0/postprocessing.json',
    'inference_information.json', 'inference_instructions.txt'])


def sha(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture
def results(tmp_path):
    "A scratch nnUNet_results with the fixture model as `Dataset904_TinyCT/nnUNetTrainer_bench__nnUNetPlansTiny__3d_fullres`."
    make_results_tree(tmp_path/'results', FIXTURE_MODEL)
    return tmp_path/'results'


@pytest.fixture
def model_zip(results, tmp_path):
    return export_model_to_zip(904, tmp_path/'model.zip', ['3d_fullres'], folds=[0], results=results, progress=False, **NAMES)


def test_round_trip_is_byte_identical(results, model_zip, tmp_path):
    with zipfile.ZipFile(model_zip) as z:
        assert sorted(z.namelist()) == EXPECTED_MEMBERS
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []   # no temporary zip left
    installed = install_model_from_zip(model_zip, tmp_path/'installed', progress=False)
    assert tmp_path/'installed'/DATASET/MODEL in installed
    for name in EXPECTED_MEMBERS: assert sha(tmp_path/'installed'/name) == sha(results/name), name
    assert sorted(str(p.relative_to(tmp_path/'installed')) for p in (tmp_path/'installed').rglob('*') if p.is_file()) == EXPECTED_MEMBERS
    # installing the same zip again is a no-op
    before = folder_hashes(tmp_path/'installed')
    install_model_from_zip(model_zip, tmp_path/'installed', progress=False)
    assert folder_hashes(tmp_path/'installed') == before


def test_dataset_id_and_string_folds(results, tmp_path):
    "CLI-style arguments (strings) give the same zip."
    z = export_model_to_zip(DATASET, tmp_path/'b.zip', '3d_fullres', folds=['0'], checkpoints='checkpoint_final.pth',
                            results=results, progress=False, **NAMES)
    assert sorted(zipfile.ZipFile(z).namelist()) == EXPECTED_MEMBERS


def test_export_uses_nnunet_results_env(results, tmp_path, monkeypatch):
    monkeypatch.setenv('nnUNet_results', str(results))
    z = export_model_to_zip(904, tmp_path/'env.zip', ['3d_fullres'], folds=[0], progress=False, **NAMES)
    assert len(zipfile.ZipFile(z).namelist()) == len(EXPECTED_MEMBERS)


def test_strict_names_missing_files_and_writes_nothing(results, tmp_path):
    (results/DATASET/MODEL/'fold_0'/'progress.png').unlink()
    with pytest.raises(SharingError) as e:
        export_model_to_zip(904, tmp_path/'x.zip', ['3d_fullres', '2d'], folds=[0, 1], results=results, progress=False, **NAMES)
    message = str(e.value)
    for missing in ('fold_0/progress.png', 'fold_1/checkpoint_final.pth', 'fold_1/validation/summary.json',
                    'nnUNetTrainer_bench__nnUNetPlansTiny__2d', '--not_strict'):
        assert missing in message, missing
    assert not (tmp_path/'x.zip').exists() and not list(tmp_path.glob('.x.zip*'))


def test_not_strict_exports_what_exists(results, tmp_path):
    with pytest.warns(UserWarning, match='fold_1/checkpoint_final.pth'):
        z = export_model_to_zip(904, tmp_path/'x.zip', folds=(0, 1), strict=False, results=results, progress=False, **NAMES)
    names = zipfile.ZipFile(z).namelist()
    assert f'{DATASET}/{MODEL}/fold_0/checkpoint_final.pth' in names and not any('fold_1' in n for n in names)
    with pytest.raises(SharingError, match='Nothing to export'):
        export_model_to_zip(904, tmp_path/'y.zip', ['2d'], strict=False, results=results, progress=False, **NAMES)


def test_crossval_predictions_and_ensembles(results, tmp_path):
    model = results/DATASET/MODEL
    for name in ('case_1.nii.gz', 'case_1.npz', 'case_1.pkl'): (model/'fold_0'/'validation'/name).write_bytes(b'v')
    (model/'crossval_results_folds_0'/'case_1.nii.gz').write_bytes(b'c')
    other = results/DATASET/'ensembles'/f'ensemble___{MODEL}___nnUNetTrainer__nnUNetPlans__2d___0'
    ours = results/DATASET/'ensembles'/f'ensemble___{MODEL}___{MODEL}___0'
    for folder in (other, ours):
        folder.mkdir(parents=True)
        for name in ('postprocessing.pkl', 'summary.json', 'case_1.nii.gz'): (folder/name).write_bytes(b'e')
    plain = zipfile.ZipFile(export_model_to_zip(904, tmp_path/'a.zip', ['3d_fullres'], folds=[0], results=results,
                                                progress=False, **NAMES)).namelist()
    assert not any('case_1' in n for n in plain)
    assert sorted(n for n in plain if 'ensembles' in n) == [f'{DATASET}/ensembles/{ours.name}/{f}' for f in ('postprocessing.pkl', 'summary.json')]
    full = zipfile.ZipFile(export_model_to_zip(904, tmp_path/'b.zip', ['3d_fullres'], folds=[0], export_crossval_predictions=True,
                                               results=results, progress=False, **NAMES)).namelist()
    assert f'{DATASET}/{MODEL}/fold_0/validation/case_1.nii.gz' in full
    assert not any(n.endswith(('validation/case_1.npz', 'validation/case_1.pkl')) for n in full)   # probabilities stay home
    assert f'{DATASET}/{MODEL}/crossval_results_folds_0/case_1.nii.gz' in full
    assert f'{DATASET}/ensembles/{ours.name}/case_1.nii.gz' in full and not any(other.name in n for n in full)


def _zip_with(file, members):
    with zipfile.ZipFile(file, 'w') as z:
        for name, data in members: z.writestr(name, data)
    return file


@pytest.mark.parametrize('bad', ['../evil.txt', f'{DATASET}/../../evil.txt', '/tmp/evil.txt', 'C:/evil.txt',
                                 f'{DATASET}\\..\\..\\evil.txt', 'not_a_dataset/plans.json'])
def test_zip_slip_rejected(tmp_path, bad):
    z = _zip_with(tmp_path/'bad.zip', [(f'{DATASET}/{MODEL}/plans.json', b'{}'), (bad, b'owned')])
    (tmp_path/'results').mkdir()
    before = folder_hashes(tmp_path)
    with pytest.raises(SharingError, match='nothing was installed'):
        install_model_from_zip(z, tmp_path/'results', progress=False)
    assert folder_hashes(tmp_path) == before
    assert not Path('/tmp/evil.txt').exists() or Path('/tmp/evil.txt').read_bytes() != b'owned'


def test_symlink_member_rejected(tmp_path):
    info = zipfile.ZipInfo(f'{DATASET}/{MODEL}/link')
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path/'link.zip', 'w') as z: z.writestr(info, '/etc/passwd')
    with pytest.raises(SharingError, match='symbolic link'):
        install_model_from_zip(tmp_path/'link.zip', tmp_path/'results', progress=False)
    assert list((tmp_path/'results').iterdir()) == []


def test_corrupt_zip(tmp_path, model_zip):
    broken = tmp_path/'broken.zip'
    broken.write_bytes(model_zip.read_bytes()[:len(model_zip.read_bytes()) // 2])
    with pytest.raises(SharingError, match='not a readable zip'):
        install_model_from_zip(broken, tmp_path/'target', progress=False)
    assert list((tmp_path/'target').iterdir()) == []
    with pytest.raises(SharingError, match='not found'):
        install_model_from_zip(tmp_path/'missing.zip', tmp_path/'target', progress=False)


def test_no_overwrite_of_a_different_model(model_zip, tmp_path):
    root = tmp_path/'installed'
    install_model_from_zip(model_zip, root, progress=False)
    plans = root/DATASET/MODEL/'plans.json'
    plans.write_text(plans.read_text().replace('"batch_size": 2', '"batch_size": 4'))
    (root/DATASET/MODEL/'fold_0'/'checkpoint_final.pth').unlink()     # a missing file alone is no conflict ...
    before = folder_hashes(root)
    with pytest.raises(SharingError, match='plans.json') as e:       # ... but a different one is
        install_model_from_zip(model_zip, root, progress=False)
    assert 'overwrite' in str(e.value)
    assert folder_hashes(root) == before                              # nothing changed, the checkpoint not restored either
    install_model_from_zip(model_zip, root, overwrite=True, progress=False)
    for name in EXPECTED_MEMBERS: assert (root/name).is_file()
    assert '"batch_size": 2' in plans.read_text()
    assert [p.name for p in root.iterdir()] == [DATASET]              # no temporary folders left


def test_install_adds_folds_to_an_installed_model(results, tmp_path):
    model = results/DATASET/MODEL
    shutil.copytree(model/'fold_0', model/'fold_1')
    z0 = export_model_to_zip(904, tmp_path/'f0.zip', ['3d_fullres'], folds=[0], results=results, progress=False, **NAMES)
    z1 = export_model_to_zip(904, tmp_path/'f1.zip', ['3d_fullres'], folds=[1], results=results, progress=False, strict=False, **NAMES)
    root = tmp_path/'installed'
    install_model_from_zip(z0, root, progress=False)
    install_model_from_zip(z1, root, progress=False)
    for f in (0, 1): assert sha(root/DATASET/MODEL/f'fold_{f}'/'checkpoint_final.pth') == sha(model/'fold_0'/'checkpoint_final.pth')


def test_dataset_id_clash(model_zip, tmp_path):
    (tmp_path/'target'/'Dataset904_Other').mkdir(parents=True)
    with pytest.raises(SharingError, match='same id 904'):
        install_model_from_zip(model_zip, tmp_path/'target', progress=False)
    assert [p.name for p in (tmp_path/'target').iterdir()] == ['Dataset904_Other']


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture
def server(tmp_path):
    "An HTTP server on 127.0.0.1 serving tmp_path/'www'."
    (tmp_path/'www').mkdir()
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_QuietHandler, directory=str(tmp_path/'www')))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True); thread.start()
    yield tmp_path/'www', f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown(); httpd.server_close()


def test_download_from_localhost(server, model_zip, results, tmp_path):
    www, url = server
    shutil.copy(model_zip, www/'tiny model.zip')
    root = tmp_path/'downloaded'
    installed = download_pretrained_model_by_url(f'{url}/tiny%20model.zip', root, progress=False)
    assert root/DATASET/MODEL in installed
    for name in EXPECTED_MEMBERS: assert sha(root/name) == sha(results/name), name
    assert sorted(p.name for p in root.iterdir()) == [DATASET]       # the downloaded zip is gone


def test_download_errors(server, tmp_path):
    www, url = server
    with pytest.raises(SharingError, match='HTTP 404') as e:
        download_pretrained_model_by_url(f'{url}/missing.zip', tmp_path/'r', progress=False)
    assert 'missing.zip' in str(e.value)
    assert list((tmp_path/'r').iterdir()) == []
    (www/'junk.zip').write_bytes(b'this is not a zip')
    with pytest.raises(SharingError, match='not a readable zip'):
        download_pretrained_model_by_url(f'{url}/junk.zip', tmp_path/'r', progress=False)
    assert list((tmp_path/'r').iterdir()) == []
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]        # a port nobody listens on
    with pytest.raises(SharingError, match='Check the URL'):
        download_pretrained_model_by_url(f'http://127.0.0.1:{port}/x.zip', tmp_path/'r', timeout=5, progress=False)


def test_network_for_fold_errors(results):
    model = results/DATASET/MODEL
    with pytest.raises(SharingError, match='fold_0'): network_for_fold(model, 2)
    with pytest.raises(SharingError, match='no configuration'): network_for_fold(model, 0, configuration='2d')


def test_onnx_matches_torch(results, tmp_path):
    pytest.importorskip('onnxruntime', reason='onnxruntime is not installed (optional extra: pip install onnx onnxruntime)')
    pytest.importorskip('onnx', reason='onnx is not installed (optional extra: pip install onnx onnxruntime)')
    model = results/DATASET/MODEL
    out = export_onnx(model, '0', tmp_path/'net.onnx')
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in ('.onnx', '.json') or p.name.startswith('.')) == ['net.onnx', 'net.onnx.json']
    sidecar = json.loads((tmp_path/'net.onnx.json').read_text())
    assert sidecar['input']['patch_size'] == [12, 56, 56] and sidecar['input']['channels'] == ['CT']
    assert sidecar['input']['normalization_schemes'] == ['CTNormalization'] and sidecar['input']['spatial_size_multiple_of'] == [2, 8, 8]
    assert sidecar['output']['labels'] == {'background': 0, 'organ': 1, 'lesion': 2}
    assert all(c['max_abs_difference'] <= 1e-4 for c in sidecar['verification'])
    network, _ = network_for_fold(model, 0)
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 12, 56, 56), (2, 1, 16, 48, 64)]:      # the patch, and another size (dynamic axes)
        x = rng.normal(size=shape).astype(np.float32)
        with torch.no_grad(): expected = network(torch.from_numpy(x)).numpy()
        got = run_onnx(out, x)
        assert got.shape == (shape[0], 3, *shape[2:])
        assert np.abs(got - expected).max() <= 1e-4


def test_onnx_missing_dependency_is_explained(results, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnx', None)                   # `import onnx` now fails as if not installed
    with pytest.raises(SharingError, match='pip install onnx onnxruntime'):
        export_onnx(results/DATASET/MODEL, 0, tmp_path/'net.onnx')
    assert not (tmp_path/'net.onnx').exists()


def test_module_imports_without_onnx():
    code = "import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None; import nnunet_nb.sharing; print('ok')"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == 'ok', r.stderr
