"""Round trips and bad inputs for nnunet_nb.io: every format, 2D and 3D, odd geometry, clear errors."""
import json, pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from nnunet_nb.io import (ImageIOError, ReaderWriter, SimpleITKIO, NibabelIO, NibabelIOWithReorient, NaturalImage2DIO,
                          Tiff3DIO, READER_WRITERS, make_properties, read_images, read_seg, write_seg, write_image,
                          reader_writer_class, reader_writer_for_file, determine_reader_writer, tif_spacing_file,
                          affine_from_sitk_stuff, segmentation_dtype)

FIXTURES = Path('/work/shared/fixtures/nnunetv2_tiny')
RNG = np.random.default_rng(42)
SPACING = (3.37, 0.713, 0.6891)                      # z, y, x: anisotropic, non-integer


def rotation(a, b, c):
    "An oblique, orthonormal 3x3 direction (rotations about z, y and x), row by row."
    cz, sz, cy, sy, cx, sx = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return tuple((rz @ ry @ rx).ravel())


OBLIQUE = rotation(0.31, -0.17, 0.52)
ORIGIN = (-120.25, 37.5, 412.125)


def volume(shape=(5, 7, 6), dtype=np.float32):
    return (RNG.normal(size=shape) * 100).astype(dtype)


def labels(shape=(5, 7, 6), high=3):
    return RNG.integers(0, high + 1, size=shape).astype(np.uint8)


def no_temporaries(folder: Path):
    return [p.name for p in folder.iterdir() if '.tmp' in p.name]


def sitk_geometry(file):
    image = sitk.ReadImage(str(file))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def assert_same_geometry(file_a, file_b, tolerance=1e-6):
    "Same size exactly; spacing, origin and direction equal up to the format's float32 header rounding."
    (size_a, *rest_a), (size_b, *rest_b) = sitk_geometry(file_a), sitk_geometry(file_b)
    assert size_a == size_b
    for a, b in zip(rest_a, rest_b): np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)


# ---------------------------------------------------------------------------------------------- SimpleITK
@pytest.mark.parametrize('ending', ['.nii.gz', '.nii', '.nrrd', '.mha'])
def test_simpleitk_3d_round_trip_oblique(tmp_path, ending):
    image = volume()
    props = make_properties(SPACING, origin=ORIGIN, direction=OBLIQUE)
    write_image(image, tmp_path / f'case_0000{ending}', props)
    data, read_props = read_images([tmp_path / f'case_0000{ending}'])
    assert data.shape == (1, 5, 7, 6) and data.dtype == np.float32
    np.testing.assert_array_equal(data[0], image)
    np.testing.assert_allclose(read_props['spacing'], SPACING, rtol=1e-6)
    np.testing.assert_allclose(read_props['sitk_stuff']['origin'], ORIGIN, atol=1e-4)
    np.testing.assert_allclose(read_props['sitk_stuff']['direction'], OBLIQUE, atol=1e-6)
    seg = labels()
    write_seg(seg, tmp_path / f'case{ending}', read_props)
    seg_back, seg_props = read_seg(tmp_path / f'case{ending}')
    assert seg_back.shape == (1, 5, 7, 6)
    np.testing.assert_array_equal(seg_back[0], seg)
    # the header of the written segmentation is the source image's header
    assert_same_geometry(tmp_path / f'case{ending}', tmp_path / f'case_0000{ending}')
    assert sitk.ReadImage(str(tmp_path / f'case{ending}')).GetPixelID() == sitk.sitkUInt8
    assert no_temporaries(tmp_path) == []


@pytest.mark.parametrize('ending', ['.nii.gz', '.nii', '.nrrd', '.mha'])
def test_simpleitk_2d_round_trip(tmp_path, ending):
    pixels = np.arange(20, dtype=np.int16).reshape(4, 5)
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing((0.37, 0.81)); image.SetOrigin((4.5, -2.25))
    c, s = np.cos(0.4), np.sin(0.4); image.SetDirection((c, -s, s, c))
    sitk.WriteImage(image, str(tmp_path / f'slice_0000{ending}'))
    data, props = read_images([tmp_path / f'slice_0000{ending}'])
    assert data.shape == (1, 1, 4, 5)
    np.testing.assert_array_equal(data[0, 0], pixels)
    np.testing.assert_allclose(props['spacing'], [999, 0.81, 0.37], rtol=1e-6)
    write_seg((pixels > 9)[None], tmp_path / f'slice{ending}', props)
    assert_same_geometry(tmp_path / f'slice{ending}', tmp_path / f'slice_0000{ending}')
    np.testing.assert_array_equal(read_seg(tmp_path / f'slice{ending}')[0][0, 0], pixels > 9)


