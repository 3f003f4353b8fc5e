import numpy as np
import pytest
from PIL import Image

from panoptix.data import PanopticFormatError
from panoptix.data.png import id2rgb, read_id_png, rgb2id, write_id_png


def test_id_rgb_round_trip(tmp_path):
    ids = np.array([[0, 1, 255], [256, 65536, (1 << 24) - 1]], dtype=np.int32)
    rgb = id2rgb(ids)
    assert tuple(rgb[1, 0]) == (0, 1, 0) and tuple(rgb[1, 1]) == (0, 0, 1)
    np.testing.assert_array_equal(rgb2id(rgb), ids)
    write_id_png(tmp_path / "a.png", ids)
    np.testing.assert_array_equal(read_id_png(tmp_path / "a.png"), ids)
    with pytest.raises(ValueError):
        id2rgb(np.array([1 << 24]))


def test_palette_and_rgba_pngs_decode_to_rgb_ids(tmp_path):
    ids = np.array([[0, 5, 5], [70000, 70000, 5]], dtype=np.int32)
    rgb = Image.fromarray(id2rgb(ids))
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(tmp_path / "p.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_id_png(tmp_path / "p.png"), ids)
    np.testing.assert_array_equal(read_id_png(tmp_path / "rgba.png"), ids)


def test_undecodable_pngs_are_refused_with_the_file_named(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "gray.png")
    with pytest.raises(PanopticFormatError, match="gray.png.*mode 'L'"):
        read_id_png(tmp_path / "gray.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(PanopticFormatError, match="junk.png"):
        read_id_png(tmp_path / "junk.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(PanopticFormatError, match="text.png"):
        read_id_png(tmp_path / "text.png")
    with pytest.raises(PanopticFormatError, match="not found"):
        read_id_png(tmp_path / "none.png")


def test_one_pixel_and_low_depth_palette_pngs(tmp_path):
    write_id_png(tmp_path / "one.png", np.array([[70000]]))
    np.testing.assert_array_equal(read_id_png(tmp_path / "one.png"), [[70000]])
    ids = np.array([[0, 5, 300], [300, 5, 0]], dtype=np.int32)
    Image.fromarray(id2rgb(ids)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p4.png",
                                                                                              bits=2)
    np.testing.assert_array_equal(read_id_png(tmp_path / "p4.png"), ids)
    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rgb2id(rgb), rgb2id(rgb.astype(np.int64)))   # packed path = arithmetic path
