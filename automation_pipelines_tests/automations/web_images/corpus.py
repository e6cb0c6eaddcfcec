"""A corpus of broken and unusual image inputs, made here, each with what must become of it.

Every good input is a picture whose four quadrants have four colours, so any wrong orientation,
mirror or crop shows; it is stored turned by its EXIF orientation where it has one, and the
builder checks with Pillow's own `ImageOps.exif_transpose` that the stored file means the upright
reference. A bad input says which words its quarantine reason must contain.

`check_outputs` holds what was published to the corpus: every output decodes, has the size its
manifest entry says, shows its own source's picture upright, and belongs to exactly one source.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageCms, ImageOps

ORIENTATION = 0x0112
#: What a camera stores for each EXIF orientation, given the upright picture (EXIF 2.32, 4.6.4).
STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
#: Mean difference per channel at 8x8 an output may have from its reference: blur and encoder
#: loss give up to about 21 (a 400x7 panorama); a swapped or mirrored quadrant gives over 60.
TOLERANCE = 30
COLOURS = ((220, 30, 30), (30, 180, 40), (30, 60, 220), (240, 220, 30))


def quadrants(width: int = 480, height: int = 320, colours=COLOURS, mode: str = "RGB"):
    """Top-left, top-right, bottom-left, bottom-right in four colours (alpha 255 for RGBA)."""
    picture = Image.new("RGB", (width, height))
    half_w, half_h = width // 2, height // 2
    boxes = ((0, 0, half_w, half_h), (half_w, 0, width, half_h))
    boxes += ((0, half_h, half_w, height), (half_w, half_h, width, height))
    for box, colour in zip(boxes, colours, strict=True):
        picture.paste(colour, box)
    return picture.convert(mode)


@dataclass
class Case:
    """One inbox input: `make(path)` writes it; `reference` is the upright picture an output must
    show (None: it must be quarantined with every word of `reason` in its reason)."""

    name: str
    make: Callable[[Path], None]
    reference: Image.Image | None = None
    reason: tuple[str, ...] = ()
    frames: int = 1
    #: Renditions a format cannot hold, as the manifest must list them: (width, format).
    skipped: tuple[tuple[int, str], ...] = ()


def _save(picture: Image.Image, fmt: str, **options) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        picture.save(path, fmt, **options)

    return make


def _raw(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _encoded(picture: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


def _oriented(upright: Image.Image, orientation: int, fmt: str) -> Callable[[Path], None]:
    turn = STORED[orientation]
    stored = upright if turn is None else upright.transpose(turn)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation

    def make(path: Path) -> None:
        stored.save(path, fmt, exif=exif.tobytes())
        with Image.open(path) as written:  # the corpus means what it says
            assert diff(ImageOps.exif_transpose(written), upright) < 12, (path, orientation)

    return make


def png_chunks(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, type) of each chunk of a PNG."""
    chunks, at = [], 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        chunks.append((at, kind))
        at += 12 + length
    return chunks


def _flip_in(data: bytes, kind: bytes, into: int = 20) -> bytes:
    """`data` with one byte flipped `into` bytes inside the first chunk of `kind`."""
    offset = next(at for at, found in png_chunks(data) if found == kind)
    spoiled = bytearray(data)
    spoiled[offset + 8 + into] ^= 0x55
    return bytes(spoiled)


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG header declaring `width` x `height` with one tiny IDAT: a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _frames(count: int, size=(240, 160)) -> list[Image.Image]:
    """Frames of one animation; the first is the four-colour picture."""
    first = quadrants(*size)
    rest = [quadrants(*size, colours=COLOURS[n:] + COLOURS[:n]) for n in range(1, count)]
    return [first, *rest]


def _animated(fmt: str, count: int, **options) -> Callable[[Path], None]:
    frames = _frames(count)

    def make(path: Path) -> None:
        frames[0].save(path, fmt, save_all=True, append_images=frames[1:], **options)

    return make