def test_simpleitk_props_match_nnunet_pkl(tmp_path):
    "Props read from an nnU-Net input equal the sitk_stuff nnU-Net v2 pickled; its pkl props write the same header."
    data, props = read_images([FIXTURES / 'input/tinyct_008_0000.nii.gz'])
    saved = pickle.load(open(FIXTURES / 'expected_tta/tinyct_008.pkl', 'rb'))
    assert props['sitk_stuff'] == saved['sitk_stuff']
    np.testing.assert_allclose(props['spacing'], saved['spacing'])
    seg, _ = read_seg(FIXTURES / 'expected_tta/tinyct_008.nii.gz')
    write_seg(seg[0], tmp_path / 'tinyct_008.nii.gz', saved)
    assert sitk_geometry(tmp_path / 'tinyct_008.nii.gz') == sitk_geometry(FIXTURES / 'expected_tta/tinyct_008.nii.gz')
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / 'tinyct_008.nii.gz'))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / 'expected_tta/tinyct_008.nii.gz'))))


def test_segmentation_dtypes(tmp_path):
    props = make_properties(SPACING)
    seg = labels(); seg16 = seg.astype(np.uint16) * 200          # labels up to 600
    write_seg(seg16, tmp_path / 'big.nii.gz', props)
    assert sitk.ReadImage(str(tmp_path / 'big.nii.gz')).GetPixelID() == sitk.sitkUInt16
    np.testing.assert_array_equal(read_seg(tmp_path / 'big.nii.gz')[0][0], seg16)
    write_seg(seg.astype(np.float32), tmp_path / 'float.nii.gz', props)   # integer-valued floats are fine
    assert sitk.ReadImage(str(tmp_path / 'float.nii.gz')).GetPixelID() == sitk.sitkUInt8
    with pytest.raises(ImageIOError, match='argmax'):
        write_seg(seg + 0.5, tmp_path / 'bad.nii.gz', props)
    assert not (tmp_path / 'bad.nii.gz').exists()
    assert segmentation_dtype(np.array([0, 255])) == np.uint8 and segmentation_dtype(np.array([0, 256])) == np.uint16


# ---------------------------------------------------------------------------------------------- nibabel
def oblique_affine(spacing_xyz=(0.6891, 0.713, 3.37), origin=(12.5, -40.25, 7.75)):
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(OBLIQUE).reshape(3, 3) @ np.diag(spacing_xyz)
    affine[:3, 3] = origin
    return affine


@pytest.mark.parametrize('ending', ['.nii.gz', '.nii'])
def test_nibabel_3d_round_trip(tmp_path, ending):
    voxels = volume((6, 7, 5))                                   # nibabel order x, y, z
    nib.save(nib.Nifti1Image(voxels, oblique_affine()), str(tmp_path / f'mr_0000{ending}'))
    data, props = read_images([tmp_path / f'mr_0000{ending}'], NibabelIO)
    assert data.shape == (1, 5, 7, 6)
    np.testing.assert_array_equal(data[0], voxels.transpose(2, 1, 0))
    np.testing.assert_allclose(props['spacing'], SPACING, rtol=1e-6)
    # SimpleITK and plain nibabel read the same array from the same file
    np.testing.assert_array_equal(read_images([tmp_path / f'mr_0000{ending}'], SimpleITKIO)[0], data)
    seg = labels((5, 7, 6))
    write_seg(seg, tmp_path / f'mr{ending}', props, NibabelIO)
    written, source = nib.load(str(tmp_path / f'mr{ending}')), nib.load(str(tmp_path / f'mr_0000{ending}'))
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    assert written.shape == source.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), seg.transpose(2, 1, 0))
    assert_same_geometry(tmp_path / f'mr{ending}', tmp_path / f'mr_0000{ending}')
    assert no_temporaries(tmp_path) == []


