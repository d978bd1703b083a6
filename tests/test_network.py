"""Network and loss tests: networks from tiny hand-written plans (forward, deep-supervision shapes, initialisation),
deep-supervision scales and weights, Dice / CE / BCE values on hand-made arrays with answers derived by hand,
the ignore label, region targets, the validation counts, and the architecture drawing.
nnU-Net v2.8.1 gives bit-identical losses and gradients on random tensors (table at the end of nbs/08_network.ipynb);
the regression values below are those numbers' hand-derivable cousins."""
from __future__ import annotations
import math
import numpy as np
import pytest
import torch
from nnunet_nb.network import (NetworkError, DeepSupervisionLoss, DiceBCELoss, DiceCELoss, SoftDiceLoss, architecture_stages,
                               deep_supervision_scales, deep_supervision_weights, draw_network_architecture, labels_to_regions,
                               loss_from_plans, network_from_plans, num_input_channels, predicted_segmentation, pseudo_dice,
                               tp_fp_fn_per_class)

S = 1e-5  # nnU-Net's Dice smoothing


def architecture(dim=3, residual=False, strides=None, features=(4, 8, 16)):
    strides = strides or ([[1, 1, 1], [1, 2, 2], [2, 2, 2]] if dim == 3 else [[1, 1], [2, 2], [2, 2]])
    n = len(strides)
    kw = {'n_stages': n, 'features_per_stage': list(features[:n]), 'conv_op': f'torch.nn.modules.conv.Conv{dim}d',
          'kernel_sizes': [[3] * dim] * n, 'strides': strides, 'n_conv_per_stage_decoder': [1] * (n - 1), 'conv_bias': True,
          'norm_op': f'torch.nn.modules.instancenorm.InstanceNorm{dim}d', 'norm_op_kwargs': {'eps': 1e-05, 'affine': True},
          'dropout_op': None, 'dropout_op_kwargs': None, 'nonlin': 'torch.nn.LeakyReLU', 'nonlin_kwargs': {'inplace': True}}
    kw['n_blocks_per_stage' if residual else 'n_conv_per_stage'] = [1, 2, 2][:n] if residual else [2] * n
    cls = 'ResidualEncoderUNet' if residual else 'PlainConvUNet'
    return {'network_class_name': f'dynamic_network_architectures.architectures.unet.{cls}', 'arch_kwargs': kw,
            '_kw_requires_import': ['conv_op', 'norm_op', 'dropout_op', 'nonlin']}


PLANS = {'dataset_name': 'Dataset301_Tiny', 'plans_name': 'nnUNetPlans', 'transpose_forward': [0, 1, 2], 'transpose_backward': [0, 1, 2],
         'configurations': {
             '2d': {'patch_size': [16, 16], 'batch_size': 2, 'batch_dice': True, 'architecture': architecture(2)},
             '3d_fullres': {'patch_size': [8, 16, 16], 'batch_size': 2, 'batch_dice': False, 'architecture': architecture(3)},
             '3d_resenc': {'patch_size': [8, 16, 16], 'batch_size': 2, 'batch_dice': False, 'architecture': architecture(3, residual=True)},
             '3d_cascade_fullres': {'inherits_from': '3d_fullres', 'previous_stage': '3d_lowres'},
             'old': {'patch_size': [8, 8]}}}
LABELS = {'channel_names': {'0': 'T2', '1': 'ADC'}, 'labels': {'background': 0, 'a': 1, 'b': 2}, 'numTraining': 2, 'file_ending': '.nii.gz'}
IGNORE = dict(LABELS, labels={'background': 0, 'a': 1, 'b': 2, 'ignore': 3})
REGIONS = dict(LABELS, labels={'background': 0, 'whole': [1, 2, 3], 'core': [2, 3], 'enhancing': 3}, regions_class_order=[1, 2, 3])
REGIONS_IGNORE = dict(REGIONS, labels=dict(REGIONS['labels'], ignore=4))


