"""Planning tests: hand-written fingerprints (no images) with exact values from nnU-Net v2.8.1 (bench/compare_plans.py --probes
compares every planned value of these with the reference), the plans file model, presets, options and errors."""
from __future__ import annotations
import json, os
from pathlib import Path
import numpy as np
import pytest

def _fp(spacings, shapes, channels=1, rel=1.0):
    props = {'max': 300.0, 'mean': 80.0, 'median': 82.0, 'min': -100.0, 'percentile_00_5': -50.0, 'percentile_99_5': 250.0, 'std': 40.0}
    return {'foreground_intensity_properties_per_channel': {str(c): dict(props) for c in range(channels)},
            'median_relative_size_after_cropping': rel, 'shapes_after_crop': shapes, 'spacings': spacings}

def _dj(channels, n, labels=('background', 'a', 'b')):
    return {'channel_names': {str(i): c for i, c in enumerate(channels)}, 'labels': {l: i for i, l in enumerate(labels)},
            'numTraining': n, 'file_ending': '.nii.gz'}

# id: (name, fingerprint, dataset.json, what it shows)
PROBES = {
    190: ('AnisoCT', _fp([[5.0, .8, .8]] * 4 + [[1.5, .75, .75]] * 2, [[40, 256, 256], [44, 250, 260], [38, 240, 250], [42, 270, 256], [130, 256, 256], [140, 266, 250]]),
          _dj(['CT'], 6), 'anisotropy rule: z takes the 10th percentile'),
    191: ('IsoMR', _fp([[1.0, 1.0, 1.0], [1.1, 1.0, 1.0], [0.9, 1.05, 1.05]], [[140, 170, 150], [130, 180, 160], [150, 160, 150]], channels=2, rel=0.6),
          _dj(['T2', 'ADC'], 3), 'isotropic, 2 channels, z-score within the mask'),
    192: ('TwoD', _fp([[999.0, 1.0, 1.0]] * 4, [[1, 300, 400], [1, 320, 410], [1, 280, 380], [1, 310, 390]], channels=3),
          _dj(['R', 'G', 'B'], 4), '2D data: only the 2d configuration'),
    193: ('LowresAppears', _fp([[1.0, 1.0, 1.0]] * 3, [[400, 400, 400], [380, 420, 410], [410, 390, 400]]),
          _dj(['CT'], 3), 'large images: 3d_lowres and 3d_cascade_fullres'),
    194: ('LowresDropped', _fp([[1.0, 1.0, 1.0]] * 3, [[230, 230, 230], [225, 235, 230], [230, 225, 235]]),
          _dj(['MR'], 3), 'fullres patch covers < 25%, but the lowres image would shrink < 2x'),
    195: ('CoarseLast', _fp([[0.7, 0.7, 3.0]] * 3, [[300, 310, 80], [290, 300, 90], [310, 300, 85]]),
          _dj(['noNorm'], 3), 'the coarse axis is last: it is transposed to the front'),
    196: ('FewSmall', _fp([[2.0, 1.0, 1.0]] * 2, [[20, 64, 64], [22, 60, 62]]),
          _dj(['rescale_to_0_1'], 2), 'tiny dataset: batch capped by 5% of the voxels (100% for ResEnc)'),
}

# Values below were produced by nnU-Net v2.8.1 on these fingerprints (bench/compare_plans.py --probes: every value equal).
# probe id -> {configuration: (spacing, patch_size, batch_size, median_image_size_in_voxels, n_stages, batch_dice)}
EXPECTED = {
    190: {'2d': ([0.8, 0.8], [256, 256], 39, [249.5, 253.0], 7, True),
          '3d_fullres': ([1.5, 0.8, 0.8], [96, 160, 160], 2, [136.5, 249.5, 253.0], 6, False)},
    191: {'2d': ([1.0, 1.0], [192, 160], 18, [170.0, 158.0], 6, True),
          '3d_fullres': ([1.0, 1.0, 1.0], [128, 128, 128], 2, [140.0, 170.0, 158.0], 6, False)},
    192: {'2d': ([1.0, 1.0], [320, 448], 2, [305.0, 395.0], 7, True)},
    193: {'2d': ([1.0, 1.0], [448, 448], 16, [400.0, 400.0], 7, True),
          '3d_lowres': ([1.9735865111266062] * 3, [128, 128, 128], 2, [203, 203, 203], 6, False),
          '3d_fullres': ([1.0, 1.0, 1.0], [128, 128, 128], 2, [400.0, 400.0, 400.0], 6, True)},
    194: {'2d': ([1.0, 1.0], [256, 256], 28, [230.0, 230.0], 7, True),
          '3d_fullres': ([1.0, 1.0, 1.0], [128, 128, 128], 2, [230.0, 230.0, 230.0], 6, False)},
    195: {'2d': ([0.7, 0.7], [320, 320], 11, [300.0, 300.0], 7, True),
          '3d_fullres': ([3.0, 0.7, 0.7], [48, 192, 192], 2, [85.0, 300.0, 300.0], 6, False)},
    196: {'2d': ([1.0, 1.0], [64, 64], 2, [62.0, 63.0], 5, True),
          '3d_fullres': ([2.0, 1.0, 1.0], [24, 64, 64], 2, [21.0, 62.0, 63.0], 5, False)},
}
TRANSPOSE = {195: ([2, 0, 1], [1, 2, 0])}
# ResEncM differs from the default here (batch cap 100%, other reference values, ties broken on the last axis)
EXPECTED_RESENC_M = {196: {'2d': 40}, 191: {'2d': 107}, 192: {'2d': 3}, 195: {'2d': 32}}
RESENC_M_PATCH = {195: [48, 192, 160]}