def test_nibabel_2d_round_trip(tmp_path):
    affine = np.diag([0.4, 0.9, 1.0, 1.0]); affine[:3, 3] = (3, 4, 5)
    pixels = np.arange(12, dtype=np.float32).reshape(3, 4)       # x, y
    nib.save(nib.Nifti1Image(pixels, affine), str(tmp_path / 'flat_0000.nii.gz'))
    for cls in (NibabelIO, NibabelIOWithReorient):
        data, props = read_images([tmp_path / 'flat_0000.nii.gz'], cls)
        assert data.shape == (1, 1, 4, 3)
        np.testing.assert_allclose(props['spacing'], [999, 0.9, 0.4], rtol=1e-6)
        write_seg(data[0] > 5, tmp_path / 'flat.nii.gz', props, cls)
        written = nib.load(str(tmp_path / 'flat.nii.gz'))
        assert written.shape == (3, 4)
        np.testing.assert_allclose(written.affine, affine)
        np.testing.assert_array_equal(np.asarray(written.dataobj), pixels > 5)


@pytest.mark.parametrize('affine', [
    np.array([[0, 0, -2.5, 10], [0.7, 0, 0, -5], [0, -1.3, 0, 3], [0, 0, 0, 1.]]),   # cyclic permutation + flips
    np.diag([-0.8, -0.8, 2.0, 1.0]),                                                    # LPS, as ITK writes
    None])                                                                                # oblique
def test_nibabel_reorient_round_trip(tmp_path, affine):
    affine = oblique_affine() if affine is None else affine
    voxels = volume((4, 5, 6))
    nib.save(nib.Nifti1Image(voxels, affine), str(tmp_path / 'mr_0000.nii.gz'))
    data, props = read_images([tmp_path / 'mr_0000.nii.gz'], NibabelIOWithReorient)
    stuff = props['nibabel_stuff']
    np.testing.assert_allclose(stuff['original_affine'], affine, atol=1e-6)
    assert nib.aff2axcodes(stuff['reoriented_affine']) == ('R', 'A', 'S')
    canonical = nib.as_closest_canonical(nib.load(str(tmp_path / 'mr_0000.nii.gz')))
    np.testing.assert_array_equal(data[0], np.asarray(canonical.dataobj).transpose(2, 1, 0))
    np.testing.assert_allclose(props['spacing'], canonical.header.get_zooms()[::-1], rtol=1e-6)
    seg = (data[0] > 0).astype(np.uint8) + (data[0] > 100)
    write_seg(seg, tmp_path / 'mr.nii.gz', props, NibabelIOWithReorient)
    written = nib.load(str(tmp_path / 'mr.nii.gz'))
    np.testing.assert_allclose(written.affine, affine, atol=1e-6)
    assert written.shape == voxels.shape
    np.testing.assert_array_equal(np.asarray(written.dataobj), (voxels > 0).astype(np.uint8) + (voxels > 100))
    # and back in again: reading the written segmentation gives the reoriented labels
    np.testing.assert_array_equal(read_seg(tmp_path / 'mr.nii.gz', NibabelIOWithReorient)[0][0], seg)


def test_make_properties_same_geometry_in_every_medical_writer(tmp_path):
    props = make_properties(SPACING, origin=ORIGIN, direction=OBLIQUE)
    image = volume()
    write_image(image, tmp_path / 'a.nii.gz', props, SimpleITKIO)
    write_image(image, tmp_path / 'b.nii.gz', props, NibabelIO)
    write_image(image, tmp_path / 'c.nii.gz', props, NibabelIOWithReorient)   # no reoriented affine: as given
    ga = sitk_geometry(tmp_path / 'a.nii.gz')
    for name in ('b.nii.gz', 'c.nii.gz'):
        gb = sitk_geometry(tmp_path / name)
        assert gb[0] == ga[0]
        np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in gb[1:]]),
                                   np.concatenate([np.ravel(x) for x in ga[1:]]), atol=1e-4)
        np.testing.assert_array_equal(read_images(tmp_path / name)[0][0], image)
    np.testing.assert_allclose(nib.load(str(tmp_path / 'a.nii.gz')).affine, props['nibabel_stuff']['original_affine'],
                               atol=1e-4)


