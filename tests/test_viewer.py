"""The slice viewer (nnunet_nb.viewer): pure rendering along each axis, proportions, overlays, channels, the static
fallback, the ipywidgets viewer driven without a front end, the front-end rules, view_case on raw datasets, bad input."""
import ipywidgets
import numpy as np
import pytest
from matplotlib.figure import Figure
from conftest import write_tiny_dataset, write_volume
from nnunet_nb.viewer import (LABEL_COLOURS, SliceViewer, ViewerError, render_slice, static_figure, view, view_case,
                              widget_front_end, slice_pixel_shape, label_name_table, VIEWER_MODE_VARIABLE)


def case(shape=(6, 10, 14), channels=2, seed=0):
    "A smooth image whose voxels differ along every axis, a 2-label box label and a shifted 'prediction'."
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing='ij')
    base = (7 * z + 3 * y + x).astype(np.float32) + rng.normal(0, 0.1, shape).astype(np.float32)
    image = np.stack([base * (c + 1) * (-1) ** c for c in range(channels)])
    label = np.zeros(shape, np.uint8)
    label[1:5, 2:8, 3:11] = 1; label[2:4, 4:6, 5:8] = 2
    prediction = np.roll(label, 2, axis=2)
    return image, label, prediction


def is_gray(rgb): return np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])


@pytest.mark.parametrize('axis, expected', [(0, (10, 14)), (1, (6, 14)), (2, (6, 10))])
def test_slices_along_each_axis(axis, expected):
    image, label, _ = case()
    rgb = render_slice(image, axis=axis, index=2)
    assert rgb.shape == expected + (3,) and rgb.dtype == np.uint8 and is_gray(rgb)
    # another slice of the same axis is another picture; the gray values follow the slice's voxels
    assert not np.array_equal(rgb, render_slice(image, axis=axis, index=3))
    plane = np.take(image[0], 2, axis=axis)
    assert np.corrcoef(rgb[..., 0].ravel().astype(float), plane.ravel())[0, 1] > 0.99


def test_anisotropic_spacing_sets_the_proportions():
    image, label, _ = case()
    spacing = (3.0, 0.75, 0.75)          # thick slices: z voxels 4x taller than wide
    assert render_slice(image, axis=0, index=2, spacing=spacing).shape == (10, 14, 3)
    along_y = render_slice(image, label, axis=1, index=5, spacing=spacing)
    assert along_y.shape == (24, 14, 3)
    assert np.array_equal(along_y[0], along_y[3]) and not np.array_equal(along_y[3], along_y[4])  # 4 rows per z voxel
    assert render_slice(image, axis=2, index=5, spacing=spacing).shape == (24, 10, 3)
    # in-plane anisotropy stretches columns; a 2D case's placeholder z spacing (999) does not blow up the picture
    assert render_slice(image, axis=0, index=2, spacing=(1, 1, 2)).shape == (10, 28, 3)
    assert slice_pixel_shape((1, 50), (999.0, 1.0)) == (1, 50)


def test_label_and_prediction_overlays():
    image, label, prediction = case()
    common = dict(axis=0, index=2, spacing=(3.0, 1.0, 1.0))
    plain = render_slice(image, **common)
    with_label = render_slice(image, label, **common)
    changed = (with_label != plain).any(-1)
    assert np.array_equal(changed, label[2] > 0)                              # exactly the labelled pixels
    assert with_label[3, 4, 0] > with_label[3, 4, 1]                          # label 1 is reddish (LABEL_COLOURS[1])
    assert with_label[4, 6, 1] > with_label[4, 6, 0]                          # label 2 is greenish
    only_prediction = render_slice(image, None, prediction, **common)
    assert np.array_equal((only_prediction != plain).any(-1), prediction[2] > 0)
    both = render_slice(image, label, prediction, **common)                    # label filled, prediction outlined
    outline = (both != with_label).any(-1)
    assert outline.any() and outline.sum() < (prediction[2] > 0).sum()
    assert not outline[prediction[2] == 0].any()
    # toggles and opacity
    assert np.array_equal(render_slice(image, label, prediction, show_label=False, show_prediction=False, **common), plain)
    assert np.array_equal(render_slice(image, label, prediction, show_label=False, **common), only_prediction)
    assert np.array_equal(render_slice(image, label, prediction, opacity=0, **common), plain)
    opaque = render_slice(image, label, opacity=1, **common)
    assert np.array_equal(opaque[3, 4], LABEL_COLOURS[1])


