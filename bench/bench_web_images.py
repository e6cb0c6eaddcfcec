"""web_images: this automation's image step against pyvips in-process, ImageMagick's `convert` and
`vipsthumbnail`.

Every tool gets the same camera-size JPEGs and makes the same six files per photo: 1600, 800 and
400 px wide, each as WebP (quality 80) and progressive JPEG (quality 82), upright by EXIF
orientation, metadata stripped. Throughput is wall-clock images per second over the whole set;
quality is the SSIM (luminance) of each tool's 800 px JPEG against a Lanczos downscale that
Pillow makes from the full decode of the upright original.

The photos are scikit-image's sample photographs, cropped, flipped, brightened or darkened,
upscaled to 12 MP and given a sensor-like grain (so they decode and compress like camera files,
about 3.5 MB each), with camera EXIF and GPS; every tenth is stored turned with orientation 6, as
phones do, and every tenth is a portrait. They are made once and kept in bench/.data/.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvips
import skimage
from PIL import Image, ImageOps, features
from skimage.metrics import structural_similarity

from automation_pipelines.automations.web_images.images import ImageSettings, render_image
from bench.photos import LANDSCAPE, camera_photos
from bench.tables import load_average, print_columns

COUNT = int(os.environ.get("BENCH_WEB_IMAGES_COUNT", "100"))
DATA = Path(__file__).parent / ".data" / "web_images"
SOURCES = DATA / "sources-v1"  # bump the version when the recipe changes
OUTPUTS = DATA / "out"
SETTINGS = ImageSettings()
SSIM_TARGET = 0.98
SPEEDUP_TARGET = 4.0  # x ImageMagick
PYVIPS_TARGET = 1.0  # x pyvips in one process, the library a Python user would pick
WORKERS = 2


def main() -> None:
    started = time.perf_counter()
    convert, vipsthumbnail = real_binary("convert"), real_binary("vipsthumbnail")
    print(describe_machine(convert, vipsthumbnail), flush=True)
    sources = make_sources()
    megabytes = sum(p.stat().st_size for p in sources) / 1e6
    print(
        f"{len(sources)} photos, {LANDSCAPE[0]}x{LANDSCAPE[1]} (12 MP), "
        f"{megabytes / len(sources):.1f} MB each on average, in {SOURCES}",
        flush=True,
    )
    for path in sources:  # every tool reads from the page cache, none from the disk
        path.read_bytes()

    shutil.rmtree(OUTPUTS, ignore_errors=True)
    tools: list[tuple[str, Callable[[list[Path], Path], None]]] = [
        ("this step, 1 process", run_step),
        (f"this step, {WORKERS} processes", run_step_in_processes),
        ("pyvips, 1 process", run_pyvips),
        ("ImageMagick convert", lambda files, out: run_imagemagick(convert, files, out)),
        ("vipsthumbnail, per photo", lambda files, out: run_vips(vipsthumbnail, files, out)),
        ("vipsthumbnail, batched", lambda files, out: run_vips_batched(vipsthumbnail, files, out)),
    ]
    results: list[Result] = []
    for name, run in tools:
        out = OUTPUTS / slug(name)
        out.mkdir(parents=True)
        began = time.perf_counter()
        run(sources, out)
        seconds = time.perf_counter() - began
        check_outputs(name, sources, out)
        total = sum(p.stat().st_size for p in out.iterdir()) / 1e6
        results.append(Result(name, out, len(sources) / seconds, total))
        print(f"  {name}: {seconds:.1f} s", flush=True)

    similarity = measure_ssim(sources, [r.out for r in results])
    for result, scores in zip(results, similarity, strict=True):
        result.ssim_mean, result.ssim_min = float(np.mean(scores)), float(np.min(scores))
    shutil.rmtree(OUTPUTS, ignore_errors=True)
    print_table(results)
    print(
        "this step renders one photo at a time and encodes the largest WebP on a second thread;\n"
        "pyvips makes each width with thumbnail() from the file (shrink-on-load, EXIF turn);\n"
        "ImageMagick (OpenMP) and libvips thread by themselves; each tool's time includes its\n"
        "own start-up (one convert per photo, one vipsthumbnail per output or per batch).\n"
    )
    print_targets(results)
    print(
        f"(whole benchmark: {time.perf_counter() - started:.0f} s; load average at the end: "
        f"{load_average()})"
    )


@dataclass
class Result:
    tool: str
    out: Path
    images_per_second: float
    output_mb: float
    ssim_mean: float = float("nan")
    ssim_min: float = float("nan")


# ---------------------------------------------------------------- the tools


def run_step(files: list[Path], out: Path) -> None:
    for source in files:
        render_image(source, out, Path(source.name), SETTINGS)


def _render_one(source: Path, out: Path) -> None:
    render_image(source, out, Path(source.name), SETTINGS)


def run_step_in_processes(files: list[Path], out: Path) -> None:
    with ProcessPoolExecutor(WORKERS) as pool:
        list(pool.map(_render_one, files, [out] * len(files)))


def run_pyvips(files: list[Path], out: Path) -> None:
    """pyvips as its documentation recommends for thumbnails: `thumbnail()` from the file per
    width, so libvips shrinks while it decodes and turns by EXIF orientation; one photo at a
    time, libvips's own threads inside."""
    jpeg = {"Q": SETTINGS.jpeg_quality, "interlace": True, "optimize_coding": True}
    webp = {"Q": SETTINGS.webp_quality}
    for source in files:
        for width in SETTINGS.widths:
            # Rendered once into memory, then written twice: a second pass over the streamed
            # decode would need the file read again.
            picture = pyvips.Image.thumbnail(str(source), width, height=10_000_000).copy_memory()
            picture.write_to_file(str(out / f"{source.stem}-{width}.jpg"), strip=True, **jpeg)
            picture.write_to_file(str(out / f"{source.stem}-{width}.webp"), strip=True, **webp)


