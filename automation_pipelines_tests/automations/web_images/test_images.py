"""The image step on real photographs (scikit-image's samples, saved as camera JPEGs): renditions
at each width up to the original's with the right heights, EXIF orientation applied (and the JPEG
decoded at the DCT scale the upright width needs), GPS and camera data stripped while the colour
profile stays, transparency, CMYK, grey and palette pictures handled, WebP and progressive JPEG
written atomically and byte-identically on a re-run; every kind of file that can never become a
web image raising BadImage with the reason the quarantine note shows, and disk errors not."""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, JpegImagePlugin
from skimage import data

from automation_pipelines.automations.web_images import images
from automation_pipelines.automations.web_images.images import (
    BadImage,
    ImageSettings,
    render_image,
)
from automation_pipelines.reliability.errors import ITEM_ATTRIBUTE, classify
from automation_pipelines_tests.automations.web_images.photos import rendition, rendition_pattern

MAKE, MODEL, ORIENTATION, GPS_IFD = 0x010F, 0x0110, 0x0112, 0x8825
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def sample(name: str, width: int) -> Image.Image:
    """A real photograph from scikit-image, resized to `width` with its aspect ratio."""
    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    height = round(image.height * width / image.width)
    return image.resize((width, height), Image.Resampling.LANCZOS)


def save_photo(
    path: Path, image: Image.Image, *, orientation: int | None = None, icc: bool = False
) -> Path:
    """Save as a camera would: JPEG with make, model, GPS position and optionally a profile."""
    exif = Image.Exif()
    exif[MAKE], exif[MODEL] = "TestCam", "Model 9"
    if orientation is not None:
        exif[ORIENTATION] = orientation
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    extra = {"icc_profile": SRGB} if icc else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=92, exif=exif.tobytes(), **extra)
    return path


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    left = np.asarray(a.convert("RGB"), dtype=np.float64)
    return float(np.abs(left - np.asarray(b.convert("RGB"), dtype=np.float64)).mean())


def test_camera_photo_gets_every_width_with_heights_from_its_aspect_ratio(tmp_path: Path) -> None:
    source = save_photo(tmp_path / "inbox" / "trips/rome/IMG_1.jpg", sample("coffee", 3000))
    out = tmp_path / "web"

    result = render_image(source, out, Path("trips/rome/IMG_1.jpg"))

    assert (result.width, result.height) == (3000, 2000)
    assert result.source_bytes == source.stat().st_size
    assert [(r.width, r.height, r.format) for r in result.renditions] == [
        (1600, 1067, "webp"),
        (1600, 1067, "jpeg"),
        (800, 533, "webp"),
        (800, 533, "jpeg"),
        (400, 267, "webp"),
        (400, 267, "jpeg"),
    ]
    for made in result.renditions:
        written = out / made.path
        suffix = "webp" if made.format == "webp" else "jpg"
        assert rendition_pattern("IMG_1.jpg", made.width, suffix).fullmatch(made.path.name)
        assert made.path.parent == Path("trips/rome")
        assert made.bytes == written.stat().st_size > 0
        with Image.open(written) as image:
            assert image.size == (made.width, made.height)
            assert image.format == made.format.upper()
            assert image.mode == "RGB"
        assert stat.S_IMODE(written.stat().st_mode) == 0o644  # a web server can read it


@pytest.mark.parametrize(
    ("width", "expected"),
    [
        (500, [(400, 266)]),  # 500 x 333: only 400 fits, 1600 and 800 would be upscaled
        (800, [(800, 533), (400, 267)]),  # a width equal to the original's is made; 266.5 -> 267
        (300, [(300, 200)]),  # narrower than every width: one rendition at its own size
    ],
)
def test_a_small_photo_is_never_upscaled(
    tmp_path: Path, width: int, expected: list[tuple[int, int]]
) -> None:
    source = save_photo(tmp_path / "small.jpg", sample("coffee", width))

    result = render_image(source, tmp_path / "web", Path("small.jpg"))

    sizes = [(r.width, r.height) for r in result.renditions]
    assert sizes == [size for size in expected for _ in ("webp", "jpeg")]
    made = files_under(tmp_path / "web")
    assert len(made) == 2 * len(expected)
    for width, _ in expected:
        for ext in ("webp", "jpg"):
            assert rendition(tmp_path / "web", "small.jpg", width, ext).name in made


