"""A messy image folder, generated: good images, odd-but-valid ones and many kinds of bad file.

`build_corpus(folder)` writes everything and returns `Corpus(good, bad)`: the relative paths that
must load, and for each bad one a few words its skip reason must contain. All files are small
(the largest is under 1 MB) even where they claim 10 000 × 10 000 pixels or more.
"""

from __future__ import annotations

import io
import os
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin


@dataclass
class Corpus:
    good: dict[str, str] = field(default_factory=dict)  # relative path → what it is
    bad: dict[str, str] = field(default_factory=dict)  # relative path → words in the skip reason
    ignored: list[str] = field(default_factory=list)  # not images by name (never looked at)


def photo(size: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([200 * x + 20, 150 * y + 50, 120 + 60 * np.sin(6 * x)], axis=-1)
    rgb += rng.normal(0, 10, rgb.shape)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, idat: bytes = b"", colour_type: int = 2) -> bytes:
    """A PNG whose header claims width × height pixels, with whatever IDAT data is given."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bmp_claiming(width: int, height: int) -> bytes:
    """A BMP header claiming width × height 24-bit pixels, with a few bytes of data."""
    pixels = b"\x00" * 64
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


def build_corpus(folder: Path, big: bool = True) -> Corpus:
    folder.mkdir(parents=True, exist_ok=True)
    corpus = Corpus()
    noise = random.Random(5).randbytes  # fixed bytes: the same corpus (and reasons) on every run

    def good(name: str, data: bytes, what: str) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        corpus.good[name] = what

    def bad(name: str, data: bytes, reason: str) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        corpus.bad[name] = reason

    base = photo()
    jpeg = encoded(base, "JPEG", quality=90)
    png = encoded(base, "PNG")

    # ---- good, and good-but-unusual: every one of these must load
    for i in range(6):
        good(f"good/cat{i}.jpg", encoded(photo(seed=i), "JPEG"), "JPEG")
        good(f"good/cat{i}.png", encoded(photo(seed=10 + i), "PNG"), "PNG")
    good("good/UPPER.JPEG", jpeg, "upper-case extension")
    good("good/cat.webp", encoded(base, "WEBP"), "WebP")
    good("good/cat.bmp", encoded(base, "BMP"), "BMP")
    good("odd/cmyk.jpg", encoded(base.convert("CMYK"), "JPEG"), "CMYK JPEG")
    good("odd/grey.jpg", encoded(base.convert("L"), "JPEG"), "greyscale JPEG")
    good("odd/progressive.jpg", encoded(base, "JPEG", progressive=True), "progressive JPEG")
    sixteen = (np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 28)
    good("odd/grey16.png", encoded(Image.fromarray(sixteen), "PNG"), "16-bit greyscale PNG")
    good("odd/palette.png", encoded(base.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), "palette PNG")
    palette_t = base.convert("P", palette=Image.Palette.ADAPTIVE)
    palette_t.info["transparency"] = 0
    good("odd/palette-transparent.png", encoded(palette_t, "PNG", transparency=0), "palette PNG with transparency")
    good("odd/la.png", encoded(base.convert("LA"), "PNG"), "LA PNG")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    good("odd/rgba.png", encoded(rgba, "PNG"), "RGBA PNG")
    good("odd/bilevel.png", encoded(base.convert("1"), "PNG"), "1-bit PNG")
    frames = [photo(seed=s) for s in range(3)]
    good("odd/animated.gif", encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0), "animated GIF")
    good("odd/animated.png", encoded(frames[0], "PNG", save_all=True, append_images=frames[1:]), "animated PNG")
    good("odd/one-pixel.png", encoded(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"), "1×1 PNG")
    good("odd/one-pixel.jpg", encoded(Image.new("RGB", (1, 1), (30, 200, 30)), "JPEG"), "1×1 JPEG")
    good("odd/one-by-500.png", encoded(Image.new("RGB", (1, 500), (30, 30, 200)), "PNG"), "1×500 strip")
    good("odd/tiff-named-png.png", encoded(base, "TIFF"), "a TIFF with a .png name")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated
    good("odd/exif-rotated.jpg", encoded(base, "JPEG", exif=exif), "EXIF orientation 6")
    exif_bad = Image.Exif()
    exif_bad[0x0112] = 99  # not an orientation
    good("odd/exif-nonsense.jpg", encoded(base, "JPEG", exif=exif_bad), "EXIF orientation 99")
    good("odd/deep/deeper/deepest/cat.png", png, "nested folders")
    good("odd/name with spaces ünïcødé.png", png, "unusual file name")

    # ---- bad: each must be skipped with its reason
    bad("bad/empty.jpg", b"", "empty")
    bad("bad/empty.png", b"", "empty")
    bad("bad/truncated-half.jpg", jpeg[: len(jpeg) // 2], "corrupt")
    bad("bad/truncated-header.jpg", jpeg[:20], "")
    bad("bad/truncated.png", png[: len(png) // 2], "")
    bad("bad/truncated-after-ihdr.png", png[:33], "")
    bad("bad/truncated.gif", encoded(base, "GIF")[:40], "")
    bad("bad/truncated.webp", encoded(base, "WEBP")[:60], "")
    bad("bad/random.jpg", noise(5000), "not a recognised image")
    bad("bad/random.png", noise(5000), "not a recognised image")
    bad("bad/random.gif", noise(300), "not a recognised image")
    bad("bad/random.webp", noise(300), "not a recognised image")
    bad("bad/text.jpg", b"this is not a cat\n" * 40, "not a recognised image")
    bad("bad/html.png", b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not a recognised image")
    bad("bad/pdf.png", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", "not a recognised image")
    bad("bad/jpeg-magic-only.jpg", b"\xff\xd8\xff\xe0" + noise(200), "")
    bad("bad/png-magic-only.png", b"\x89PNG\r\n\x1a\n" + noise(200), "")
    broken_crc = bytearray(png)
    broken_crc[29] ^= 0xFF  # IHDR CRC
    bad("bad/bad-crc.png", bytes(broken_crc), "")
    bad("bad/idat-garbage.png", png_claiming(48, 48, noise(500)), "")
    bad("bad/zero-size.png", png_claiming(0, 0, zlib.compress(b"")), "")
    # claims of gigantic images (decompression bombs): refused before any pixel is decoded
    bad("bomb/10000x10000.png", png_claiming(10_000, 10_000, zlib.compress(b"\x00" * 30_001)), "too large")
    bad("bomb/65535x65535.png", png_claiming(65_535, 65_535, zlib.compress(b"\x00" * 1000)), "too large")
    bad("bomb/bmp-50000x50000.bmp", bmp_claiming(50_000, 50_000), "too large")
    bad("bomb/9000x9000-zeros.png", png_claiming(9_000, 9_000, zlib.compress(b"\x00" * (9_000 * 3 + 1) * 64, 9)), "too large")
    text_bomb = PngImagePlugin.PngInfo()
    text_bomb.add_text("comment", "A" * 20_000_000, zip=True)  # 20 MB of text in ~20 kB
    bad("bomb/ztxt-bomb.png", encoded(base, "PNG", pnginfo=text_bomb), "")
    if big:
        # A real 10000×10000 image (1-bit, 12.5 MB of pixels in a small file): too large to train on.
        real = Image.new("1", (10_000, 10_000), 1)
        bad("bomb/real-10000x10000.png", encoded(real, "PNG", optimize=False), "too large")

    # ---- things that are not files: symlink loops, broken links, a FIFO, a folder named .png
    (folder / "links").mkdir()
    os.symlink("loop-b.png", folder / "links/loop-a.png")
    os.symlink("loop-a.png", folder / "links/loop-b.png")
    corpus.bad["links/loop-a.png"] = "symlink loop"
    corpus.bad["links/loop-b.png"] = "symlink loop"
    os.symlink("nowhere.png", folder / "links/dangling.png")
    corpus.bad["links/dangling.png"] = "broken symlink"
    os.symlink("..", folder / "links/parent")  # a directory loop: must not be walked forever
    os.symlink(os.path.relpath(folder / "good/cat0.png", folder / "links"), folder / "links/to-good.png")
    corpus.good["links/to-good.png"] = "symlink to a good file"
    os.mkfifo(folder / "links/fifo.png")
    corpus.bad["links/fifo.png"] = "not a regular file"
    os.symlink("/dev/zero", folder / "links/dev-zero.jpg")
    corpus.bad["links/dev-zero.jpg"] = "not a regular file"
    (folder / "links/folder.png").mkdir()

    # ---- not images by name: never opened
    for name, data in (("notes.txt", b"hello"), ("cat.png.txt", png), ("README", b"x"), ("model.safetensors", b"\x00" * 64)):
        (folder / name).write_bytes(data)
        corpus.ignored.append(name)
    return corpus
