"""Turn one photo into web-ready renditions: WebP and progressive JPEG at a few widths, published
all together or not at all.

A photo is read once (never through a symlink, never a FIFO), its container walked (`structure`:
a PNG's CRCs, a JPEG's end marker, a WebP's RIFF size, a TIFF's strips), then decoded whole:
every pixel of the picture, and every frame of an animation, before anything is written. A JPEG
is decoded at the smallest DCT scale that still covers the largest width (draft mode: a 12 MP
camera JPEG is decoded at 3 MP for 1600 px). The picture is turned upright by its EXIF
orientation and stripped of every metadata block but the colour profile.

Publishing: output names carry the source's whole file name and a version made from its content
and the settings (`IMG_1.jpg-1600.3f9a2c1b7e.webp`), so two sources never share a name and a new
version never overwrites the set a reader is using. Every rendition is encoded in memory, written
to a hidden temp file and fsynced, then all are renamed into place and the folder is fsynced; a
failure before the last rename removes what this call added. The set becomes *the* set of the
photo when its row is written and the manifest regenerated (the commit point readers follow);
the files of the set it replaced are deleted after that (see `batch`).

Anything that can never become a web image raises `BadImage` with a reason for the quarantine
note; `truncated` says the file ends early, which an upload still going looks like. Errors of the
disk itself (reading or writing) are raised as they are, so a failing disk is never mistaken for
a bad photo.
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import re
import stat
import struct
import warnings
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from PIL import ExifTags, Image, ImageCms, UnidentifiedImageError

from automation_pipelines.automations.web_images import structure
from automation_pipelines.reliability.errors import PermanentError
from automation_pipelines.reliability.files import publish_together

#: Suffixes of the files a person means as photos. Only used to point out a folder named like
#: one: every file in the inbox is looked at, whatever its name.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".heic"})

#: The decoders allowed to parse inbox bytes. Photos come as these; every other Pillow plugin
#: (EPS runs Ghostscript, PSD, ICO, GIF, AVIF, …) is attack surface with no use here.
OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF")
#: Pillow opens a JPEG carrying a multi-picture index (many phones write one) as MPO.
ACCEPTED_FORMATS = frozenset({*OPEN_FORMATS, "MPO"})
#: The container kinds `structure` walks, as `_sniff` names them.
_ACCEPTED_KINDS = frozenset({"JPEG", "PNG", "WebP", "TIFF"})

#: Magic numbers, to name a file's format in a quarantine reason and to pick the container walk.
_SIGNATURES = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (8, b"WEBP", "WebP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"II+\x00", "TIFF"),
    (0, b"MM\x00+", "TIFF"),
    (0, b"GIF8", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"%PDF", "PDF"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\xff\x0a", "JPEG XL"),
    (4, b"JXL ", "JPEG XL"),
    (4, b"jP  ", "JPEG 2000"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftyphevc", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypmsf1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypavis", "AVIF"),
    (4, b"ftypisom", "MP4 video"),
    (4, b"ftypmp42", "MP4 video"),
    (4, b"ftypqt  ", "QuickTime video"),
    (0, b"PK\x03\x04", "ZIP"),
)
#: The starts of accepted formats: a file that is only a piece of one ends early.
_HEADS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF", b"II*\x00", b"MM\x00*")

#: Encoder limits per side (libwebp; libjpeg-turbo's JPEG_MAX_DIMENSION).
WEBP_MAX_SIDE = 16383
JPEG_MAX_SIDE = 65500
_FORMATS = (("webp", "webp", WEBP_MAX_SIDE), ("jpeg", "jpg", JPEG_MAX_SIDE))

#: Animations: every frame is decoded (a file broken in its tenth frame is broken), up to these.
MAX_FRAMES = 1000
ANIMATION_PIXELS_PER_LIMIT = 10  # all frames together: 10 x max_pixels
#: Bigger files are not photos; refused before they are read into memory.
MAX_SOURCE_BYTES = 512 * 1024 * 1024

#: EXIF orientation -> the transposition that makes the picture upright (as ImageOps does).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: EXIF orientations 5-8 store the picture turned a quarter: width and height are swapped.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})

#: A 0o644 mode for outputs: mkstemp makes 0o600, which a web server would not read.
_OUTPUT_MODE = 0o644
#: A rendition's name: the source's file name, the width, the version, the format.
OUTPUT_NAME = re.compile(r"^(?P<source>.+)-(?P<width>\d+)\.(?P<version>[0-9a-f]{10})\.(webp|jpg)$")


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

    def key(self) -> str:
        """What a row records: outputs made with other settings are not reused."""
        widths = ",".join(str(width) for width in self.widths)
        return f"widths={widths};webp={self.webp_quality};jpeg={self.jpeg_quality}"


@dataclass(frozen=True)
class Rendition:
    """One written output file."""

    path: Path  # relative to the output root
    width: int
    height: int
    format: str  # "webp" | "jpeg"
    bytes: int


@dataclass(frozen=True)
class Skipped:
    """A rendition a format cannot hold (a side over its limit); the manifest says so."""

    width: int
    height: int
    format: str
    reason: str


@dataclass(frozen=True)
class ImageResult:
    """What became of one source photo."""

    source_bytes: int
    width: int  # of the (orientation-corrected) original
    height: int
    renditions: tuple[Rendition, ...]
    skipped: tuple[Skipped, ...] = ()
    frames: int = 1  # > 1: an animation (or a multi-page TIFF), its first frame rendered
    sha256: str = ""
    version: str = ""


class BadImage(PermanentError):
    """A file that can never become a web image; `reason` says why, for the quarantine note.
    `truncated`: the file ends early, which is what an upload still being written looks like."""

    def __init__(self, reason: str, *, item: str | None = None, truncated: bool = False):
        super().__init__(reason, item=item)
        self.reason = reason
        self.truncated = truncated


@dataclass(frozen=True)
class SourceFile:
    """A photo's bytes and what the file looked like when they were read."""

    data: bytes = field(repr=False)
    size: int
    mtime_ns: int
    #: The last change of any kind, the ctime: the kernel sets it to the moment on every write,
    #: rename and chmod, and it cannot be set into the future as the mtime can. A cut-short
    #: file's grace period counts from it.
    changed_ns: int
    sha256: str