def imagemagick_command(convert: str, source: Path, out: Path) -> list[str]:
    """One `convert` per photo, decoding it once and writing all six files, the way such a
    script is usually written: +clone per width, -write per format, nothing else tuned
    (no `-define jpeg:size`, so the whole 12 MP are decoded)."""
    command = [convert, str(source), "-auto-orient", "-strip"]
    for width in SETTINGS.widths:
        command += ["(", "+clone", "-resize", f"{width}x"]
        command += ["-quality", str(SETTINGS.jpeg_quality), "-interlace", "Plane"]
        command += ["-write", str(out / f"{source.stem}-{width}.jpg")]
        command += ["-quality", str(SETTINGS.webp_quality)]
        command += ["-write", str(out / f"{source.stem}-{width}.webp"), "+delete", ")"]
    return [*command, "null:"]


def run_imagemagick(convert: str, files: list[Path], out: Path) -> None:
    for source in files:
        subprocess.run(imagemagick_command(convert, source, out), check=True)


def vips_outputs(out: Path) -> list[tuple[int, str]]:
    """(width, -o pattern) for the six files; vipsthumbnail writes one format and size a call,
    shrinking on load and turning by EXIF orientation by itself."""
    jpeg = f"Q={SETTINGS.jpeg_quality},interlace,optimize_coding,strip"
    webp = f"Q={SETTINGS.webp_quality},strip"
    return [
        (width, str(out / f"%s-{width}.{suffix}[{options}]"))
        for width in SETTINGS.widths
        for suffix, options in (("webp", webp), ("jpg", jpeg))
    ]


def run_vips(vipsthumbnail: str, files: list[Path], out: Path) -> None:
    """Six calls per photo, as an automation handling one file at a time would make them."""
    for source in files:
        for width, pattern in vips_outputs(out):
            command = [vipsthumbnail, str(source), "--size", f"{width}x", "-o", pattern]
            subprocess.run(command, check=True)


def run_vips_batched(vipsthumbnail: str, files: list[Path], out: Path) -> None:
    """Six calls for the whole set, as a shell loop over a folder would: no start-up per photo."""
    for width, pattern in vips_outputs(out):
        command = [vipsthumbnail, *map(str, files), "--size", f"{width}x", "-o", pattern]
        subprocess.run(command, check=True)


def made_by(out: Path) -> dict[str, Path]:
    """A tool's files by `<stem>-<width>.<suffix>`; this step's versioned names
    (`<name>-<width>.<version>.<suffix>`) read the same way."""
    found = {}
    for path in out.iterdir():
        match = re.fullmatch(r"(.+?)(?:\.jpg)?-(\d+)(?:\.[0-9a-f]+)?\.(webp|jpg)", path.name)
        if match:
            found[f"{match[1]}-{match[2]}.{match[3]}"] = path
    return found


def check_outputs(tool: str, files: list[Path], out: Path) -> None:
    """Each tool made the same six files per photo, at the same widths."""
    expected = {
        f"{p.stem}-{w}.{s}" for p in files for w in SETTINGS.widths for s in ("webp", "jpg")
    }
    made = made_by(out)
    if set(made) != expected:
        missing = sorted(expected - set(made))[:3]
        raise SystemExit(f"{tool} did not make the expected files (missing e.g. {missing})")
    for width in SETTINGS.widths:
        with Image.open(made[f"{files[0].stem}-{width}.jpg"]) as image:
            if image.width != width:
                raise SystemExit(f"{tool} wrote its {width} px JPEG {image.width} px wide")