def plan_probe(i, **kw):
    from nnunet_nb.planning import plan_from_fingerprint
    name, fp, dj, _ = PROBES[i]
    return plan_from_fingerprint(fp, dj, f'Dataset{i}_{name}', **kw)


@pytest.mark.parametrize('i', sorted(EXPECTED))
def test_default_plans_match_reference(i):
    plans = plan_probe(i)
    assert plans.configuration_names == list(EXPECTED[i]) + (['3d_cascade_fullres'] if '3d_lowres' in EXPECTED[i] else [])
    for c, (spacing, patch, batch, median, n_stages, batch_dice) in EXPECTED[i].items():
        got = plans.configuration(c)
        assert got['spacing'] == spacing and got['patch_size'] == patch and got['batch_size'] == batch, c
        assert got['median_image_size_in_voxels'] == median and got['batch_dice'] == batch_dice, c
        kw = got['architecture']['arch_kwargs']
        assert kw['n_stages'] == n_stages == len(kw['strides']) == len(kw['kernel_sizes']) == len(kw['n_conv_per_stage'])
        assert len(kw['n_conv_per_stage_decoder']) == n_stages - 1
        assert got['data_identifier'] == f'nnUNetPlans_{c}'
    assert (plans.transpose_forward, plans.transpose_backward) == TRANSPOSE.get(i, ([0, 1, 2], [0, 1, 2]))
    assert plans['experiment_planner_used'] == 'ExperimentPlanner' and plans.plans_name == 'nnUNetPlans'


def test_anisotropic_topology_and_normalisation():
    c = plan_probe(190).configuration('3d_fullres')
    kw = c['architecture']['arch_kwargs']
    assert kw['strides'] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert kw['features_per_stage'] == [32, 64, 128, 256, 320, 320]
    assert c['normalization_schemes'] == ['CTNormalization'] and c['use_mask_for_norm'] == [False]
    c = plan_probe(195).configuration('3d_fullres')['architecture']['arch_kwargs']
    assert c['kernel_sizes'][:3] == [[1, 3, 3], [1, 3, 3], [3, 3, 3]]
    mr = plan_probe(191).configuration('2d')
    assert mr['normalization_schemes'] == ['ZScoreNormalization'] * 2 and mr['use_mask_for_norm'] == [True, True]
    assert mr['architecture']['arch_kwargs']['features_per_stage'][-1] == 512


def test_lowres_and_cascade():
    plans = plan_probe(193)
    assert plans.configuration('3d_lowres')['next_stage'] == '3d_cascade_fullres'
    assert plans['configurations']['3d_cascade_fullres'] == {'inherits_from': '3d_fullres', 'previous_stage': '3d_lowres'}
    cascade = plans.configuration('3d_cascade_fullres')
    assert cascade['previous_stage'] == '3d_lowres' and cascade['patch_size'] == [128, 128, 128] and 'inherits_from' not in cascade
    assert '3d_lowres' not in plan_probe(194).configuration_names   # dropped: would shrink < 2x


@pytest.mark.parametrize('i', sorted(EXPECTED_RESENC_M))
def test_resenc_m(i):
    plans = plan_probe(i, planner='ResEncM')
    assert plans.plans_name == 'nnUNetResEncUNetMPlans' and plans['experiment_planner_used'] == 'nnUNetPlannerResEncM'
    for c, batch in EXPECTED_RESENC_M[i].items(): assert plans.configuration(c)['batch_size'] == batch
    if i in RESENC_M_PATCH: assert plans.configuration('3d_fullres')['patch_size'] == RESENC_M_PATCH[i]
    a = plans.configuration('2d')['architecture']
    assert a['network_class_name'].endswith('ResidualEncoderUNet') and 'n_blocks_per_stage' in a['arch_kwargs']
    assert a['arch_kwargs']['n_blocks_per_stage'][:4] == [1, 3, 4, 6] and set(a['arch_kwargs']['n_conv_per_stage_decoder']) == {1}
    assert plans.configuration('2d')['data_identifier'] == 'nnUNetPlans_2d'   # shares the default preprocessed data