@dataclass
class _Decoded:
    image: Image.Image  # upright, RGB or RGBA, possibly decoded at a reduced DCT scale
    width: int  # full size, upright
    height: int
    icc_profile: bytes | None
    frames: int


def read_source(path: Path, item: str | None = None) -> SourceFile:
    """The bytes of a regular file, read without following a symlink or blocking on a FIFO;
    anything else is a `BadImage` saying what it is."""
    item = item or path.name
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        try:
            target = f" (to {os.readlink(path)})"
        except OSError:
            target = ""
        raise BadImage(
            f"a symbolic link{target}, not a photo: links are not followed; put the photo "
            "itself in the inbox",
            item=item,
        )
    if not stat.S_ISREG(info.st_mode):
        raise BadImage(f"not a regular file ({_file_kind(info.st_mode)})", item=item)
    try:
        handle = _open_for_reading(path)
    except PermissionError:
        raise BadImage("cannot read the file: permission denied", item=item) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symlink since the lstat
            raise BadImage(
                "a symbolic link, not a photo: links are not followed", item=item
            ) from None
        raise
    with handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BadImage(f"not a regular file ({_file_kind(info.st_mode)})", item=item)
        if info.st_size > MAX_SOURCE_BYTES:
            raise BadImage(
                f"file too large: {info.st_size:,} bytes, over {MAX_SOURCE_BYTES:,}", item=item
            )
        chunks = []
        while chunk := handle.read(1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
    return SourceFile(
        data=data,
        size=len(data),
        mtime_ns=info.st_mtime_ns,
        changed_ns=info.st_ctime_ns,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _open_for_reading(path: Path) -> io.BufferedReader:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    return os.fdopen(os.open(path, flags), "rb")


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    )
    kinds += ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def output_version(sha256: str, settings: ImageSettings) -> str:
    """Ten hex digits of the source's content and the settings: the same photo rendered the same
    way gets the same names (a re-run rewrites nothing), anything else gets new ones."""
    return hashlib.sha256(f"{sha256}|{settings.key()}".encode()).hexdigest()[:10]


def output_name(source_name: str, width: int, version: str, fmt: str) -> str:
    return f"{source_name}-{width}.{version}.{'webp' if fmt == 'webp' else 'jpg'}"


def render_image(
    source: Path | SourceFile,
    output_root: Path,
    relative: Path,
    settings: ImageSettings = ImageSettings(),
) -> ImageResult:
    """Publish `<relative>-{width}.{version}.webp` and `.jpg` under `output_root /
    relative.parent` for every configured width up to the photo's own (never upscaled), all
    together or not at all, and say what was written."""
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"relative must stay inside the output root, got {relative}")
    item = relative.as_posix()
    read = source if isinstance(source, SourceFile) else read_source(Path(source), item)
    decoded = decode(read.data, item, settings, relative.suffix)
    plan, skipped = plan_renditions(decoded.width, decoded.height, settings)
    if not plan:
        raise BadImage(_no_rendition_reason(decoded, skipped), item=item)
    version = output_version(read.sha256, settings)
    encoded = _encode_all(decoded, plan, settings)
    folder = relative.parent
    files = {
        output_name(relative.name, width, version, fmt): data
        for (width, _, fmt), data in encoded.items()
    }
    publish_together(output_root / folder, files, mode=_OUTPUT_MODE)
    renditions = tuple(
        Rendition(
            folder / output_name(relative.name, width, version, fmt), width, height, fmt, len(data)
        )
        for (width, height, fmt), data in encoded.items()
    )
    return ImageResult(
        read.size,
        decoded.width,
        decoded.height,
        renditions,
        tuple(skipped),
        decoded.frames,
        read.sha256,
        version,
    )