def _symlink_to(target_name: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        os.symlink(target_name, path)

    return make


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def build() -> list[Case]:
    """Every kind, once: 78 inputs, 54 to publish and 24 to quarantine."""
    base = quadrants()
    cases: list[Case] = []

    def good(name, make, reference=base, frames=1, skipped=()):
        cases.append(Case(name, make, reference, frames=frames, skipped=skipped))

    def bad(name, make, *reason):
        cases.append(Case(name, make, None, reason))

    # JPEG, every orientation and colour kind.
    for n in range(1, 9):
        good(f"orient-{n}.jpg", _oriented(base, n, "JPEG"))
    for n in (3, 6, 8):
        good(f"orient-{n}.png", _oriented(base, n, "PNG"))
    good("orient-6.webp", _oriented(base, 6, "WEBP"))
    good("baseline.jpg", _save(base, "JPEG", quality=90))
    good("progressive.jpg", _save(base, "JPEG", quality=90, progressive=True))
    good("subsampling-444.jpg", _save(base, "JPEG", quality=90, subsampling=0))
    good("quality-5.jpg", _save(base, "JPEG", quality=5))
    good("grey.jpg", _save(base.convert("L"), "JPEG"), base.convert("L").convert("RGB"))
    good("cmyk.jpg", _save(base.convert("CMYK"), "JPEG"), base.convert("CMYK").convert("RGB"))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    good("icc-srgb.jpg", _save(base, "JPEG", icc_profile=srgb))
    # PNG in every mode Pillow writes.
    good("rgb.png", _save(base, "PNG"))
    good("big.png", _save(quadrants(1700, 1100), "PNG"), quadrants(1700, 1100))
    good("rgba-opaque.png", _save(base.convert("RGBA"), "PNG"))
    half = base.convert("RGBA")
    half.putalpha(128)
    good("rgba-half.png", _save(half, "PNG"), on_white(half))
    good("grey.png", _save(base.convert("L"), "PNG"), base.convert("L").convert("RGB"))
    grey_alpha = base.convert("LA")
    good("grey-alpha.png", _save(grey_alpha, "PNG"), on_white(grey_alpha))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    good("palette.png", _save(palette, "PNG"), palette.convert("RGB"))
    see_through = palette.copy()
    see_through.info["transparency"] = 0
    good(
        "palette-transparent.png",
        _save(palette, "PNG", transparency=0),
        on_white(see_through.convert("RGBA")),
    )
    sixteen = sixteen_bit(base.convert("L"))
    good("grey-16bit.png", _save(sixteen, "PNG"), base.convert("L").convert("RGB"))
    bilevel = base.convert("1")
    good("bilevel.png", _save(bilevel, "PNG"), bilevel.convert("RGB"))
    good("apng.png", _animated("PNG", 3), frames=3)
    good("trailing-bytes.png", lambda p: p.write_bytes(_encoded(base, "PNG") + b"\x00" * 100))
    # WebP.
    good("lossy.webp", _save(base, "WEBP", quality=80))
    good("lossless.webp", _save(base, "WEBP", lossless=True))
    good("alpha.webp", _save(half, "WEBP", lossless=True), on_white(half))
    good("animated.webp", _animated("WEBP", 4, duration=100, lossless=True), frames=4)
    # TIFF.
    good("plain.tif", _save(base, "TIFF"))
    good("lzw.tiff", _save(base, "TIFF", compression="tiff_lzw"))
    good("deflate.tif", _save(base, "TIFF", compression="tiff_adobe_deflate"))
    good("cmyk.tif", _save(base.convert("CMYK"), "TIFF"), base.convert("CMYK").convert("RGB"))
    good("grey-16bit.tif", _save(sixteen, "TIFF"), base.convert("L").convert("RGB"))
    good("two-pages.tif", _animated("TIFF", 2), frames=2)
    # Sizes and shapes.
    good("one-pixel.png", _save(Image.new("RGB", (1, 1), COLOURS[0]), "PNG"), None)
    good("tiny-24x16.png", _save(quadrants(24, 16), "PNG"), quadrants(24, 16))
    good("exactly-1600.jpg", _save(quadrants(1600, 1000), "JPEG"), quadrants(1600, 1000))
    wide = quadrants(12000, 200)
    good("panorama-60-to-1.jpg", _save(wide, "JPEG"), wide)
    tall = quadrants(1080, 30000)
    good("screenshot-1080x30000.png", _save(tall, "PNG"), tall, skipped=((800, "webp"),))
    # Two sources with one stem: each keeps its own picture.
    good("IMG_1.jpg", _save(base, "JPEG", quality=90))
    swapped = quadrants(colours=COLOURS[::-1])
    good("IMG_1.png", _save(swapped, "PNG"), swapped)
    turned = quadrants(colours=COLOURS[1:] + COLOURS[:1])
    good("IMG_1.JPG", _save(turned, "JPEG", quality=90), turned)
    good("no-suffix", _save(base, "JPEG"))
    good("named-wrong.png", _save(base, "JPEG"))
    good("café ünïcode.jpg", _save(base, "JPEG"))
    good("space in name.jpg", _save(base, "JPEG"))
    good("nested/deeper/photo.jpg", _save(base, "JPEG"))

    # Not images at all, or kinds not accepted.
    bad("still.gif", _save(base.convert("P"), "GIF"), "unsupported format", "GIF")
    bad("animated.gif", _animated("GIF", 3), "unsupported format", "GIF")
    bad("picture.bmp", _save(base, "BMP"), "unsupported format", "BMP")
    bad("icon.ico", _save(base, "ICO"), "unsupported format", "ICO")
    bad("picture.pdf", _save(base, "PDF"), "unsupported format", "PDF")
    bad("photo.avif", _raw(b"\x00\x00\x00\x1cftypavif" + b"\x00" * 200), "unsupported", "AVIF")
    bad("photo.heic", _raw(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 200), "unsupported", "HEIC")
    bad("drawing.svg", _raw(b'<svg xmlns="http://www.w3.org/2000/svg"/>'), "unsupported", "SVG")
    bad("archive.png", _raw(b"PK\x03\x04" + b"\x00" * 300), "unsupported", "ZIP")
    bad("notes.jpg", _raw(b"meeting notes, not a photo\n"), "not an image")
    bad("noise.webp", _raw(bytes(range(256)) * 8), "not an image")
    bad("empty.jpg", _raw(b""), "empty file")
    bad("link-to-photo.jpg", _symlink_to("baseline.jpg"), "symbolic link")
    bad("dangling-link.jpg", _symlink_to("/nonexistent/photo.jpg"), "symbolic link")
    bad("pipe.jpg", _fifo, "named pipe")
    # Broken inside, or ended early (these are old files: past any upload's grace).
    png = _encoded(quadrants(600, 400), "PNG")
    bad("idat-flipped.png", _raw(_flip_in(png, b"IDAT")), "corrupt PNG")
    bad("ihdr-flipped.png", _raw(_flip_in(png, b"IHDR", 2)), "corrupt PNG")
    idat_at = next(at for at, kind in png_chunks(png) if kind == b"IDAT")
    bad("cut-in-idat.png", _raw(png[: idat_at + 40]), "truncated PNG")
    bad("no-iend.png", _raw(png[:-12]), "truncated PNG")
    jpeg = _encoded(quadrants(600, 400), "JPEG", quality=90)
    bad("cut-half.jpg", _raw(jpeg[: len(jpeg) // 2]), "truncated")
    bad("cut-header.jpg", _raw(jpeg[:10]), "truncated")
    webp = _encoded(quadrants(600, 400), "WEBP")
    bad("cut.webp", _raw(webp[: len(webp) * 2 // 3]), "truncated")
    tiff = _encoded(quadrants(600, 400), "TIFF")
    bad("cut.tif", _raw(tiff[: len(tiff) // 3]), "truncated")
    bad("bomb.png", _raw(_png_declaring(20000, 20000)), "too many pixels")
    return cases


def sixteen_bit(grey: Image.Image) -> Image.Image:
    """The 8-bit grey picture as 16-bit grey (each level times 257), as scanners write."""
    levels = bytes(grey.tobytes())
    wide = b"".join(struct.pack("<H", level * 257) for level in levels)
    return Image.frombytes("I;16", grey.size, wide)


def on_white(picture: Image.Image) -> Image.Image:
    """The picture laid on white, as a page would show it."""
    rgba = picture.convert("RGBA")
    flat = Image.new("RGB", rgba.size, (255, 255, 255))
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def diff(output: Image.Image, reference: Image.Image) -> float:
    """Mean absolute difference per channel of the two pictures at 8x8, laid on white."""
    a = on_white(output).resize((8, 8), Image.Resampling.BOX)
    b = on_white(reference).resize((8, 8), Image.Resampling.BOX)
    values = [abs(x - y) for x, y in zip(a.tobytes(), b.tobytes(), strict=True)]
    return sum(values) / len(values)


def stage(cases: list[Case], folder: Path) -> None:
    """Write every case into `folder` (a staging folder on the inbox's volume)."""
    for case in cases:
        path = folder / case.name
        path.parent.mkdir(parents=True, exist_ok=True)
        case.make(path)


def check_outputs(cases: list[Case], root: Path) -> dict[str, dict]:
    """Everything published under `root/web` is right; return the manifest."""
    web = root / "web"
    manifest = json.loads((web / "manifest.json").read_text())
    good = {case.name: case for case in cases if case.reason == ()}
    assert sorted(manifest) == sorted(good), set(manifest) ^ set(good)
    owners: dict[str, str] = {}
    for source, entry in manifest.items():
        case = good[source]
        assert entry["outputs"], source
        for output in entry["outputs"]:
            path = output["path"]
            assert path not in owners, f"{path} listed under {owners[path]} and {source}"
            owners[path] = source
            assert Path(path).name.startswith(Path(source).name + "-"), (source, path)
            with Image.open(web / path) as picture:
                picture.load()  # every byte decodes
                assert picture.size == (output["width"], output["height"]), (source, path)
                assert (web / path).stat().st_size == output["bytes"]
                reference = case.reference
                if reference is None:  # one pixel: its colour
                    assert diff(picture, Image.new("RGB", (1, 1), COLOURS[0])) < 12
                    continue
                expected_height = max(
                    1, round(output["width"] * reference.height / reference.width)
                )
                assert abs(picture.height - expected_height) <= 1, (source, picture.size)
                off = diff(picture, reference)
                assert off < TOLERANCE, (source, path, off)
        if case.frames > 1:
            assert (entry.get("animated"), entry.get("frames")) == (True, case.frames), source
        else:
            assert "animated" not in entry, source
        skipped = sorted((s["width"], s["format"]) for s in entry.get("skipped", []))
        assert skipped == sorted(case.skipped), (source, entry.get("skipped"))
    published = {
        p.relative_to(web).as_posix()
        for p in web.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert published == set(owners), published ^ set(owners)  # nothing unlisted, nothing missing
    return manifest


def check_quarantine(cases: list[Case], root: Path) -> None:
    """Every bad case is in quarantine/ with a reason holding its words, alone."""
    quarantine = root / "quarantine"
    for case in cases:
        if case.reason == ():
            continue
        note = quarantine / f"{case.name}.reason.txt"
        assert note.is_file(), f"{case.name} has no quarantine note"
        text = note.read_text()
        for word in case.reason:
            assert word in text, (case.name, word, text)
        assert os.path.lexists(quarantine / case.name), case.name
    notes = {p.relative_to(quarantine).as_posix() for p in quarantine.rglob("*.reason.txt")}
    expected = {f"{case.name}.reason.txt" for case in cases if case.reason}
    assert notes == expected, notes ^ expected
