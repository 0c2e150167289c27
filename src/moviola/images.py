"""Pictures as RGB arrays, without torch (the API server normalises uploads with it, and never loads torch).

    rgb = pil_to_rgb(Image.open(path))   # (H, W, 3) uint8: EXIF orientation, alpha onto black, any mode
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, ImageOps

# pixels: images to condition on may be decoded (JPEG's own 1/2 to 1/8 reduction) and stored (the server's
# uploads) this small: twice the largest side a model makes, so the fit to a clip still downscales real detail
IMAGE_DECODE_SIDE = 1024

# The largest baseline JPEG opened to be decoded reduced: the largest phone sensors (200 megapixels) with room to
# spare. The reduction bounds what is decoded, not what a header may claim (a 0.5 MB file can say 12000x12000).
JPEG_HEADER_PIXELS = 300_000_000

# What Moviola opens as a picture (Pillow's format names; JPEG takes MPO too): what cameras, phones and editors
# write, each decoded by Pillow itself. Not EPS, which Pillow hands to Ghostscript (an interpreter, and a record
# of exploits) when one is installed: an uploaded image must never run a program.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "PPM", "TGA", "QOI", "ICO")


def image_formats() -> tuple[str, ...]:
    """IMAGE_FORMATS that this Pillow has (AVIF came with Pillow 11.2; naming a format it lacks is a KeyError in
    Image.open): what to pass as ``Image.open(..., formats=)``."""
    global _FORMATS
    if _FORMATS is None:
        Image.init()
        _FORMATS = tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)
    return _FORMATS


_FORMATS: tuple[str, ...] | None = None


def image_suffixes() -> set[str]:
    """File name suffixes (".jpg", ".jfif", ".qoi", ...) that this Pillow reads as one of IMAGE_FORMATS."""
    formats = set(image_formats())
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in formats or fmt == "MPO"}


def _deep_gray_to_rgb(gray: np.ndarray, mode: str) -> np.ndarray:
    """A grayscale image deeper than 8 bits (PIL modes I;16*, I, F) as (H, W, 3) uint8: 16-bit scaled by
    255 / 65535; 32-bit integers likewise unless they fit in 8 bits; floats taken as [0, 1] unless larger."""
    x = gray.astype(np.float64)
    if mode == "F":
        scale = 255.0 if np.nanmax(x, initial=0.0) <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0 if mode.startswith("I;16") or np.max(x, initial=0) > 255 else 1.0
    out = np.nan_to_num(x * scale).round().clip(0, 255).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=-1)


def open_image(fp, *, max_side: int | None = None) -> Image.Image:
    """Image.open of a path or a binary file object, in IMAGE_FORMATS only. With ``max_side``, a JPEG is set to
    decode at 1/2, 1/4 or 1/8 of its size (never below ``max_side`` a side) *before* the decompression-bomb check,
    which then applies to what is decoded: Image.open checks the header's size, and had refused a 200-megapixel
    phone photo (Samsung's 16320x12240) that decodes to 2040x1530 here, and warned of a "DOS attack" over a
    108-megapixel one. Other formats are checked as Image.open checks them, without the warning's traceback-like
    lines (past twice the limit they are refused). The header still bounds a JPEG: a baseline one past
    JPEG_HEADER_PIXELS, a progressive one (whose decoder holds coefficients for the whole picture, however reduced)
    past Pillow's limit (89 megapixels: about 170 MB of coefficients), are refused. Raises what Image.open raises."""
    if max_side is not None and _is_jpeg(fp):
        from PIL import JpegImagePlugin, UnidentifiedImageError

        try:
            im = JpegImagePlugin.JpegImageFile(fp)  # the JPEG plugin itself: Image.open's size check comes below
        except SyntaxError as e:  # what Image.open turns into UnidentifiedImageError (a 400, not a 500, upstream)
            raise UnidentifiedImageError(f"cannot identify image file ({e})") from None
        w, h = im.size  # the header's
        limit = Image.MAX_IMAGE_PIXELS if im.info.get("progressive") else JPEG_HEADER_PIXELS
        im.draft("RGB", (max_side, max_side))  # the decoder's own reduction; im.size is what it will decode
        if w * h > limit or im.width * im.height > 2 * Image.MAX_IMAGE_PIXELS:
            im.close()
            raise Image.DecompressionBombError(f"{w}x{h} pixels is more than a JPEG may be here "
                                               f"({limit / 1e6:.0f} megapixels)")
        return im
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(fp, formats=image_formats())


def _is_jpeg(fp) -> bool:
    """Whether a path or a seekable file object starts as a JPEG does (SOI and a marker)."""
    if hasattr(fp, "read"):
        at = fp.tell()
        head = fp.read(3)
        fp.seek(at)
    else:
        try:
            with open(fp, "rb") as f:
                head = f.read(3)
        except OSError:
            return False  # Image.open says what is wrong with it
    return head == b"\xff\xd8\xff"


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """A PIL image as (H, W, 3) uint8 RGB, as read_image reads files: EXIF orientation applied, alpha onto black,
    palette, grayscale (16-bit and float too), CMYK and YCbCr converted (np.asarray of a palette image would be
    its indices)."""
    im = ImageOps.exif_transpose(im)
    if im.mode.startswith(("I", "F")):  # 16-bit, 32-bit or float grayscale (PIL would clip at 255)
        return _deep_gray_to_rgb(np.asarray(im), im.mode)
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return np.array(im.convert("RGB"))