def output_widths(original_width: int, widths: tuple[int, ...]) -> list[int]:
    """The configured widths that need no upscaling, largest first; the original width alone
    when it is narrower than all of them."""
    fitting = sorted({width for width in widths if width <= original_width}, reverse=True)
    return fitting or [original_width]


def scaled_height(original_width: int, original_height: int, width: int) -> int:
    """The height that keeps the aspect ratio, rounded half up (as ImageMagick and libvips do;
    Python's round() would send 266.5 to 266)."""
    return max(1, math.floor(width * original_height / original_width + 0.5))


def plan_renditions(
    width: int, height: int, settings: ImageSettings
) -> tuple[list[tuple[int, int, tuple[str, ...]]], list[Skipped]]:
    """(width, height, formats) per output width, largest first, and the renditions a format
    cannot hold: WebP stops at 16383 px a side (a 1080x30000 screenshot is 800x22222 at 800 px
    wide), JPEG at 65500. The JPEG is still made when only the WebP does not fit."""
    plan, skipped = [], []
    for out_width in output_widths(width, settings.widths):
        out_height = scaled_height(width, height, out_width)
        formats = []
        for fmt, _, limit in _FORMATS:
            if max(out_width, out_height) > limit:
                reason = f"{out_width}x{out_height} is over {fmt.upper()}'s {limit} px per side"
                skipped.append(Skipped(out_width, out_height, fmt, reason))
            else:
                formats.append(fmt)
        if formats:
            plan.append((out_width, out_height, tuple(formats)))
    return plan, skipped


def _no_rendition_reason(decoded: _Decoded, skipped: list[Skipped]) -> str:
    smallest = min(skipped, key=lambda s: s.width)
    return (
        f"too tall or wide for web formats: {decoded.width}x{decoded.height} is "
        f"{smallest.width}x{smallest.height} at {smallest.width} px wide, over JPEG's "
        f"{JPEG_MAX_SIDE} and WebP's {WEBP_MAX_SIDE} px per side"
    )