# --- network -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('configuration,shape', [('3d_fullres', (8, 16, 16)), ('3d_resenc', (8, 16, 16)), ('2d', (16, 16))])
def test_forward_deep_supervision_shapes(configuration, shape):
    net = network_from_plans(PLANS, configuration, LABELS)
    with torch.no_grad(): out = net(torch.randn(2, 2, *shape))
    scales = deep_supervision_scales(PLANS['configurations'][configuration])
    assert len(out) == len(scales) == 2
    for o, s in zip(out, scales):
        assert o.shape == (2, 3, *[int(a * f) for a, f in zip(shape, s)])
    net = network_from_plans(PLANS, configuration, REGIONS, deep_supervision=False)
    with torch.no_grad(): assert net(torch.randn(1, 2, *shape)).shape == (1, 3, *shape)


def test_channels():
    assert num_input_channels(PLANS, '3d_fullres', IGNORE) == 2
    assert num_input_channels(PLANS, '3d_cascade_fullres', IGNORE) == 2 + 2      # foreground labels, not the ignore label
    assert num_input_channels(PLANS, '3d_cascade_fullres', REGIONS) == 2 + 3     # label values 1, 2, 3
    net = network_from_plans(PLANS, '3d_cascade_fullres', IGNORE, deep_supervision=False)
    assert net.encoder.stages[0][0].convs[0].conv.in_channels == 4
    assert net.decoder.seg_layers[-1].out_channels == 3


def test_init_statistics():
    torch.manual_seed(0)
    net = network_from_plans(PLANS, '3d_fullres', LABELS, initialize=True)
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    weights = torch.cat([m.weight.flatten() for m in convs if isinstance(m, torch.nn.Conv3d) and m.weight[0].numel() >= 200])
    big = [m for m in convs if isinstance(m, torch.nn.Conv3d) and m.weight.numel() > 2000]
    for m in big:   # He normal for leaky ReLU 0.01: std sqrt(2 / (1 + 1e-4) / fan_in)
        expected = math.sqrt(2 / (1 + 1e-4) / m.weight[0].numel())
        assert abs(m.weight.std().item() / expected - 1) < 0.1
    assert all(m.bias.abs().max() == 0 for m in convs if m.bias is not None)
    assert weights.mean().abs() < 0.01
    res = network_from_plans(PLANS, '3d_resenc', LABELS)
    blocks = [m for m in res.modules() if type(m).__name__ == 'BasicBlockD']
    assert blocks and all(b.conv2.norm.weight.abs().max() == 0 and b.conv2.norm.bias.abs().max() == 0 for b in blocks)
    torch.manual_seed(0); a = network_from_plans(PLANS, '3d_fullres', LABELS).state_dict()
    torch.manual_seed(0); b = network_from_plans(PLANS, '3d_fullres', LABELS).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_architecture():
    with pytest.raises(NetworkError, match='no "architecture" block'): network_from_plans(PLANS, 'old', LABELS)


# --- deep supervision ---------------------------------------------------------------------------------------
def test_deep_supervision_scales_and_weights():
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert deep_supervision_scales(strides) == [[1, 1, 1], [1, .5, .5], [.5, .25, .25], [.25, .125, .125]]
    assert deep_supervision_scales({'pool_op_kernel_sizes': [[1, 1], [2, 2]]}) == [[1, 1]]
    np.testing.assert_allclose(deep_supervision_weights(4), [8 / 14, 4 / 14, 2 / 14, 0])
    np.testing.assert_allclose(deep_supervision_weights(4, ddp=True).sum(), 1)
    assert deep_supervision_weights(4, ddp=True)[-1] > 0


def test_deep_supervision_loss_skips_zero_weight():
    calls = []
    class Spy(torch.nn.Module):
        def forward(self, o, t): calls.append(o.shape); return o.sum()
    loss = DeepSupervisionLoss(Spy(), [0.75, 0.25, 0])
    value = loss([torch.ones(1, 1, 4), torch.ones(1, 1, 2), torch.ones(1, 1, 1)], [None, None, None])
    assert value.item() == pytest.approx(0.75 * 4 + 0.25 * 2) and len(calls) == 2
    with pytest.raises(NetworkError, match='one target per deep-supervision scale'): loss([torch.ones(1)] * 2, [torch.ones(1)])