def test_nibabel_props_written_by_simpleitk(tmp_path):
    "Props from the reorienting reader can be written as NRRD: SimpleITK uses the reoriented affine."
    nib.save(nib.Nifti1Image(volume((4, 5, 6)), np.diag([-0.8, -0.8, 2.0, 1.0])), str(tmp_path / 'mr_0000.nii.gz'))
    data, props = read_images(tmp_path / 'mr_0000.nii.gz', NibabelIOWithReorient)
    write_seg(data[0] > 0, tmp_path / 'mr.nrrd', {'spacing': props['spacing'], 'nibabel_stuff': props['nibabel_stuff']})
    written = sitk.ReadImage(str(tmp_path / 'mr.nrrd'))
    np.testing.assert_allclose(written.GetSpacing(), (0.8, 0.8, 2.0), rtol=1e-6)
    np.testing.assert_allclose(affine_from_sitk_stuff({'spacing': written.GetSpacing(), 'origin': written.GetOrigin(),
                                                       'direction': written.GetDirection()}),
                               props['nibabel_stuff']['reoriented_affine'], atol=1e-6)


# ---------------------------------------------------------------------------------------------- natural images
def test_png_grayscale_and_rgb(tmp_path):
    gray = RNG.integers(0, 256, (6, 9)).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / 'g_0000.png')
    data, props = read_images([tmp_path / 'g_0000.png'])
    assert data.shape == (1, 1, 6, 9) and props == {'spacing': [999.0, 1.0, 1.0]}
    np.testing.assert_array_equal(data[0, 0], gray)
    rgb = RNG.integers(0, 256, (6, 9, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / 'c_0000.png')
    data, _ = read_images([tmp_path / 'c_0000.png'])
    assert data.shape == (3, 1, 6, 9)
    np.testing.assert_array_equal(data[:, 0], rgb.transpose(2, 0, 1))
    rgba = np.concatenate([rgb, np.full((6, 9, 1), 128, np.uint8)], axis=-1)
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'a_0000.png')
    assert read_images([tmp_path / 'a_0000.png'])[0].shape == (3, 1, 6, 9)     # alpha dropped
    write_image(data, tmp_path / 'copy_0000.png', props)                     # RGB written back
    np.testing.assert_array_equal(read_images(tmp_path / 'copy_0000.png')[0], data)


@pytest.mark.parametrize('ending', ['.png', '.bmp'])
def test_natural_segmentation_round_trip(tmp_path, ending):
    seg = labels((1, 6, 9), high=4)
    write_seg(seg, tmp_path / f'case{ending}', {'spacing': [999.0, 1.0, 1.0]})
    back, props = read_seg(tmp_path / f'case{ending}')
    assert back.shape == (1, 1, 6, 9) and props['spacing'] == [999.0, 1.0, 1.0]
    np.testing.assert_array_equal(back[0], seg)
    assert np.asarray(Image.open(tmp_path / f'case{ending}')).dtype == np.uint8
    image = RNG.integers(0, 256, (1, 6, 9)).astype(np.float32)
    write_image(image, tmp_path / f'case_0000{ending}', props)
    np.testing.assert_array_equal(read_images(tmp_path / f'case_0000{ending}')[0][0], image)