# ---------------------------------------------------------------- quality


def measure_ssim(files: list[Path], outs: list[Path]) -> list[list[float]]:
    """SSIM of every tool's 800 px JPEG of every photo, tools by photos."""
    with ProcessPoolExecutor(WORKERS) as pool:
        per_photo = list(pool.map(_ssim_of_photo, files, [outs] * len(files)))
    return [list(scores) for scores in zip(*per_photo, strict=True)]


def jpeg_800(out: Path, source: Path) -> Path:
    """A tool's 800 px JPEG of `source`."""
    return made_by(out)[f"{source.stem}-800.jpg"]


def _ssim_of_photo(source: Path, outs: list[Path]) -> list[float]:
    with Image.open(source) as image:
        image.load()  # the full decode, no draft
        upright = ImageOps.exif_transpose(image).convert("RGB")
    references: dict[tuple[int, int], np.ndarray] = {}
    scores = []
    for out in outs:
        with Image.open(jpeg_800(out, source)) as rendition:
            got = np.asarray(rendition.convert("L"))
            size = rendition.size
        if size not in references:
            reference = upright.resize(size, Image.Resampling.LANCZOS)
            references[size] = np.asarray(reference.convert("L"))
        scores.append(structural_similarity(references[size], got, data_range=255))
    return scores


# ---------------------------------------------------------------- the photos


def make_sources() -> list[Path]:
    """The benchmark photos, made once (in parallel) and reused while the recipe is the same."""
    return camera_photos(SOURCES, COUNT, workers=WORKERS)


# ---------------------------------------------------------------- reporting


def real_binary(name: str) -> str:
    """The first compiled `name` on PATH: a wrapper script in front of it (some machines have
    one for convert) would add an interpreter start to every call and slow the tool down."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            with candidate.resolve().open("rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    return str(candidate)
    raise SystemExit(f"{name} (a compiled one) is not on PATH: `make bench` installs it")


def describe_machine(convert: str, vipsthumbnail: str) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    magick = subprocess.run([convert, "-version"], capture_output=True, text=True).stdout
    vips = subprocess.run([vipsthumbnail, "--vips-version"], capture_output=True, text=True)
    return "\n".join(
        [
            f"machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}; "
            f"load average at start: {load_average()}",
            f"this step: Pillow {Image.__version__}, libjpeg-turbo {features.version('jpg')}, "
            f"libwebp {features.version('webp')}; scikit-image {skimage.__version__} for SSIM",
            f"pyvips {pyvips.__version__} on libvips "
            f"{'.'.join(str(pyvips.version(i)) for i in range(3))}",
            f"ImageMagick: {magick.splitlines()[0].removeprefix('Version: ')}",
            f"vipsthumbnail: {vips.stdout.strip()}",
        ]
    )


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def print_table(results: list[Result]) -> None:
    magick = next(r for r in results if r.tool.startswith("ImageMagick"))
    step = results[0]
    header = ("tool", "images/s", "vs ImageMagick", "vs this step", "output MB", "SSIM 800 JPEG")
    rows = [
        (
            r.tool,
            f"{r.images_per_second:.2f}",
            f"{r.images_per_second / magick.images_per_second:.2f}x",
            f"{r.images_per_second / step.images_per_second:.2f}x",
            f"{r.output_mb:.1f}",
            f"{r.ssim_mean:.4f} (min {r.ssim_min:.4f})",
        )
        for r in results
    ]
    print_columns(header, rows)
    print()


def print_targets(results: list[Result]) -> None:
    step, magick = results[0], next(r for r in results if r.tool.startswith("ImageMagick"))
    library = next(r for r in results if r.tool.startswith("pyvips"))
    speedup = step.images_per_second / magick.images_per_second
    fast = speedup >= SPEEDUP_TARGET and step.ssim_mean >= SSIM_TARGET
    versus_pyvips = step.images_per_second / library.images_per_second
    close = versus_pyvips >= PYVIPS_TARGET and step.ssim_mean >= SSIM_TARGET
    print(
        f"target: >= {SPEEDUP_TARGET:.0f}x ImageMagick at SSIM >= {SSIM_TARGET}: "
        f"{'MET' if fast else 'NOT MET'} ({step.tool}: {speedup:.2f}x, "
        f"SSIM {step.ssim_mean:.4f})"
    )
    print(
        f"target: >= {PYVIPS_TARGET:.1f}x {library.tool} at SSIM >= {SSIM_TARGET}: "
        f"{'MET' if close else 'NOT MET'} ({versus_pyvips:.2f}x; "
        f"pyvips SSIM {library.ssim_mean:.4f})"
    )
