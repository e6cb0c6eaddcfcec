"""Real photographs for tests: scikit-image's bundled samples, upscaled, with EXIF (camera, GPS,
orientation) and an ICC profile written the way cameras do."""

from __future__ import annotations

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