# --- losses on hand-made arrays -----------------------------------------------------------------------------
def test_soft_dice_by_hand():
    p = torch.tensor([[[.5, .5, 1., .75], [.5, .5, 0, 0], [0, 0, 0, .25]]])
    t = torch.tensor([[[1, 0, 1, 2]]])
    expected = -((1 + S) / (3 + S) + (.5 + S) / (1.25 + S)) / 2
    assert SoftDiceLoss(do_bg=False)(p, t).item() == pytest.approx(expected, abs=1e-7)
    # batch Dice: two images, class 1 present only in the first. Per image: mean of (1+s)/(1+s) and s/(0+s)... by hand
    p2 = torch.tensor([[[0., 1.], [1., 0.]], [[1., 1.], [0., 0.]]])      # [b=2, c=2, 2 voxels]
    t2 = torch.tensor([[[1, 0]], [[0, 0]]])
    per_image = -((2 + S) / (2 + S) + S / S) / 2                          # image 2: nothing predicted, nothing present: 1
    batch = -((2 + S) / (2 + S))
    assert SoftDiceLoss(do_bg=False)(p2, t2).item() == pytest.approx(per_image)
    assert SoftDiceLoss(do_bg=False, batch_dice=True)(p2, t2).item() == pytest.approx(batch)


def test_dice_ce_by_hand():
    logits = torch.zeros(1, 3, 2)                          # softmax 1/3 everywhere
    target = torch.tensor([[[1, 2]]])
    dice = (2 / 3 + S) / (2 / 3 + 1 + S)                   # the same for classes 1 and 2
    assert DiceCELoss()(logits, target).item() == pytest.approx(math.log(3) - dice, abs=1e-6)
    # confident and right: CE log(1 + 2 e^-10), Dice close to 1
    good = torch.tensor([[[-10., -10.], [10., -10.], [-10., 10.]]])
    assert DiceCELoss()(good, target).item() == pytest.approx(-1 + 2 * math.exp(-20) + 0, abs=1e-4)


def test_ignore_label_masks_everything():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 1, 4, 6, 6))         # 3 = ignore
    logits = torch.randn(2, 3, 4, 6, 6)
    changed = logits.clone()
    changed[(target == 3).expand_as(changed)] = torch.randn(int((target == 3).sum()) * 3)
    for batch_dice in (False, True):
        loss = DiceCELoss(batch_dice, ignore_label=3)
        assert loss(logits, target).item() == pytest.approx(loss(changed, target).item(), abs=1e-7)
        assert DiceCELoss(batch_dice)(logits, torch.where(target == 3, 0, target)).item() != pytest.approx(
               DiceCELoss(batch_dice)(changed, torch.where(target == 3, 0, target)).item(), abs=1e-4)
    # CE over the kept voxels only; everything ignored: CE term 0 and no NaN
    all_ignored = torch.full((1, 1, 4), 3)
    assert torch.isfinite(DiceCELoss(ignore_label=3)(torch.randn(1, 3, 4), all_ignored))
    # regions: the ignore channel last; predictions inside it do not matter
    seg = torch.randint(0, 5, (2, 1, 4, 6, 6))
    regions_target = labels_to_regions(seg, [(1, 2, 3), (2, 3), (3,)], ignore_label=4, channel_axis=1)
    r_logits = torch.randn(2, 3, 4, 6, 6); r_changed = r_logits.clone()
    r_changed[(seg == 4).expand_as(r_changed)] = 5.
    loss = DiceBCELoss(True, use_ignore_label=True)
    assert loss(r_logits, regions_target).item() == pytest.approx(loss(r_changed, regions_target).item(), abs=1e-6)


def test_bce_by_hand():
    assert DiceBCELoss()(torch.zeros(1, 1, 2), torch.tensor([[[1, 0]]])).item() == pytest.approx(math.log(2) - (1 + S) / (2 + S), abs=1e-6)
    # with the ignore channel: BCE summed over regions, divided by the unmasked voxels (nnU-Net v2.8.1)
    target = torch.tensor([[[1, 0, 1], [0, 1, 1], [0, 0, 1]]]).bool()    # 2 regions + ignore channel; voxel 2 ignored
    value = DiceBCELoss(use_ignore_label=True)(torch.zeros(1, 2, 3), target).item()
    dice = ((1 + S) / (1 + 1 + S) + (1 + S) / (1 + 1 + S)) / 2
    assert value == pytest.approx(2 * math.log(2) - dice, abs=1e-6)