def test_orientation_6_comes_out_upright(tmp_path: Path) -> None:
    upright = sample("chelsea", 1200)  # 1200 x 798
    # Orientation 6 means the sensor stored the picture a quarter turn counter-clockwise.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    source = save_photo(tmp_path / "cat.jpg", stored, orientation=6)

    result = render_image(source, tmp_path / "web", Path("cat.jpg"))

    assert (result.width, result.height) == (1200, 798)
    assert [(r.width, r.height) for r in result.renditions[::2]] == [(800, 532), (400, 266)]
    with Image.open(rendition(tmp_path / "web", "cat.jpg", 800, "jpg")) as out:
        assert out.size == (800, 532)
        assert not out.getexif()  # no orientation left for a browser to apply a second time
        expected = upright.resize(out.size, Image.Resampling.LANCZOS)
        right = mean_difference(out, expected)
        wrong = mean_difference(out, expected.transpose(Image.Transpose.ROTATE_180))
    assert right < 6 and wrong > 4 * right


def test_a_turned_jpeg_is_decoded_at_the_scale_its_upright_width_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upright = sample("coffee", 4000)  # 4000 x 2667: 1600 px wide needs a decode at 1/2
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif_source = save_photo(tmp_path / "turned.jpg", stored, orientation=6)
    source = save_photo(tmp_path / "tall.jpg", stored)
    drafted: list[tuple[tuple[int, int], tuple[int, int]]] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = real_draft(self, mode, size)
        drafted.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)

    turned = render_image(exif_source, tmp_path / "web", Path("turned.jpg"))
    plain = render_image(source, tmp_path / "web", Path("tall.jpg"))

    # Stored 2667 x 4000: upright 1600 px wide is 1067 stored columns by 1600 stored rows.
    assert drafted[0] == ((1067, 1600), (1334, 2000))
    assert (turned.width, turned.height) == (4000, 2667)
    assert turned.renditions[0].width == 1600
    # Without the orientation the same stored picture is a portrait whose width is 2667.
    assert drafted[1] == ((1600, 2400), (2667, 4000))
    assert (plain.width, plain.height) == (2667, 4000)


def test_gps_camera_data_comments_and_xmp_are_stripped_but_the_profile_is_kept(
    tmp_path: Path,
) -> None:
    source = tmp_path / "geo.jpg"
    exif = Image.Exif()
    exif[MAKE], exif[MODEL] = "TestCam", "Model 9"
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/>SecretPlace</x:xmpmeta>'
    sample("astronaut", 1000).save(
        source,
        "JPEG",
        quality=92,
        exif=exif.tobytes(),
        icc_profile=SRGB,
        comment=b"shot at home",
        xmp=xmp,
    )
    with Image.open(source) as original:  # the source really carries all of it
        assert original.getexif().get_ifd(GPS_IFD) and original.info["icc_profile"] == SRGB

    result = render_image(source, tmp_path / "web", Path("geo.jpg"))

    assert len(result.renditions) == 4
    for made in result.renditions:
        raw = (tmp_path / "web" / made.path).read_bytes()
        for secret in (b"TestCam", b"Model 9", b"Exif\x00\x00", b"SecretPlace", b"shot at home"):
            assert secret not in raw, (made.path, secret)
        with Image.open(io.BytesIO(raw)) as out:
            assert not out.getexif()
            assert not out.getexif().get_ifd(GPS_IFD)
            assert "xmp" not in out.info and "comment" not in out.info
            assert out.info.get("icc_profile") == SRGB