def test_png_16_bit_labels_and_refusals(tmp_path):
    seg = labels((1, 4, 5)).astype(np.uint16) * 150
    write_seg(seg, tmp_path / 'many.png', {'spacing': [999, 1, 1]})
    assert Image.open(tmp_path / 'many.png').mode.startswith('I')
    np.testing.assert_array_equal(read_seg(tmp_path / 'many.png')[0][0], seg)
    with pytest.raises(ImageIOError, match='16'):
        write_seg(seg, tmp_path / 'many.bmp', {'spacing': [999, 1, 1]})
    with pytest.raises(ImageIOError, match='JPEG'):
        write_seg(seg // 150, tmp_path / 'case.jpg', {'spacing': [999, 1, 1]})
    with pytest.raises(ImageIOError, match='z = 1'):
        write_seg(labels((2, 4, 5)), tmp_path / 'vol.png', {'spacing': [1, 1, 1]})
    with pytest.raises(ImageIOError, match='integers'):
        write_image(np.full((1, 4, 5), 0.5), tmp_path / 'x_0000.png', {'spacing': [999, 1, 1]})
    assert no_temporaries(tmp_path) == []


def test_jpeg_and_palette(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8); rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / 'photo_0000.jpg', quality=95)
    data, _ = read_images(tmp_path / 'photo_0000.jpg')
    assert data.shape == (3, 1, 8, 8) and abs(data[0].mean() - 200) < 3
    indices = labels((5, 6), high=3)
    palette = Image.fromarray(indices, 'P'); palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    palette.save(tmp_path / 'mask.png')
    np.testing.assert_array_equal(read_seg(tmp_path / 'mask.png')[0][0, 0], indices)   # labels are the indices
    assert read_images(tmp_path / 'mask.png')[0].shape == (3, 1, 5, 6)                  # as an image: RGB
    Image.fromarray(np.repeat(indices[..., None], 3, axis=2)).save(tmp_path / 'gray_rgb.png')
    np.testing.assert_array_equal(read_seg(tmp_path / 'gray_rgb.png')[0][0, 0], indices)   # R = G = B: one channel


# ---------------------------------------------------------------------------------------------- tif
def test_tif_3d_round_trip_with_sidecar(tmp_path):
    images, labels_dir = tmp_path / 'imagesTr', tmp_path / 'labelsTr'
    images.mkdir(); labels_dir.mkdir()
    stack0, stack1 = volume((5, 7, 3)), volume((5, 7, 3))     # x = 3 must not be taken for RGB
    props = {'spacing': list(SPACING)}
    write_image(stack0, images / 'cell_0000.tif', props)
    write_image(stack1, images / 'cell_0001.tif', props)
    assert json.loads((images / 'cell.json').read_text()) == {'spacing': list(SPACING)}
    data, read_props = read_images([images / 'cell_0000.tif', images / 'cell_0001.tif'])
    assert data.shape == (2, 5, 7, 3) and read_props == {'spacing': list(SPACING)}
    np.testing.assert_array_equal(data[1], stack1)
    seg = RNG.integers(0, 301, (5, 7, 3)).astype(np.uint16)
    write_seg(seg, labels_dir / 'cell.tif', read_props)
    assert json.loads((labels_dir / 'cell.json').read_text()) == {'spacing': list(SPACING)}
    back, seg_props = read_seg(labels_dir / 'cell.tif')
    np.testing.assert_array_equal(back[0], seg); assert seg_props == read_props
    assert tifffile.imread(labels_dir / 'cell.tif').dtype == np.uint16
    assert no_temporaries(images) == [] and no_temporaries(labels_dir) == []


def test_tif_missing_sidecar_and_2d(tmp_path):
    tifffile.imwrite(tmp_path / 'c_0000.tif', volume((4, 5, 6)), photometric='minisblack')
    with pytest.raises(ImageIOError) as e:
        read_images([tmp_path / 'c_0000.tif'])
    assert str(tmp_path / 'c.json') in str(e.value)
    assert tif_spacing_file(tmp_path / 'c.tif', is_seg=True) == tmp_path / 'c.json'
    flat = volume((5, 6))
    tifffile.imwrite(tmp_path / 'flat_0000.tiff', flat)
    data, props = read_images([tmp_path / 'flat_0000.tiff'])
    assert data.shape == (1, 1, 5, 6) and props == {'spacing': [999.0, 1.0, 1.0]}
    np.testing.assert_array_equal(data[0, 0], flat)
    (tmp_path / 'flat.json').write_text(json.dumps({'spacing': [0.25, 0.5]}))    # 2D sidecar: y, x
    assert read_images([tmp_path / 'flat_0000.tiff'])[1] == {'spacing': [999.0, 0.25, 0.5]}
    write_seg((flat > 0)[None], tmp_path / 'flat.tiff', {'spacing': [999.0, 0.25, 0.5]})
    assert tifffile.imread(tmp_path / 'flat.tiff').shape == (5, 6)
    (tmp_path / 'c.json').write_text(json.dumps({'spacing': [1, 2]}))
    with pytest.raises(ImageIOError, match='three positive numbers'):
        read_images([tmp_path / 'c_0000.tif'])
    tifffile.imwrite(tmp_path / 'd_0000.tif', np.zeros((2, 3, 4, 5), np.float32), photometric='minisblack')
    (tmp_path / 'd.json').write_text(json.dumps({'spacing': [1, 1, 1]}))
    with pytest.raises(ImageIOError, match='d_0000.tif is a 4D tif'):
        read_images([tmp_path / 'd_0000.tif'])