def test_loss_from_plans():
    loss = loss_from_plans(PLANS, '2d', IGNORE)
    assert isinstance(loss, DeepSupervisionLoss) and loss.weights == [1.0, 0.0]   # two outputs: the lowest gets 0
    assert isinstance(loss.loss, DiceCELoss) and loss.loss.ignore_label == 3 and loss.loss.dice.batch_dice
    loss = loss_from_plans(PLANS, '3d_fullres', REGIONS_IGNORE, deep_supervision=False)
    assert isinstance(loss, DiceBCELoss) and loss.use_ignore_label and not loss.dice.batch_dice
    net = network_from_plans(PLANS, '3d_fullres', LABELS)
    out = net(torch.randn(2, 2, 8, 16, 16))
    targets = [torch.randint(0, 3, (2, 1, *o.shape[2:])) for o in out]
    value = loss_from_plans(PLANS, '3d_fullres', LABELS)(out, targets)
    value.backward()
    assert torch.isfinite(value) and net.decoder.seg_layers[-1].weight.grad.abs().sum() > 0   # full resolution head
    assert net.decoder.seg_layers[0].weight.grad is None      # the lowest head has weight 0: untrained (DDP: use ddp=True)


# --- regions, predictions, validation counts ----------------------------------------------------------------
def test_labels_to_regions():
    seg = np.array([[[0, 1, 2, 3, 4]]])
    out = labels_to_regions(seg, [[1, 2, 3], [2, 3], 3], ignore_label=4)
    assert out.dtype == bool and out.shape == (4, 1, 5)
    assert out[:, 0].astype(int).tolist() == [[0, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]
    t = labels_to_regions(torch.tensor(seg)[None], [(1, 2, 3), (3,)], channel_axis=1)
    assert t.shape == (1, 2, 1, 5) and t.dtype == torch.bool


def test_tp_fp_fn():
    logits = torch.tensor([[[5., 0, 0, 0, 5], [0, 5, 5, 0, 0], [0, 0, 0, 5, 0]]])   # argmax 0 1 1 2 0
    target = torch.tensor([[[0, 1, 2, 2, 3]]])                                     # 3: ignore
    tp, fp, fn = tp_fp_fn_per_class(logits, target, ignore_label=3)
    assert (tp.tolist(), fp.tolist(), fn.tolist()) == ([1, 1], [1, 0], [0, 1])
    np.testing.assert_allclose(pseudo_dice(tp, fp, fn), [2 / 3, 2 / 3])
    assert np.isnan(pseudo_dice([0], [0], [0])[0])
    # regions: sigmoid > 0.5; the ignore channel last
    r_logits = torch.tensor([[[5., 5, -5], [-5, 5, 5]]])
    r_target = torch.tensor([[[1, 1, 0], [0, 0, 1], [0, 1, 0]]])                   # voxel 1 ignored
    tp, fp, fn = tp_fp_fn_per_class(r_logits, r_target, has_regions=True, ignore_label=4)
    assert (tp.tolist(), fp.tolist(), fn.tolist()) == ([1, 1], [0, 0], [0, 0])
    assert predicted_segmentation(r_logits, True, [1, 2]).tolist() == [[1, 2, 2]]
    assert predicted_segmentation(logits[0], channel_axis=0).tolist() == [0, 1, 1, 2, 0]


# --- drawing ------------------------------------------------------------------------------------------------
def test_draw_network_architecture(tmp_path):
    stages = architecture_stages(PLANS, '3d_resenc')
    assert [s['feature_map'] for s in stages] == [[8, 16, 16], [8, 8, 8], [4, 4, 4]]
    assert [s['encoder_units'] for s in stages] == [1, 2, 2] and stages[0]['encoder_unit'] == 'residual block'
    for name in ('network_architecture.pdf', 'arch.png'):
        f = draw_network_architecture(PLANS, '3d_resenc', tmp_path/name, REGIONS)
        assert f.stat().st_size > 1000
    assert (tmp_path/'network_architecture.pdf').read_bytes()[:4] == b'%PDF'
    assert (tmp_path/'arch.png').read_bytes()[:4] == b'\x89PNG'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['arch.png', 'network_architecture.pdf']