def test_each_encoder_gets_its_own_quality(tmp_path: Path) -> None:
    """The largest WebP is encoded on a second thread while this one encodes the JPEG of the same
    picture; Pillow keeps save options on the image object, so sharing it would let one encoder
    take the other's quality."""
    source = save_photo(tmp_path / "q.jpg", sample("astronaut", 4000))
    render_image(
        source, tmp_path / "same", Path("q.jpg"), ImageSettings(webp_quality=95, jpeg_quality=95)
    )
    webp_at_95 = {
        w: rendition(tmp_path / "same", "q.jpg", w, "webp").read_bytes() for w in (1600, 800, 400)
    }
    reference = io.BytesIO()
    sample("coffee", 64).save(reference, "JPEG", quality=60)
    jpeg_at_60 = Image.open(reference).quantization

    for attempt in range(5):
        out = tmp_path / f"web{attempt}"
        render_image(source, out, Path("q.jpg"), ImageSettings(webp_quality=95, jpeg_quality=60))
        for width in (1600, 800, 400):
            webp = rendition(out, "q.jpg", width, "webp").read_bytes()
            assert webp == webp_at_95[width], (attempt, width)
            with Image.open(rendition(out, "q.jpg", width, "jpg")) as jpeg:
                assert jpeg.quantization == jpeg_at_60, (attempt, width)


def test_webp_and_progressive_jpeg_are_written(tmp_path: Path) -> None:
    source = save_photo(tmp_path / "a.jpg", sample("astronaut", 900))

    render_image(source, tmp_path / "web", Path("a.jpg"))

    with Image.open(rendition(tmp_path / "web", "a.jpg", 800, "webp")) as webp:
        assert webp.format == "WEBP"
    for width in (800, 400):
        with Image.open(rendition(tmp_path / "web", "a.jpg", width, "jpg")) as jpeg:
            assert jpeg.format == "JPEG"
            assert jpeg.info.get("progressive") or jpeg.info.get("progression")
    # The progressive JPEG process is the SOF2 marker.
    assert b"\xff\xc2" in rendition(tmp_path / "web", "a.jpg", 800, "jpg").read_bytes()