def test_default_slice_has_the_most_foreground():
    image, label, _ = case()
    label[:] = 0; label[4, 1:9, 1:12] = 1; label[1, 3, 3] = 1
    assert np.array_equal(render_slice(image, label), render_slice(image, label, index=4))


def test_channel_choice():
    image, label, _ = case(channels=2)
    first, second = render_slice(image, index=2), render_slice(image, index=2, channel=1)
    assert not np.array_equal(first, second)
    # channel 1 is channel 0 times -2: after windowing it is the inverted picture
    assert np.corrcoef(first[..., 0].ravel().astype(float), second[..., 0].ravel().astype(float))[0, 1] < -0.99
    with pytest.raises(ViewerError, match='2 channel'): render_slice(image, channel=2)
    with pytest.raises(ViewerError, match='rgb'): render_slice(image, channel='rgb')
    rgb_image = np.zeros((3, 1, 4, 5), np.float32); rgb_image[0] = 200; rgb_image[2] = 50
    colour = render_slice(rgb_image, channel='rgb')
    assert colour.shape == (4, 5, 3) and (colour[..., 0] == 200).all() and (colour[..., 2] == 50).all()


def test_image_without_channel_axis_and_2d_picture():
    image, label, _ = case(channels=1)
    assert np.array_equal(render_slice(image[0], label), render_slice(image, label))
    assert render_slice(image[0, 0], label[0]).shape == (10, 14, 3)


def test_static_fallback_returns_a_figure():
    image, label, prediction = case()
    fig = view(image, label, prediction, spacing=(3.0, 1.0, 1.0), axis=1, interactive=False,
               label_names={'background': 0, 'organ': 1, 'lesion': 2})
    assert isinstance(fig, Figure)
    assert [a.get_title() for a in fig.axes] == ['image', 'label', 'prediction']
    assert fig.axes[1].images[0].get_array().shape == (18, 14, 3)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ['1 organ', '2 lesion']
    assert fig._repr_png_().startswith(b'\x89PNG')
    assert len(static_figure(image).axes) == 1


def test_widget_construction_and_driving_the_controls():
    image, label, prediction = case()
    viewer = view(image, label, prediction, spacing=(3.0, 1.0, 1.0), interactive=True,
                  label_names={'background': 0, 'organ': 1, 'lesion': 2}, channel_names={'0': 'T1', '1': 'T2'})
    assert isinstance(viewer, SliceViewer) and isinstance(viewer.widget, ipywidgets.VBox)
    assert 'application/vnd.jupyter.widget-view+json' in viewer._repr_mimebundle_()
    assert viewer.slice.value == 1 and viewer.slice.max == 5            # starts on the (first) slice with most label
    seen = [viewer.rgb.copy()]; png = viewer.picture.value
    assert bytes(png).startswith(b'\x89PNG')
    viewer.slice.value = 0
    assert not np.array_equal(viewer.rgb, seen[-1]) and viewer.picture.value != png
    assert np.array_equal(viewer.rgb, render_slice(image, label, prediction, index=0, spacing=(3.0, 1.0, 1.0)))
    viewer.axis.value = 1
    assert viewer.slice.max == 9 and viewer.rgb.shape == (18, 14, 3)
    assert np.array_equal(viewer.rgb, render_slice(image, label, prediction, axis=1, spacing=(3.0, 1.0, 1.0)))
    seen.append(viewer.rgb.copy()); viewer.channel.value = 1
    assert not np.array_equal(viewer.rgb, seen[-1])
    seen.append(viewer.rgb.copy()); viewer.opacity.value = 1.0
    assert not np.array_equal(viewer.rgb, seen[-1])
    viewer.show_label.value = False; viewer.show_prediction.value = False
    assert is_gray(viewer.rgb)
    assert [o[0] for o in viewer.channel.options] == ['0: T1', '1: T2']
    assert 'organ' in viewer.legend.value and 'lesion' in viewer.legend.value


def test_widget_without_label_disables_the_toggles():
    image, _, _ = case()
    viewer = SliceViewer(image)
    assert viewer.show_label.disabled and viewer.show_prediction.disabled and viewer.slice.value == 3
    assert is_gray(viewer.rgb)