def _encode_all(
    decoded: _Decoded, plan: list[tuple[int, int, tuple[str, ...]]], settings: ImageSettings
) -> dict[tuple[int, int, str], bytes]:
    """Every rendition, encoded in memory, in plan order (WebP before JPEG per width).

    Two cores, two threads: a helper resizes half of the largest size, then encodes its WebP,
    the longest job of all, while this thread resizes and encodes everything else. Pillow
    releases the interpreter lock while it resizes and encodes (a JPEG: see `_encode_jpeg`)."""
    made: list[Image.Image] = [decoded.image]
    encoded: dict[tuple[int, int, str], bytes | Future[bytes] | None] = {
        (width, height, fmt): None for width, height, formats in plan for fmt in formats
    }
    with ThreadPoolExecutor(max_workers=1) as helper:
        for index, (width, height, formats) in enumerate(plan):
            first = index == 0
            picture = _resized(
                _resize_source(made, width), width, height, helper if first else None
            )
            made.append(picture)
            for fmt in formats:
                key = (width, height, fmt)
                if fmt == "webp" and first:
                    # Its own copy: Pillow keeps save options on the image object while it
                    # saves, so two threads saving one object could swap their qualities.
                    encoded[key] = helper.submit(
                        _encode_webp, picture.copy(), decoded.icc_profile, settings
                    )
                elif fmt == "webp":
                    encoded[key] = _encode_webp(picture, decoded.icc_profile, settings)
                else:
                    encoded[key] = _encode_jpeg(picture, decoded.icc_profile, settings)
        return {
            key: value.result() if isinstance(value, Future) else value
            for key, value in encoded.items()
        }


def decode(data: bytes, item: str, settings: ImageSettings, suffix: str = "") -> _Decoded:
    """Every pixel of the picture (and of every frame), upright, in RGB or RGBA; `BadImage`
    otherwise."""
    if not data:
        raise BadImage("empty file (0 bytes)", item=item, truncated=True)
    kind = _sniff(data[:16])
    if kind is None and len(data) < 16 and any(head.startswith(data[:4]) for head in _HEADS):
        raise BadImage(
            f"truncated image data: the file ends at byte {len(data)}, inside its header",
            item=item,
            truncated=True,
        )
    if kind is not None and kind not in _ACCEPTED_KINDS:
        raise BadImage(_unsupported_reason(kind), item=item)
    try:
        structure.check(kind, data)
    except structure.Truncated as exc:
        raise BadImage(f"truncated {kind} data: {exc}", item=item, truncated=True) from None
    except structure.Corrupt as exc:
        raise BadImage(f"corrupt {kind} data: {exc}", item=item) from None
    try:
        # Pillow's own bomb check warns (and errors at twice its limit) inside open();
        # as an error here it cannot slip through as a log line.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _load(data, item, settings)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(_unidentified_reason(kind, suffix), item=item) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pixels, limit = _bomb_numbers(str(exc), settings.max_pixels)
        raise BadImage(
            f"too many pixels: {pixels} pixels, over the limit of {limit:,} "
            "(possible decompression bomb)",
            item=item,
        ) from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        KeyError,
        struct.error,
        zlib.error,
    ) as exc:
        reason = _corrupt_reason(kind, exc)
        raise BadImage(reason, item=item, truncated=reason.startswith("truncated")) from None