def test_jpeg_is_encoded_where_pillow_lets_other_threads_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow holds the interpreter lock while it encodes a JPEG into a Python buffer, and
    releases it while it encodes into a file descriptor: a run renders several photos on
    threads, which would otherwise take turns at every JPEG. Each JPEG goes the second way."""
    encoders: list[tuple[str, int | None]] = []
    encode_tile = ImageFile._encode_tile

    def spy(im, fp, tile, bufsize, fh, exc=None):
        encoders.append((tile[0][0], fh))
        return encode_tile(im, fp, tile, bufsize, fh, exc)

    source = save_photo(tmp_path / "a.jpg", sample("astronaut", 900), icc=True)
    monkeypatch.setattr(ImageFile, "_encode_tile", spy)

    render_image(source, tmp_path / "web", Path("a.jpg"))

    jpegs = [fh for name, fh in encoders if name == "jpeg"]
    assert len(jpegs) == 2, encoders  # 800 and 400 px
    assert all(fh is not None for fh in jpegs), encoders


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize("icc", [False, True])
@pytest.mark.parametrize("memfd", [True, False])
def test_a_jpeg_is_the_one_pillow_writes_into_memory(
    monkeypatch: pytest.MonkeyPatch, mode: str, icc: bool, memfd: bool
) -> None:
    """Byte for byte what Pillow writes into a BytesIO with the same options, also where the
    system has no in-memory file (the fallback)."""
    if not memfd:
        monkeypatch.delattr(os, "memfd_create", raising=False)
    picture = sample("coffee", 300).convert(mode)
    profile = SRGB if icc else None
    settings = ImageSettings(jpeg_quality=77)

    made = images._encode_jpeg(picture, profile, settings)

    flat = picture
    if mode == "RGBA":
        flat = Image.new("RGB", picture.size, (255, 255, 255))
        flat.paste(picture, mask=picture.getchannel("A"))
    reference = io.BytesIO()
    options = {"icc_profile": profile} if profile else {}
    flat.save(reference, "JPEG", quality=77, progressive=True, optimize=True, **options)
    assert made == reference.getvalue()


def test_transparency_is_kept_in_webp_and_laid_on_white_in_jpeg(tmp_path: Path) -> None:
    picture = sample("astronaut", 600).convert("RGBA")
    alpha = Image.new("L", picture.size, 255)
    alpha.paste(0, (0, 0, 300, 600))  # the left half is transparent
    picture.putalpha(alpha)
    picture.save(tmp_path / "logo.png")

    render_image(tmp_path / "logo.png", tmp_path / "web", Path("logo.png"))

    with Image.open(rendition(tmp_path / "web", "logo.png", 400, "webp")) as webp:
        assert webp.mode == "RGBA"
        assert webp.getchannel("A").crop((0, 0, 190, 400)).getextrema() == (0, 0)
        assert webp.getchannel("A").crop((210, 0, 400, 400)).getextrema()[0] > 240
    with Image.open(rendition(tmp_path / "web", "logo.png", 400, "jpg")) as jpeg:
        assert jpeg.mode == "RGB"
        assert min(jpeg.crop((0, 0, 190, 400)).convert("L").getextrema()) > 245


def test_no_temp_file_is_left_and_a_failed_publish_leaves_the_folder_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All or nothing: a rename failing half-way through the set takes back the renditions
    already renamed, and deletes no file that was there before."""
    source = save_photo(tmp_path / "p.jpg", sample("rocket", 1000))
    out = tmp_path / "web"

    render_image(source, out, Path("p.jpg"))
    made = files_under(out)
    assert len(made) == 4 and not [name for name in made if name.startswith(".")]
    before = {name: (out / name).read_bytes() for name in made}
    (out / "other.png-400.0123456789.webp").write_bytes(b"someone else's")

    calls: list[str] = []
    real_replace = os.replace

    def failing_replace(src, dst):
        calls.append(str(dst))
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(images.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left") as raised:
        render_image(source, tmp_path / "web2", Path("p.jpg"))
    assert not isinstance(raised.value, BadImage)  # the disk failed, not the photo
    assert files_under(tmp_path / "web2") == []  # nothing of the set, no temp file

    calls.clear()  # the same set again over itself: the files that were there stay
    with pytest.raises(OSError, match="No space left"):
        render_image(source, out, Path("p.jpg"))
    assert {name: (out / name).read_bytes() for name in made} == before
    assert sorted(files_under(out)) == sorted([*made, "other.png-400.0123456789.webp"])


def test_a_disk_read_error_is_not_blamed_on_the_photo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = save_photo(tmp_path / "p.jpg", sample("rocket", 1000))

    class FailingDisk(io.FileIO):
        def readinto(self, buffer):
            if self.tell() >= 8192:  # the header reads fine, the picture data does not
                raise OSError(errno.EIO, "Input/output error")
            return super().readinto(buffer)

    monkeypatch.setattr(
        images, "_open_for_reading", lambda path: io.BufferedReader(FailingDisk(path))
    )
    with pytest.raises(OSError, match="Input/output error") as raised:
        render_image(source, tmp_path / "web", Path("p.jpg"))
    assert not isinstance(raised.value, BadImage)
    assert raised.value.errno == errno.EIO


def test_rendering_twice_gives_byte_identical_files(tmp_path: Path) -> None:
    source = save_photo(tmp_path / "cat.jpg", sample("chelsea", 1800), orientation=6, icc=True)

    first = render_image(source, tmp_path / "one", Path("cat.jpg"))
    again = render_image(source, tmp_path / "one", Path("cat.jpg"))
    elsewhere = render_image(source, tmp_path / "two", Path("cat.jpg"))

    assert first == again == elsewhere
    assert files_under(tmp_path / "one") == files_under(tmp_path / "two")
    for name in files_under(tmp_path / "one"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` in its header but carries almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def expect_bad(source: Path, settings: ImageSettings | None = None) -> BadImage:
    out = source.parent / "web"
    with pytest.raises(BadImage) as raised:
        render_image(source, out, Path(source.name), settings or ImageSettings())
    assert not out.exists() or files_under(out) == []  # nothing half made
    bad = raised.value
    assert str(bad) == bad.reason
    assert getattr(bad, ITEM_ATTRIBUTE) == source.name
    assert classify(bad).transient is False
    return bad


def test_an_empty_file_is_bad(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert expect_bad(tmp_path / "empty.jpg").reason == "empty file (0 bytes)"


def test_a_text_file_named_jpg_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("shopping list: milk, eggs\n" * 20)
    reason = expect_bad(tmp_path / "notes.jpg").reason
    assert reason.startswith("not an image:") and ".jpg" in reason


def test_a_truncated_jpeg_is_bad(tmp_path: Path) -> None:
    whole = save_photo(tmp_path / "whole.jpg", sample("coffee", 1200)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    reason = expect_bad(tmp_path / "cut.jpg").reason
    assert reason.startswith("truncated JPEG data: the file ends at byte ")


@pytest.mark.parametrize(
    ("width", "height", "pixels"),
    [
        (9000, 9000, "81,000,000"),  # over our limit, under Pillow's: the header check
        (10_000, 10_000, "100,000,000"),  # over Pillow's warning limit
        (20_000, 20_000, "400,000,000"),  # over Pillow's error limit
    ],
)
def test_a_png_declaring_too_many_pixels_is_refused_before_decoding(
    tmp_path: Path, width: int, height: int, pixels: str
) -> None:
    (tmp_path / "bomb.png").write_bytes(png_header(width, height))
    reason = expect_bad(tmp_path / "bomb.png").reason
    assert reason.startswith("too many pixels:")
    assert pixels in reason and "over the limit of 60,000,000" in reason


def test_a_real_photo_over_a_lower_pixel_limit_is_refused(tmp_path: Path) -> None:
    source = save_photo(tmp_path / "big.jpg", sample("coffee", 600))
    reason = expect_bad(source, ImageSettings(max_pixels=100_000)).reason
    assert reason == (
        "too many pixels: 600x400 = 240,000 pixels, over the limit of 100,000 "
        "(possible decompression bomb)"
    )


def test_an_unreadable_file_is_bad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = save_photo(tmp_path / "locked.jpg", sample("coffee", 600))
    source.chmod(0)
    if os.access(source, os.R_OK):
        # Root reads through mode 000, so make the open fail the way it does for anyone else.
        real_open = images._open_for_reading

        def refuse(path):
            if path == source:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path)

        monkeypatch.setattr(images, "_open_for_reading", refuse)
    try:
        reason = expect_bad(source).reason
    finally:
        source.chmod(0o644)
    assert reason == "cannot read the file: permission denied"


def test_formats_other_than_jpeg_png_webp_tiff_are_unsupported(tmp_path: Path) -> None:
    """Only JPEG (and its MPO variant), PNG, WebP and TIFF decoders ever see inbox bytes. A GIF,
    BMP or HEIC is a real image Pillow could (or could not) open, but it is not a camera photo,
    and every extra decoder is attack surface (EPS even runs Ghostscript), so such files are
    refused by content, whatever their name says, and the reason names the actual format."""
    sample("chelsea", 300).save(tmp_path / "anim.tiff", "GIF")
    sample("chelsea", 300).save(tmp_path / "bitmap.jpg", "BMP")
    (tmp_path / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 200)

    assert expect_bad(tmp_path / "anim.tiff").reason == (
        "unsupported format: GIF (accepted: JPEG, PNG, TIFF, WEBP)"
    )
    assert expect_bad(tmp_path / "bitmap.jpg").reason.startswith("unsupported format: BMP")
    assert expect_bad(tmp_path / "phone.heic").reason.startswith("unsupported format: HEIC")


def test_tiff_and_webp_sources_are_accepted(tmp_path: Path) -> None:
    sample("coffee", 900).save(tmp_path / "scan.tif", "TIFF")
    sample("coffee", 900).save(tmp_path / "shared.webp", "WEBP", quality=90)

    for name in ("scan.tif", "shared.webp"):
        result = render_image(tmp_path / name, tmp_path / "web", Path(name))
        assert [r.width for r in result.renditions] == [800, 800, 400, 400]


@pytest.mark.parametrize(
    ("name", "mode"), [("print.jpg", "CMYK"), ("scan.png", "L"), ("palette.png", "P")]
)
def test_cmyk_grey_and_palette_pictures_become_rgb(tmp_path: Path, name: str, mode: str) -> None:
    picture = sample("coffee", 900).convert(mode)
    picture.save(tmp_path / name)

    render_image(tmp_path / name, tmp_path / "web", Path(name))

    expected = picture.convert("RGB").resize((800, 533), Image.Resampling.LANCZOS)
    for suffix in ("jpg", "webp"):
        with Image.open(rendition(tmp_path / "web", name, 800, suffix)) as out:
            assert out.mode == "RGB" and out.size == (800, 533)
            # An inverted or shifted picture is off by far more (a dithered palette adds ~10).
            assert mean_difference(out, expected) < 15
