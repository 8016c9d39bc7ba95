"""Image decoding (layerwise/inputs.load_rgb) and PREFLIGHT's image checks (samplesheet.read_samplesheet)."""
import csv
import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from layerwise.core.errors import LayerwiseError
from layerwise.core.sheet import IMAGE_SHA256, iter_samples
from layerwise.models.inputs import ImageDecodeError, load_rgb, load_rgb_with_digest, to_rgb
from layerwise.preflight.samplesheet import (
    check_image_files,
    read_samplesheet,
    write_valid_samplesheet,
)

HEADER = ["sample_id", "image", "gender", "caption_english"]
VALUES_16 = np.array([[0, 257, 32768, 65535], [1000, 20000, 45000, 65280]], dtype=np.uint16)
EXPECTED_8 = np.array([[0, 1, 128, 255], [4, 78, 175, 254]], dtype=np.uint8)  # round(v * 255 / 65535)


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the last axis), written by hand: Pillow cannot."""
    arr = arr if arr.ndim == 3 else arr[..., None]
    h, w, c = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_sheet(folder: Path, images: list[str], name="s.csv") -> Path:
    path = folder / name
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for i, image in enumerate(images):
            w.writerow([f"s{i}", image, "male", f"caption {i}"])
    return path


def problems_of(path, **kw) -> str:
    with pytest.raises(LayerwiseError) as e:
        read_samplesheet(path, ["english"], **kw)
    return str(e.value)


def grey(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    arr = np.asarray(img)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    return arr[..., 0]


# ---------------------------------------------------------------- high bit depth

def test_16bit_grey_png_is_scaled_not_clipped_to_white(tmp_path):
    path = tmp_path / "g16.png"
    Image.frombytes("I;16", (4, 2), VALUES_16.astype("<u2").tobytes()).save(path)
    with Image.open(path) as raw:
        assert raw.mode == "I;16"
        assert (np.asarray(raw.convert("RGB"))[0, 2:] == 255).all()     # Pillow alone: clipped to white
    np.testing.assert_array_equal(grey(load_rgb(path)), EXPECTED_8)


def test_pillow_alone_turns_16bit_grey_white():
    img = Image.frombytes("I;16", (4, 2), VALUES_16.astype("<u2").tobytes())
    assert (np.asarray(img.convert("RGB"))[0, 2:] == 255).all()            # the bug load_rgb fixes
    np.testing.assert_array_equal(grey(to_rgb(img)), EXPECTED_8)


@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2")])
def test_16bit_grey_modes(mode, dtype):
    img = Image.frombytes(mode, (4, 2), VALUES_16.astype(dtype).tobytes())
    np.testing.assert_array_equal(grey(to_rgb(img)), EXPECTED_8)


def test_16bit_grey_handwritten_png_bytes():
    np.testing.assert_array_equal(grey(load_rgb(png16(VALUES_16))), EXPECTED_8)


def test_32bit_integer_tiff_with_16bit_values(tmp_path):
    path = tmp_path / "i32.tif"
    Image.fromarray(VALUES_16.astype(np.int32)).save(path)
    with Image.open(path) as raw:
        assert raw.mode == "I"
    np.testing.assert_array_equal(grey(load_rgb(path)), EXPECTED_8)


def test_32bit_integer_beyond_16bit_is_rejected_clearly(tmp_path):
    path = tmp_path / "i32big.tif"
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(path)
    with pytest.raises(ImageDecodeError) as e:
        load_rgb(path)
    assert str(path) in str(e.value) and "no defined brightness scale" in str(e.value)


def test_float_tiff_in_unit_range(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)).save(path)
    np.testing.assert_array_equal(grey(load_rgb(path)), [[0, 128, 255, 64]])


@pytest.mark.parametrize("values, fragment", [([0.0, np.nan], "NaN"), ([-1.0, 3.0], "neither 0..1 nor 0..255"),
                                              ([0.0, 1000.0], "neither 0..1 nor 0..255")])
def test_float_images_without_a_scale_are_rejected(values, fragment):
    img = Image.fromarray(np.array([values], dtype=np.float32))
    with pytest.raises(ValueError, match=fragment):
        to_rgb(img)


def test_16bit_rgb_and_rgba_png():
    rgb = np.zeros((2, 4, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32768, 257
    np.testing.assert_array_equal(np.asarray(load_rgb(png16(rgb)))[0, 0], [255, 128, 1])
    rgba = np.zeros((2, 4, 4), np.uint16)
    rgba[..., 0], rgba[..., 3] = 65535, 65535          # opaque red
    rgba[0, 0, 3] = 0                                    # one fully transparent pixel -> white
    out = np.asarray(load_rgb(png16(rgba)))
    np.testing.assert_array_equal(out[1, 1], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])


def test_16bit_grey_alpha_png():
    la = np.zeros((2, 4, 2), np.uint16)
    la[..., 0], la[..., 1] = 32768, 65535
    np.testing.assert_array_equal(grey(load_rgb(png16(la))), np.full((2, 4), 128))


# ---------------------------------------------------------------- other modes

def test_alpha_is_composited_over_white_like_transformers():
    from transformers.image_transforms import convert_to_rgb

    arr = np.zeros((2, 2, 4), np.uint8)
    arr[..., 2], arr[..., 3] = 200, 128                  # half-transparent blue
    arr[0, 0, 3] = 0
    img = Image.fromarray(arr, "RGBA")
    np.testing.assert_array_equal(np.asarray(to_rgb(img)), np.asarray(convert_to_rgb(img)))
    np.testing.assert_array_equal(np.asarray(to_rgb(img))[0, 0], [255, 255, 255])


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((1, 0), 1)
    np.testing.assert_array_equal(np.asarray(load_rgb(_saved(p, tmp_path / "p.png"))), [[[255, 0, 0], [0, 255, 0]]])
    p.info["transparency"] = 0
    path = tmp_path / "pt.png"
    p.save(path, transparency=0)
    np.testing.assert_array_equal(np.asarray(load_rgb(path)), [[[255, 255, 255], [0, 255, 0]]])


def test_la_l_and_bilevel(tmp_path):
    la = Image.fromarray(np.array([[[100, 255], [100, 0]]], np.uint8), "LA")
    np.testing.assert_array_equal(grey(to_rgb(la)), [[100, 255]])
    np.testing.assert_array_equal(grey(load_rgb(_saved(Image.new("L", (2, 2), 77), tmp_path / "l.png"))), np.full((2, 2), 77))
    np.testing.assert_array_equal(grey(load_rgb(_saved(Image.new("1", (2, 2), 1), tmp_path / "b.png"))), np.full((2, 2), 255))


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)   # red in CMYK
    r, g, b = np.asarray(load_rgb(path))[4, 4].astype(int)
    assert r > 230 and g < 25 and b < 25


def test_lab_goes_through_a_colour_profile():
    lab = Image.new("LAB", (1, 1), (255, 128, 128))   # L=100, a=b=0: white
    assert (np.asarray(to_rgb(lab)) >= 250).all()


def _saved(img, path):
    img.save(path)
    return path


# ---------------------------------------------------------------- EXIF orientation

@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    arr = np.zeros((6, 10, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)                  # a marker in one corner; the rest differs by position
    arr[..., 1] = np.arange(10)[None, :] * 20
    arr[..., 2] = np.arange(6)[:, None] * 40
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"            # PNG: lossless, so the arrays compare exactly
    Image.fromarray(arr).save(path, exif=exif)
    with Image.open(path) as raw:
        expected = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"))
    got = np.asarray(load_rgb(path))
    assert got.shape == expected.shape
    assert got.shape[:2] == ((10, 6) if orientation >= 5 else (6, 10))
    np.testing.assert_array_equal(got, expected)


def test_exif_rotated_jpeg_matches_the_transposed_array(tmp_path):
    arr = np.zeros((48, 64, 3), np.uint8)
    arr[:16, :16] = 255                      # bright top-left block
    exif = Image.Exif()
    exif[0x0112] = 6                          # "rotate 90 CW to view"
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    with Image.open(path) as raw:
        plain = np.asarray(raw.convert("RGB"))
    got = np.asarray(load_rgb(path))
    np.testing.assert_array_equal(got, np.rot90(plain, k=-1))   # manual transpose of the stored pixels
    assert got.shape == (64, 48, 3) and got[:16, -16:].mean() > 200   # the block is now top-right


# ---------------------------------------------------------------- truncated / corrupt files

def _jpeg(path: Path, size=(64, 48)) -> bytes:
    Image.effect_noise(size, 60).convert("RGB").save(path, quality=90)
    return path.read_bytes()


def test_truncated_jpeg_fails_in_load_rgb_naming_the_file(tmp_path):
    good = _jpeg(tmp_path / "good.jpg")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good[: len(good) // 2])
    with Image.open(cut) as img:                           # opening and verify() do not notice
        img.verify()
    with pytest.raises(ImageDecodeError) as e:
        load_rgb(cut)
    assert str(cut) in str(e.value) and "truncated" in str(e.value)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_truncated_jpeg_fails_preflight_with_row_column_and_path(tmp_path, keep):
    good = _jpeg(tmp_path / "good.jpg")
    (tmp_path / "cut.jpg").write_bytes(good[: int(len(good) * keep)])
    msg = problems_of(write_sheet(tmp_path, ["good.jpg", "cut.jpg"]))
    assert "1 problem" in msg
    assert "s.csv row 2 (sample s1), column 'image'" in msg and str(tmp_path / "cut.jpg") in msg
    assert "truncated" in msg


def test_corrupt_jpeg_data_and_non_images_fail_preflight(tmp_path):
    good = _jpeg(tmp_path / "good.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "header.jpg").write_bytes(good[:40])
    msg = problems_of(write_sheet(tmp_path, ["text.jpg", "zero.jpg", "header.jpg", "good.jpg"]))
    assert "3 problems" in msg
    assert "row 1 (sample s0), column 'image'" in msg and "text.jpg: corrupt image" in msg
    assert "row 2 (sample s1), column 'image'" in msg and "zero.jpg: empty file (0 bytes)" in msg
    assert "row 3 (sample s2), column 'image'" in msg and "header.jpg" in msg


def test_load_truncated_images_flag_is_refused(tmp_path, monkeypatch):
    from PIL import ImageFile

    good = _jpeg(tmp_path / "good.jpg")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageDecodeError, match="LOAD_TRUNCATED_IMAGES"):
        load_rgb(good)


# ---------------------------------------------------------------- sha256 column

def test_image_sha256_column_and_round_trip(tmp_path):
    _jpeg(tmp_path / "a.jpg")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "b.png")
    sheet = write_sheet(tmp_path, ["a.jpg", "b.png", "a.jpg"])
    df = read_samplesheet(sheet, ["english"])
    assert list(df.columns) == ["row", "sample_id", "image", IMAGE_SHA256, "gender", "caption_english"]
    expected = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.jpg", "b.png", "a.jpg")]
    assert df[IMAGE_SHA256].tolist() == expected
    assert [s.image_sha256 for s in iter_samples(df, "english")] == expected
    out = write_valid_samplesheet(df, tmp_path / "out" / "samplesheet.valid.csv")
    assert out.read_text().splitlines()[0] == "row,sample_id,image,image_sha256,gender,caption_english"
    again = read_samplesheet(out, ["english"])                   # the given digests are verified, and kept
    assert again[IMAGE_SHA256].tolist() == expected
    assert read_samplesheet(out, ["english"], check_images=False)[IMAGE_SHA256].tolist() == expected
    # the image changes after validation: a re-read with checks names the row and both digests
    Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "b.png")
    msg = problems_of(out)
    assert "row 2 (sample s1), column 'image'" in msg and "content changed" in msg and expected[1] in msg


def test_without_image_checks_there_is_no_digest_column(tmp_path):
    sheet = write_sheet(tmp_path, ["nowhere.png"])
    assert IMAGE_SHA256 not in read_samplesheet(sheet, ["english"], check_images=False).columns


def test_check_image_files_threads_agree_with_serial(tmp_path):
    names = []
    for i in range(6):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
        names.append(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    names.insert(3, tmp_path / "bad.png")
    serial = check_image_files(names, workers=1)
    assert check_image_files(names, workers=4) == serial
    assert serial[3][0] == "" and "corrupt" in serial[3][1]
    assert all(why is None and len(d) == 64 for i, (d, why) in enumerate(serial) if i != 3)


def test_load_rgb_with_digest_reads_once_and_matches_load_rgb(tmp_path):
    path = tmp_path / "x.png"
    Image.frombytes("I;16", (4, 2), VALUES_16.astype("<u2").tobytes()).save(path)
    img, digest = load_rgb_with_digest(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    np.testing.assert_array_equal(np.asarray(img), np.asarray(load_rgb(path)))
    np.testing.assert_array_equal(np.asarray(img), np.asarray(load_rgb(io.BytesIO(path.read_bytes()))))


def test_decompression_bombs_are_named_not_called_corrupt(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageDecodeError, match="too large to decode safely"):
        load_rgb(path)


def test_exif_orientation_of_a_16bit_png_is_applied_before_scaling():
    img = Image.frombytes("I;16", (3, 2), np.array([[0, 65535, 0], [0, 0, 0]], "<u2").tobytes())
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif)
    np.testing.assert_array_equal(grey(load_rgb(buf.getvalue())), [[0, 0], [0, 255], [0, 0]])
