"""The benchmarks' photographs: scikit-image's sample pictures cropped, graded and grained into
camera-size JPEGs with what a camera writes (make, model, date, GPS; one in ten turned by EXIF
orientation, one in ten portrait), made once per folder and reused while the recipe is the same
(name the folder by its recipe's version)."""

from __future__ import annotations

import os
import random
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from PIL import Image, ImageChops, ImageEnhance
from skimage import data as samples

LANDSCAPE = (4240, 2832)  # 12 MP, 3:2, a common camera size
GRAIN_SIGMA = 5  # luminance grain of a camera at moderate ISO; it sets file size and decode cost
SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")

MAKE, MODEL, ORIENTATION, DATETIME_ORIGINAL, EXIF_IFD, GPS_IFD = (
    0x010F,
    0x0110,
    0x0112,
    0x9003,
    0x8769,
    0x8825,
)


def camera_photos(
    folder: Path, count: int, *, size: tuple[int, int] = LANDSCAPE, workers: int = 2
) -> list[Path]:
    """`folder`/photo-NNN.jpg for NNN below `count`, making (in parallel) those not there yet."""
    paths = [folder / f"photo-{index:03d}.jpg" for index in range(count)]
    missing = [index for index, path in enumerate(paths) if not path.exists()]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        print(f"making {len(missing)} benchmark photos in {folder} (once) ...", flush=True)
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(partial(camera_photo, folder, size=size), missing))
    return paths


def _sample(name: str) -> Image.Image:
    if name == "motorcycle":
        return Image.fromarray(samples.stereo_motorcycle()[0])
    return Image.fromarray(getattr(samples, name)())


def camera_photo(folder: Path, index: int, *, size: tuple[int, int] = LANDSCAPE) -> Path:
    """Photo number `index` of the recipe at `size` (landscape; upright size for the portrait
    and turned ones), written whole or not at all."""
    rng = random.Random(index)
    picture = _sample(SAMPLES[index % len(SAMPLES)]).convert("RGB")
    turned, portrait = index % 10 == 3, index % 10 == 7
    size = size[::-1] if turned or portrait else size  # upright size
    # The largest crop of the sample with the photo's aspect ratio, 70-100% of it, anywhere.
    aspect = size[0] / size[1]
    width = min(picture.width, round(picture.height * aspect))
    scale = rng.uniform(0.7, 1.0)
    crop_w, crop_h = round(width * scale), round(width * scale / aspect)
    left = rng.randint(0, picture.width - crop_w)
    top = rng.randint(0, picture.height - crop_h)
    picture = picture.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    picture = ImageEnhance.Brightness(picture).enhance(rng.uniform(0.8, 1.2))
    picture = picture.resize(size, Image.Resampling.BICUBIC)
    grain = Image.effect_noise(size, GRAIN_SIGMA)
    picture = ImageChops.add(picture, Image.merge("RGB", (grain, grain, grain)), 1.0, -128)

    exif = Image.Exif()
    exif[MAKE], exif[MODEL] = "BenchCam", "Model 12"
    exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = f"2024:06:{1 + index % 28:02d} 12:00:00"
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (41.0, 53.0, 24.0), 3: "E", 4: (12.0, 29.0, 32.0)})
    if turned:  # the sensor's landscape pixels, to be turned upright by the viewer
        exif[ORIENTATION] = 6
        picture = picture.transpose(Image.Transpose.ROTATE_90)
    target = folder / f"photo-{index:03d}.jpg"
    temp = target.with_name(f".{target.name}.tmp")
    picture.save(temp, "JPEG", quality=92, exif=exif.tobytes())
    os.replace(temp, target)
    return target
