"""Turn one photo into web-ready renditions: WebP and progressive JPEG at a few widths.

A photo is decoded once, at the smallest JPEG DCT scale that still covers the largest width
(draft mode: a 12 MP camera JPEG is decoded at 3 MP for 1600 px), turned upright by its EXIF
orientation, stripped of every metadata block but the colour profile, and written atomically.
Anything that can never become a web image raises `BadImage` with a reason for the quarantine
note; errors of the disk itself (reading or writing) are raised as they are, so a failing disk
is never mistaken for a bad photo.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import struct
import tempfile
import warnings
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image, ImageCms, ImageOps, UnidentifiedImageError

from automation_pipelines.reliability.errors import PermanentError

#: What the inbox sensor considers. HEIC is listed so such a file is quarantined with a reason
#: instead of lying in the inbox unnoticed: Pillow has no HEIC decoder here.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".heic"})

#: The decoders allowed to parse inbox bytes. Photos come as these; every other Pillow plugin
#: (EPS runs Ghostscript, PSD, ICO, animated GIF, …) is attack surface with no use here.
OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF")
#: Pillow opens a JPEG carrying a multi-picture index (many phones write one) as MPO.
ACCEPTED_FORMATS = frozenset({*OPEN_FORMATS, "MPO"})

#: Magic numbers, only to name a file's format in a quarantine reason.
_SIGNATURES = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (8, b"WEBP", "WebP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"GIF8", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"%PDF", "PDF"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
)

#: EXIF orientations 5-8 store the picture turned a quarter: width and height are swapped.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})

#: A 0o644 mode for outputs: mkstemp makes 0o600, which a web server would not read.
_OUTPUT_MODE = 0o644


@dataclass(frozen=True)
class ImageSettings:
    """Output widths and encoder qualities, and the decompression-bomb limit."""

    widths: tuple[int, ...] = (1600, 800, 400)
    webp_quality: int = 80
    jpeg_quality: int = 82
    max_pixels: int = 60_000_000  # decompression-bomb limit

    def __post_init__(self) -> None:
        if not self.widths or any(width < 1 for width in self.widths):
            raise ValueError(f"widths must be positive integers, got {self.widths!r}")
        for name in ("webp_quality", "jpeg_quality"):
            if not 1 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} must be within 1..100, got {getattr(self, name)}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")


@dataclass(frozen=True)
class Rendition:
    """One written output file."""

    path: Path  # relative to the output root
    width: int
    height: int
    format: str  # "webp" | "jpeg"
    bytes: int


@dataclass(frozen=True)
class ImageResult:
    """What became of one source photo."""

    source_bytes: int
    width: int  # of the (orientation-corrected) original
    height: int
    renditions: tuple[Rendition, ...]


class BadImage(PermanentError):
    """A file that can never become a web image; `reason` says why, for the quarantine note."""

    def __init__(self, reason: str, *, item: str | None = None):
        super().__init__(reason, item=item)
        self.reason = reason


@dataclass
class _Decoded:
    image: Image.Image  # upright, RGB or RGBA, possibly decoded at a reduced DCT scale
    width: int  # full size, upright
    height: int
    icc_profile: bytes | None
    source_bytes: int


def render_image(
    source: Path,
    output_root: Path,
    relative: Path,
    settings: ImageSettings = ImageSettings(),
) -> ImageResult:
    """Write `relative.stem-{width}.webp` and `.jpg` under `output_root / relative.parent` for
    every configured width up to the photo's own (never upscaled), and say what was written."""
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"relative must stay inside the output root, got {relative}")
    decoded = _decode(source, relative.as_posix(), settings)
    folder = relative.parent
    made: list[Image.Image] = [decoded.image]
    written: dict[str, Rendition] = {}
    largest_webp: tuple[str, int, int, Future[bytes]] | None = None

    def write(name: str, width: int, height: int, data: bytes) -> None:
        _write_atomically(output_root / folder / name, data)
        fmt = "webp" if name.endswith(".webp") else "jpeg"
        written[name] = Rendition(folder / name, width, height, fmt, len(data))

    # Two cores, two threads (Pillow releases the GIL while it resizes and encodes): a helper
    # resizes half of the largest size, then encodes its WebP, the longest job of all, while
    # this thread resizes, encodes and writes everything else.
    names = []
    with ThreadPoolExecutor(max_workers=1) as helper:
        for width in output_widths(decoded.width, settings.widths):
            height = scaled_height(decoded.width, decoded.height, width)
            first = largest_webp is None
            source_picture = _resize_source(made, width)
            picture = _resized(source_picture, width, height, helper if first else None)
            made.append(picture)
            webp, jpeg = f"{relative.stem}-{width}.webp", f"{relative.stem}-{width}.jpg"
            names += [webp, jpeg]
            if first:
                # Its own copy: Pillow keeps save options on the image object while it saves,
                # so two threads saving one object could swap their qualities.
                job = helper.submit(_encode_webp, picture.copy(), decoded.icc_profile, settings)
                largest_webp = (webp, width, height, job)
            else:
                write(webp, width, height, _encode_webp(picture, decoded.icc_profile, settings))
            write(jpeg, width, height, _encode_jpeg(picture, decoded.icc_profile, settings))
        assert largest_webp is not None
        name, width, height, job = largest_webp
        write(name, width, height, job.result())
    renditions = tuple(written[name] for name in names)
    return ImageResult(decoded.source_bytes, decoded.width, decoded.height, renditions)