def test_presets_and_options():
    from nnunet_nb.planning import planner_settings, PlanningError
    assert [planner_settings(p).gpu_memory_gb for p in ('ResEncM', 'ResEncL', 'ResEncXL')] == [8, 24, 40]
    assert plan_probe(193, planner='nnUNetPlannerResEncL').plans_name == 'nnUNetResEncUNetLPlans'
    with pytest.raises(PlanningError, match='Unknown planner'): plan_probe(190, planner='nope')
    # values from nnU-Net v2.8.1 with -overwrite_target_spacing 2 1 1.5 / -gpu_memory_target 12
    p = plan_probe(191, overwrite_target_spacing=(2, 1, 1.5), overwrite_plans_name='OTS')
    assert p.plans_name == 'OTS' and p.configuration('3d_fullres')['data_identifier'] == 'OTS_3d_fullres'
    assert p.configuration('3d_fullres')['patch_size'] == [80, 192, 112] and p.configuration('2d')['patch_size'] == [176, 112]
    assert p.configuration('2d')['batch_size'] == 10
    assert plan_probe(194, gpu_memory_target_in_gb=12).configuration('3d_fullres')['patch_size'] == [160, 160, 128]


def test_network_builds_and_runs():
    import torch
    from nnunet_nb.planning import build_network, feature_map_size
    for c in ('3d_fullres', '2d'):
        conf = plan_probe(196).configuration(c)
        net = build_network(conf['architecture'], input_channels=1, num_classes=3)
        with torch.no_grad(): out = net(torch.zeros(1, 1, *conf['patch_size']))
        assert tuple(out.shape) == (1, 3, *conf['patch_size'])
        assert feature_map_size(conf['architecture'], conf['patch_size'], 1, 3) == int(net.compute_conv_feature_map_size(conf['patch_size']))


def test_plans_round_trip_and_inheritance(tmp_path):
    from nnunet_nb.planning import Plans, PlanningError
    plans = plan_probe(193)
    f = plans.save(tmp_path/'nnUNetPlans.json')
    back = Plans.load(f)
    assert back.to_dict() == json.loads(json.dumps(plans.to_dict())) and back.configuration_names == plans.configuration_names
    d = back.to_dict(); d['configurations']['mine'] = {'inherits_from': '3d_cascade_fullres', 'batch_size': 4}
    mine = Plans(d).configuration('mine')
    assert mine['batch_size'] == 4 and mine['previous_stage'] == '3d_lowres' and mine['patch_size'] == [128, 128, 128]
    d['configurations']['loop'] = {'inherits_from': 'loop'}
    with pytest.raises(PlanningError, match='cycle'): Plans(d).configuration('loop')
    with pytest.raises(PlanningError, match='no configuration'): Plans(d).configuration('3d_nope')
    with pytest.raises(PlanningError, match='not found'): Plans.load(tmp_path/'missing.json')


def _install_probe(folders, i):
    name, fp, dj, _ = PROBES[i]
    folder = f'Dataset{i}_{name}'
    raw = folders['nnUNet_raw']/folder; (raw/'imagesTr').mkdir(parents=True)
    (raw/'dataset.json').write_text(json.dumps(dj))
    pre = folders['nnUNet_preprocessed']/folder; pre.mkdir(parents=True)
    return folder, raw, pre, fp


def test_plan_experiment_writes_atomically_and_keeps_custom(nnunet_folders, monkeypatch):
    from nnunet_nb import planning
    folder, raw, pre, fp = _install_probe(nnunet_folders, 196)
    (pre/'dataset_fingerprint.json').write_text(json.dumps(fp))
    out = planning.plan_experiment(196)
    assert out == pre/'nnUNetPlans.json' and (pre/'dataset.json').is_file()
    plans = planning.Plans.load(out)
    assert plans.image_reader_writer == 'SimpleITKIO' and plans.configuration('3d_fullres')['patch_size'] == [24, 64, 64]
    # a hand-added configuration survives re-planning
    d = plans.to_dict(); d['configurations']['3d_custom'] = {'inherits_from': '3d_fullres', 'batch_size': 7}
    planning.Plans(d).save(out)
    planning.plan_experiment(196)
    assert planning.Plans.load(out).configuration('3d_custom')['batch_size'] == 7
    # a crash while writing leaves the old file intact and no temporary file behind
    before = out.read_bytes()
    def boom(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(planning.json, 'dumps', boom, raising=True)
    import nnunet_nb.paths as paths
    monkeypatch.setattr(paths.json, 'dumps', boom, raising=True)
    with pytest.raises(KeyboardInterrupt): planning.plan_experiment(196)
    monkeypatch.undo()
    assert out.read_bytes() == before and sorted(p.name for p in pre.iterdir()) == ['dataset.json', 'dataset_fingerprint.json', 'nnUNetPlans.json']


def test_plan_experiment_errors(nnunet_folders):
    from nnunet_nb.planning import plan_experiment, PlanningError
    with pytest.raises(PlanningError, match='No dataset with id 177'): plan_experiment(177)
    folder, raw, pre, fp = _install_probe(nnunet_folders, 190)
    with pytest.raises(PlanningError) as e: plan_experiment(190)
    msg = str(e.value)
    assert 'dataset_fingerprint.json' in msg and 'nnunet_nb_extract_fingerprint -d Dataset190_AnisoCT' in msg
    (pre/'dataset_fingerprint.json').write_text('{not json')
    with pytest.raises(PlanningError, match='not valid JSON'): plan_experiment(190)