# ---------------------------------------------------------------------------------------------- errors
def test_channel_mismatch_errors(tmp_path):
    image = volume()
    base = make_properties(SPACING, origin=ORIGIN, direction=OBLIQUE)
    write_image(image, tmp_path / 'c_0000.nii.gz', base)
    variants = {'shape': (volume((5, 7, 5)), base),
                'spacing': (image, make_properties((3.0, 0.713, 0.6891), origin=ORIGIN, direction=OBLIQUE)),
                'origin': (image, make_properties(SPACING, origin=(0, 0, 0), direction=OBLIQUE)),
                'direction': (image, make_properties(SPACING, origin=ORIGIN))}
    for what, (array, props) in variants.items():
        other = tmp_path / f'{what}_0001.nii.gz'
        write_image(array, other, props)
        with pytest.raises(ImageIOError) as e:
            read_images([tmp_path / 'c_0000.nii.gz', other])
        assert 'c_0000.nii.gz' in str(e.value) and other.name in str(e.value) and what in str(e.value)
    tifffile.imwrite(tmp_path / 't_0000.tif', volume((4, 5, 6)), photometric='minisblack')
    tifffile.imwrite(tmp_path / 't_0001.tif', volume((4, 5, 7)), photometric='minisblack')
    (tmp_path / 't.json').write_text(json.dumps({'spacing': [1, 1, 1]}))
    with pytest.raises(ImageIOError, match='t_0001.tif is'):
        read_images([tmp_path / 't_0000.tif', tmp_path / 't_0001.tif'])


@pytest.mark.parametrize('name,reader', [('bad.nii.gz', SimpleITKIO), ('bad.nii.gz', NibabelIO), ('bad.nrrd', SimpleITKIO),
                                         ('bad.mha', SimpleITKIO), ('bad.png', NaturalImage2DIO),
                                         ('bad.jpg', NaturalImage2DIO), ('bad.tif', Tiff3DIO)])
def test_corrupt_empty_missing_files_name_the_file(tmp_path, name, reader):
    (tmp_path / name).write_bytes(b'definitely not an image\n' * 3)
    with pytest.raises(ImageIOError, match=r'bad\.\w+(\.gz)? could not be read'):
        reader().read_images([tmp_path / name])
    with pytest.raises(ImageIOError, match='could not be read'):
        reader().read_seg(tmp_path / name)
    (tmp_path / name).write_bytes(b'')
    with pytest.raises(ImageIOError, match=r'empty \(0 bytes\)'):
        reader().read_images([tmp_path / name])
    (tmp_path / name).unlink()
    with pytest.raises(ImageIOError, match='does not exist'):
        reader().read_seg(tmp_path / name)


@pytest.mark.parametrize('ending', ['.nii', '.nii.gz'])
def test_truncated_nifti(tmp_path, ending):
    "SimpleITK reads a truncated NIfTI without complaint; both readers must refuse it."
    nib.save(nib.Nifti1Image(volume((20, 20, 20)), np.eye(4)), str(tmp_path / f'full{ending}'))
    full = (tmp_path / f'full{ending}').read_bytes()
    (tmp_path / f'cut{ending}').write_bytes(full[:len(full) // 2])
    for reader in (SimpleITKIO, NibabelIO):
        with pytest.raises(ImageIOError, match=f'cut{ending} (is truncated|could not be read)'):
            reader().read_images([tmp_path / f'cut{ending}'])
    assert read_images(tmp_path / f'full{ending}')[0].shape == (1, 20, 20, 20)


def test_multi_member_gzip_is_not_truncated(tmp_path):
    "bgzip-style files hold several gzip members; the stored length of the last one is not the file's length."
    import gzip
    nib.save(nib.Nifti1Image(volume((20, 20, 20)), np.eye(4)), str(tmp_path / 'full.nii'))
    raw = (tmp_path / 'full.nii').read_bytes()
    (tmp_path / 'multi.nii.gz').write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    np.testing.assert_array_equal(read_images(tmp_path / 'multi.nii.gz')[0], read_images(tmp_path / 'full.nii')[0])
    (tmp_path / 'multi_cut.nii.gz').write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:])[:3000])
    with pytest.raises(ImageIOError, match='multi_cut.nii.gz is truncated'):
        read_images(tmp_path / 'multi_cut.nii.gz')


