"""Real photographs for tests: scikit-image's bundled samples, upscaled, with EXIF (camera, GPS,
orientation) and an ICC profile written the way cameras do; and where their renditions are."""

from __future__ import annotations

import glob
import re
from pathlib import Path

from PIL import Image, ImageCms
from skimage import data

ORIENTATION, MAKE, MODEL, GPS_IFD = 0x0112, 0x010F, 0x0110, 0x8825


def photo(
    path: Path,
    width: int = 2400,
    *,
    sample: str = "astronaut",
    orientation: int | None = None,
    gps: bool = True,
    icc: bool = True,
) -> Path:
    """Write a JPEG of `width` px made from a real sample photograph, with camera metadata."""
    image = Image.fromarray(getattr(data, sample)()).convert("RGB")
    height = round(image.height * width / image.width)
    image = image.resize((width, height), Image.Resampling.LANCZOS)
    exif = Image.Exif()
    exif[MAKE], exif[MODEL] = "TestCam", "Model 9"
    if orientation:
        exif[ORIENTATION] = orientation
    if gps:
        exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    extra = {}
    if icc:
        extra["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=92, exif=exif.tobytes(), **extra)
    return path


def rendition(folder: Path, source_name: str, width: int, ext: str) -> Path:
    """The one rendition of the source file `source_name` at `width` in `folder`: its name
    carries the source's whole name and a version (`IMG_1.jpg-800.3f9a2c1b7e.webp`)."""
    found = sorted(folder.glob(f"{glob.escape(source_name)}-{width}.*.{ext}"))
    assert len(found) == 1, f"expected one {source_name} {width} px .{ext} in {folder}: {found}"
    return found[0]


def rendition_pattern(source_name: str, width: int, ext: str) -> re.Pattern:
    return re.compile(rf"{re.escape(source_name)}-{width}\.[0-9a-f]{{10}}\.{ext}")