def test_front_end_rules(monkeypatch):
    monkeypatch.delenv(VIEWER_MODE_VARIABLE, raising=False)
    monkeypatch.setenv('IN_TEST', '1')
    assert widget_front_end()[0] is False
    image, label, _ = case()
    assert isinstance(view(image, label), Figure)                         # auto under test: static
    monkeypatch.setenv(VIEWER_MODE_VARIABLE, 'interactive')
    assert widget_front_end()[0] is True and isinstance(view(image, label), SliceViewer)
    monkeypatch.setenv(VIEWER_MODE_VARIABLE, 'static')
    assert widget_front_end()[0] is False
    monkeypatch.delenv(VIEWER_MODE_VARIABLE); monkeypatch.delenv('IN_TEST')
    available, reason = widget_front_end()                                # pytest is no IPython kernel
    assert available is False and 'kernel' in reason


def test_shape_mismatch_is_a_clear_error():
    image, label, prediction = case()
    with pytest.raises(ViewerError, match=r'label has shape \[6, 10, 13\].*image has \[6, 10, 14\]'):
        view(image, label[..., :-1], interactive=False)
    with pytest.raises(ViewerError, match=r'prediction has shape \[6, 9, 14\]'):
        view(image, label, prediction[:, :-1], interactive=True)
    with pytest.raises(ViewerError, match='one channel'):
        render_slice(image, np.stack([label, label]))
    with pytest.raises(ViewerError, match='axis must be'): render_slice(image, axis=3)
    with pytest.raises(ViewerError, match='has 6 slices'): render_slice(image, index=6)
    with pytest.raises(ViewerError, match='shape'): render_slice(np.zeros((1, 2, 3, 4, 5)))


def test_label_names_spellings():
    assert label_name_table({'background': 0, 'a': 1, 'b': 2, 'ab': [1, 2], 'ignore': 3}) == {1: 'a', 2: 'b'}
    assert label_name_table({'1': 'a', 2: 'b'}) == {1: 'a', 2: 'b'}
    assert label_name_table(None) == {}


def test_view_case_reads_images_label_and_prediction(tmp_path):
    folder = write_tiny_dataset(tmp_path/'Dataset998_Tiny', num_cases=2, num_test_cases=1, shape=(4, 8, 8))
    predictions = tmp_path/'predictions'
    wrong = np.zeros((4, 8, 8), np.uint8); wrong[1:3, 2:6, 2:6] = 2
    write_volume(wrong, predictions/'case_001.nii.gz')
    fig = view_case(folder, 'case_001', predictions, interactive=False, axis=1)
    assert [a.get_title() for a in fig.axes] == ['image', 'label', 'prediction']
    assert fig.axes[0].images[0].get_array().shape == (15, 8, 3)         # z spacing 3.0 vs 0.8 in-plane
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ['1 outer', '2 inner']
    assert 'channel 0 (T2)' in fig._suptitle.get_text() and 'case_001' in fig._suptitle.get_text()
    viewer = view_case(folder, 'case_001', predictions, interactive=True)
    assert [o[0] for o in viewer.channel.options] == ['0: T2', '1: ADC']
    assert viewer.prediction is not None and viewer.prediction.max() == 2
    test_case = view_case(folder, 'case_900', interactive=False)          # imagesTs, no labelsTs
    assert [a.get_title() for a in test_case.axes] == ['image']
    with pytest.raises(ViewerError, match='case_000'): view_case(folder, 'nope', interactive=False)
    with pytest.raises(ViewerError, match='case_000.nii.gz'): view_case(folder, 'case_000', predictions, interactive=False)


def test_view_case_by_dataset_id(nnunet_folders):
    write_tiny_dataset(nnunet_folders['nnUNet_raw']/'Dataset997_Tiny', num_cases=1)
    assert isinstance(view_case(997, 'case_000', interactive=False), Figure)


def test_headless_kernel_gets_the_static_figure():
    "A notebook executed by nbclient (papermill, nbconvert --execute) shows a PNG, not a dead widget."
    import nbformat, nbclient
    code = ("import os; os.environ.pop('IN_TEST', None); os.environ.pop('NNUNET_NB_VIEWER', None)\n"
            "import numpy as np\nfrom nnunet_nb.viewer import view, widget_front_end\n"
            "print(widget_front_end())\nview(np.random.rand(1, 4, 8, 8), np.ones((4, 8, 8), int))")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    outputs = nbclient.NotebookClient(nb, kernel_name='python3', timeout=300).execute().cells[0].outputs
    assert 'nbclient' in ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
    results = [o for o in outputs if o.output_type == 'execute_result']
    assert 'image/png' in results[0].data and 'application/vnd.jupyter.widget-view+json' not in results[0].data