def test_4d_and_vector_images_refused(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32), isVector=False), str(tmp_path / 'msd.nii.gz'))
    for reader in (SimpleITKIO, NibabelIO):
        with pytest.raises(ImageIOError, match=r'msd.nii.gz is a 4D image.*_XXXX'):
            reader().read_images([tmp_path / 'msd.nii.gz'])
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 2), np.float32), isVector=True), str(tmp_path / 'vec.mha'))
    with pytest.raises(ImageIOError, match='vec.mha holds 2 values per voxel'):
        read_images(tmp_path / 'vec.mha')
    with pytest.raises(ImageIOError, match=r'\[z, y, x\]'):
        write_seg(np.zeros((2, 3, 4, 5), np.uint8), tmp_path / 'x.nii.gz', make_properties(SPACING))


# ---------------------------------------------------------------------------------------------- registry
def test_registry_and_determine(tmp_path):
    for name in ('SimpleITKIO', 'NibabelIO', 'NibabelIOWithReorient', 'NaturalImage2DIO', 'Tiff3DIO'):
        assert reader_writer_class(name).__name__ == name and issubclass(READER_WRITERS[name], ReaderWriter)
    with pytest.raises(ImageIOError, match='NaturalImage2DIO'):
        reader_writer_class('DicomIO')
    with pytest.raises(ImageIOError) as e:
        reader_writer_for_file('scan.dcm')
    assert '.nii.gz' in str(e.value) and '.png' in str(e.value) and '.tif' in str(e.value)
    assert reader_writer_for_file('a.nii') is SimpleITKIO and reader_writer_for_file('a.bmp') is NaturalImage2DIO
    assert determine_reader_writer({'file_ending': '.nii.gz', 'overwrite_image_reader_writer': 'NibabelIOWithReorient'},
                                   'whatever.nii.gz') is NibabelIOWithReorient
    assert determine_reader_writer({'file_ending': '.tif'}) is Tiff3DIO
    with pytest.raises(ImageIOError, match='Known'):
        determine_reader_writer({'file_ending': '.nii.gz', 'overwrite_image_reader_writer': 'NopeIO'})
    # SimpleITK refuses a sheared affine; nibabel reads it, so it is chosen
    shear = np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.]])
    nib.save(nib.Nifti1Image(volume((3, 4, 5)), shear), str(tmp_path / 'shear_0000.nii.gz'))
    assert determine_reader_writer({'file_ending': '.nii.gz'}, tmp_path / 'shear_0000.nii.gz') is NibabelIO
    (tmp_path / 'junk_0000.nii.gz').write_bytes(b'junk')
    with pytest.raises(ImageIOError, match=r'(?s)SimpleITKIO: .*junk_0000.nii.gz.*NibabelIO: '):
        determine_reader_writer({'file_ending': '.nii.gz'}, tmp_path / 'junk_0000.nii.gz')


def test_failed_write_leaves_nothing(tmp_path):
    props = make_properties(SPACING)
    props['sitk_stuff'] = dict(props['sitk_stuff'], direction=(1, 0, 0, 1))   # 2D direction for a 3D image
    with pytest.raises(ImageIOError, match='geometry'):
        write_seg(labels(), tmp_path / 'x.nii.gz', props)
    assert list(tmp_path.iterdir()) == []
    write_seg(labels(), tmp_path / 'x.nii.gz', make_properties(SPACING))
    before = (tmp_path / 'x.nii.gz').read_bytes()
    with pytest.raises(ImageIOError):
        write_seg(labels() + 0.5, tmp_path / 'x.nii.gz', make_properties(SPACING))
    assert (tmp_path / 'x.nii.gz').read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ['x.nii.gz']