def output_widths(original_width: int, widths: tuple[int, ...]) -> list[int]:
    """The configured widths that need no upscaling, largest first; the original width alone
    when it is narrower than all of them."""
    fitting = sorted({width for width in widths if width <= original_width}, reverse=True)
    return fitting or [original_width]


def scaled_height(original_width: int, original_height: int, width: int) -> int:
    """The height that keeps the aspect ratio, rounded half up (as ImageMagick and libvips do;
    Python's round() would send 266.5 to 266)."""
    return max(1, math.floor(width * original_height / original_width + 0.5))


def _decode(source: Path, item: str, settings: ImageSettings) -> _Decoded:
    try:
        handle = source.open("rb")
    except PermissionError:
        raise BadImage("cannot read the file: permission denied", item=item) from None
    with handle:
        source_bytes = os.fstat(handle.fileno()).st_size
        if source_bytes == 0:
            raise BadImage("empty file (0 bytes)", item=item)
        head = handle.read(16)
        handle.seek(0)
        kind = _sniff(head)
        try:
            # Pillow's own bomb check warns (and errors at twice its limit) inside open();
            # as an error here it cannot slip through as a log line.
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                return _load(handle, item, settings, source_bytes)
        except UnidentifiedImageError:
            raise BadImage(_unidentified_reason(kind, source.suffix), item=item) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            pixels, limit = _bomb_numbers(str(exc), settings.max_pixels)
            raise BadImage(
                f"too many pixels: {pixels} pixels, over the limit of {limit:,} "
                "(possible decompression bomb)",
                item=item,
            ) from None
        except OSError as exc:
            if exc.errno is not None:
                raise  # the disk failed (EIO, …), not the data: let it be classified as I/O
            raise BadImage(_corrupt_reason(kind, exc), item=item) from None
        except (SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error) as exc:
            raise BadImage(_corrupt_reason(kind, exc), item=item) from None