def _load(data: bytes, item: str, settings: ImageSettings) -> _Decoded:
    image = Image.open(io.BytesIO(data), formats=OPEN_FORMATS)
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
    frames = 1 if image.format == "MPO" else int(getattr(image, "n_frames", 1) or 1)
    _check_animation_size(frames, pixels, settings, item)
    orientation = None
    if image.format in ("JPEG", "MPO"):
        # A JPEG's EXIF is read with its header, so this decodes nothing. Decode only the DCT
        # scale (1/1, 1/2, 1/4, 1/8) the largest output needs; draft() works on the stored
        # picture, so a quarter-turned photo asks for swapped sides.
        orientation = _orientation(image)
        turned = orientation in _QUARTER_TURNS
        width, height = (stored_height, stored_width) if turned else (stored_width, stored_height)
        need_width = output_widths(width, settings.widths)[0]
        need_height = math.ceil(need_width * height / width)
        image.draft("RGB", (need_height, need_width) if turned else (need_width, need_height))
    # The one full decode: truncated or corrupt data fails here. Nothing before it may trigger
    # a decode (a PNG's getexif() does, and a second load() returns the half it got).
    image.load()
    if orientation is None:
        orientation = _orientation(image)
    icc_profile = image.info.get("icc_profile") or None
    first = image.copy() if frames > 1 else image
    for index in range(1, frames):  # every frame decodes, or the file is broken
        image.seek(index)
        image.load()
    picture, icc_profile = _to_rgb(first, icc_profile, item)
    if orientation in _UPRIGHT:
        picture = picture.transpose(_UPRIGHT[orientation])
    picture.info = {}  # EXIF (GPS, camera), XMP, comments: none of it reaches an output
    turned = orientation in _QUARTER_TURNS
    width, height = (stored_height, stored_width) if turned else (stored_width, stored_height)
    return _Decoded(picture, width, height, icc_profile, frames)


def _check_animation_size(frames: int, pixels: int, settings: ImageSettings, item: str) -> None:
    limit = settings.max_pixels * ANIMATION_PIXELS_PER_LIMIT
    if frames > MAX_FRAMES or frames * pixels > limit:
        raise BadImage(
            f"animation too large to check: {frames} frames of {pixels:,} pixels, over "
            f"{MAX_FRAMES} frames or {limit:,} pixels in all (every frame is decoded first)",
            item=item,
        )


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation; a photo whose EXIF cannot be parsed is taken as upright. Called
    only where reading the EXIF cannot start a decode (see `_load`)."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb(
    image: Image.Image, icc_profile: bytes | None, item: str
) -> tuple[Image.Image, bytes | None]:
    """RGB, or RGBA when the picture has transparency; keeps an RGB colour profile, and converts
    a CMYK or grey picture that carries its own profile to sRGB (its profile would not fit)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or ("transparency" in image.info)
    mode = "RGBA" if has_alpha else "RGB"
    try:
        if image.mode.startswith("I;16") or image.mode == "I":
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
    except ValueError as exc:
        raise BadImage(f"unsupported colour mode {image.mode}: {exc}", item=item) from None


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
    options = {"icc_profile": icc_profile} if icc_profile else {}
    with _in_memory_file() as buffer:
        picture.save(
            buffer,
            "JPEG",
            quality=settings.jpeg_quality,
            progressive=True,
            optimize=True,
            **options,
        )
        buffer.seek(0)
        return buffer.read()


def _in_memory_file() -> IO[bytes]:
    """A file in memory with a descriptor of its own (Linux's memfd), else a BytesIO. Pillow
    encodes a JPEG into a Python buffer holding the interpreter lock throughout, but releases it
    while it encodes into a file descriptor: the same bytes, and a run's render threads no
    longer take turns at every JPEG (3 threads on 2 cores: 1.8x one, against 0.7x)."""
    try:
        descriptor = os.memfd_create("rendition", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux, or not allowed here
        return io.BytesIO()
    return open(descriptor, "w+b")  # the caller's `with` closes it


def _sniff(head: bytes) -> str | None:
    for offset, magic, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    text = head.lstrip().lower()
    if text.startswith((b"<svg", b"<?xml")):
        return "SVG"
    return None


def _unsupported_reason(kind: str) -> str:
    accepted = ", ".join(sorted(ACCEPTED_FORMATS - {"MPO"}))
    return f"unsupported format: {kind} (accepted: {accepted})"


def _unidentified_reason(kind: str | None, suffix: str) -> str:
    if kind is None:
        named = f" although it is named {suffix}" if suffix else ""
        return f"not an image: its content matches no image format{named}"
    if kind in _ACCEPTED_KINDS:
        return f"corrupt {kind} data: the header cannot be read"
    return _unsupported_reason(kind)


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