def _load(handle: io.BufferedReader, item: str, settings: ImageSettings, size: int) -> _Decoded:
    image = Image.open(handle, formats=OPEN_FORMATS)
    if image.format not in ACCEPTED_FORMATS:
        raise BadImage(f"unsupported format: {image.format}", item=item)
    stored_width, stored_height = image.size
    pixels = stored_width * stored_height
    if pixels > settings.max_pixels:
        raise BadImage(
            f"too many pixels: {stored_width}x{stored_height} = {pixels:,} pixels, over the "
            f"limit of {settings.max_pixels:,} (possible decompression bomb)",
            item=item,
        )
    orientation = _orientation(image)
    turned = orientation in _QUARTER_TURNS
    width, height = (stored_height, stored_width) if turned else (stored_width, stored_height)
    if image.format in ("JPEG", "MPO"):
        # Decode only the DCT scale (1/1, 1/2, 1/4, 1/8) the largest output needs. draft()
        # works on the stored picture, so a quarter-turned photo asks for swapped sides.
        need_width = output_widths(width, settings.widths)[0]
        need_height = math.ceil(need_width * height / width)
        image.draft("RGB", (need_height, need_width) if turned else (need_width, need_height))
    image.load()  # a full decode, so truncated or corrupt data fails here and not later
    icc_profile = image.info.get("icc_profile") or None
    ImageOps.exif_transpose(image, in_place=True)
    picture, icc_profile = _to_rgb(image, icc_profile)
    picture.info = {}  # EXIF (GPS, camera), XMP, comments: none of it reaches an output
    return _Decoded(picture, width, height, icc_profile, size)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation; a photo whose EXIF cannot be parsed is taken as upright."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb(image: Image.Image, icc_profile: bytes | None) -> tuple[Image.Image, bytes | None]:
    """RGB, or RGBA when the picture has transparency; keeps an RGB colour profile, and converts
    a CMYK or grey picture that carries its own profile to sRGB (its profile would not fit)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or ("transparency" in image.info)
    mode = "RGBA" if has_alpha else "RGB"
    if image.mode.startswith("I;16"):
        # 16-bit grey: scale to 8 bits instead of clipping everything above 255 to white.
        image = image.convert("I").point(lambda value: value / 257).convert("L")
    if icc_profile and icc_profile[16:20] != b"RGB ":
        try:
            source_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            converted = ImageCms.profileToProfile(
                image, source_profile, ImageCms.createProfile("sRGB"), outputMode=mode
            )
        except (ImageCms.PyCMSError, OSError, ValueError):
            converted = None
        if converted is not None:
            return converted, None
        return image.convert(mode), None
    if image.mode == "P" and has_alpha:
        image = image.convert("RGBA")
    return (image if image.mode == mode else image.convert(mode)), icc_profile


def _resize_source(made: list[Image.Image], width: int) -> Image.Image:
    """The smallest picture made so far that is at least twice `width` (else the decoded one):
    at 2x it still holds every detail the smaller one can show, and costs a fraction to read."""
    wide_enough = [picture for picture in made[1:] if picture.width >= 2 * width]
    return min(wide_enough, key=lambda picture: picture.width, default=made[0])


def _resized(
    image: Image.Image, width: int, height: int, helper: ThreadPoolExecutor | None = None
) -> Image.Image:
    """Lanczos, the sharpest of Pillow's filters without visible ringing on photos. With a
    helper thread the bottom half is resized there: each half reads source rows across the
    seam, so the result differs from one pass only by rounding (at most a level or two)."""
    if image.size == (width, height):
        return image
    if helper is None or height < 16:
        return _lanczos(image, (width, height), (0, 0, image.width, image.height))
    split = height // 2
    seam = split * image.height / height  # the source row where the top half ends
    bottom = helper.submit(
        _lanczos, image, (width, height - split), (0, seam, image.width, image.height)
    )
    top = _lanczos(image, (width, split), (0, 0, image.width, seam))
    picture = Image.new(image.mode, (width, height))
    picture.paste(top, (0, 0))
    picture.paste(bottom.result(), (0, split))
    return picture


def _lanczos(
    image: Image.Image, size: tuple[int, int], box: tuple[float, float, float, float]
) -> Image.Image:
    # The reducing gap only acts on a large non-JPEG source (a JPEG is already drafted to < 2x):
    # a box reduction first, then Lanczos over at least 3x, looks the same and is far cheaper.
    return image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


def _encode_webp(picture: Image.Image, icc_profile: bytes | None, settings: ImageSettings) -> bytes:
    buffer = io.BytesIO()
    # method 4, libwebp's default (and ImageMagick's and libvips'): on 12 MP camera photos
    # methods 0-2 encode about twice as fast but make 5-18% larger files of lower SSIM at the
    # same quality, 3 saves no time, 5-6 take up to 1.8x as long for files at most 3% smaller.
    # Alpha, if any, is kept.
    picture.save(
        buffer,
        "WEBP",
        quality=settings.webp_quality,
        method=4,
        icc_profile=icc_profile or b"",
    )
    return buffer.getvalue()


def _encode_jpeg(picture: Image.Image, icc_profile: bytes | None, settings: ImageSettings) -> bytes:
    if picture.mode == "RGBA":  # JPEG has no alpha: lay the picture on white
        flat = Image.new("RGB", picture.size, (255, 255, 255))
        flat.paste(picture, mask=picture.getchannel("A"))
        picture = flat
    buffer = io.BytesIO()
    options = {"icc_profile": icc_profile} if icc_profile else {}
    picture.save(
        buffer,
        "JPEG",
        quality=settings.jpeg_quality,
        progressive=True,
        optimize=True,
        **options,
    )
    return buffer.getvalue()


def _write_atomically(target: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one, even after a crash."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, _OUTPUT_MODE)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def _sniff(head: bytes) -> str | None:
    for offset, magic, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def _unidentified_reason(kind: str | None, suffix: str) -> str:
    if kind is None:
        named = f" although it is named {suffix}" if suffix else ""
        return f"not an image: its content matches no image format{named}"
    if kind.upper() in ACCEPTED_FORMATS:
        return f"corrupt {kind} data: the header cannot be read"
    accepted = ", ".join(sorted(ACCEPTED_FORMATS - {"MPO"}))
    return f"unsupported format: {kind} (accepted: {accepted})"


def _corrupt_reason(kind: str | None, exc: BaseException) -> str:
    what = f"{kind} data" if kind else "image data"
    message = str(exc) or type(exc).__name__
    if "truncated" in message:
        return f"truncated {what}: the file ends before the picture does ({message})"
    return f"corrupt {what}: {message}"


def _bomb_numbers(message: str, max_pixels: int) -> tuple[str, int]:
    """The pixel count Pillow names, and the limit that was exceeded (ours or Pillow's)."""
    found = re.search(r"\((\d+) pixels\)", message)
    pixels = f"{int(found.group(1)):,}" if found else "an unknown number of"
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    return pixels, limit
