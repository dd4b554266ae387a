"""Shannon entropy of a PixelRTS stream, block by block, and where each block lies in the image.

A block is ``block_size`` consecutive bytes of the curve-ordered stream, i.e. ``block_size / 4``
consecutive Hilbert-curve positions. Aligned runs of ``4**k`` curve positions fill aligned
``2**k × 2**k`` squares of the grid, and the curve of a grid coarsened by ``2**k`` is the curve of
the smaller grid. So when ``c² | block_size/4`` for a power of two ``c``, every ``c × c`` cell of the
image lies in exactly one block, and the image-space map is drawn on the ``(n/c)²`` cell grid
instead of per pixel (for the default 4096-byte block, c = 32: a 4096² image gives a 128² map).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_BLOCK_SIZE = 4096

# Bands of bits per byte (upper bounds, exclusive) as the guide describes them.
BANDS: tuple[tuple[str, float], ...] = (
    ("zeros", 0.5),  # zeros, padding, constant fills
    ("low", 3.5),  # sparse structures, tables of small numbers
    ("text", 5.5),  # text, headers, data tables
    ("code", 7.2),  # machine code, mixed data
    ("compressed", 8.0 + 1e-9),  # compressed or encrypted data
)

_CHUNK_BYTES = 1 << 18  # bytes of stream per bincount call: the keys stay in cache (measured fastest)
_LUT_LIMIT = 1 << 20  # largest byte count per block served from the c·log2(c) lookup table


def entropy_band(bits_per_byte: float) -> str:
    """Name of the band (zeros, low, text, code, compressed) a block entropy falls in."""
    for name, upper in BANDS:
        if bits_per_byte < upper:
            return name
    return BANDS[-1][0]


def block_histograms(stream: np.ndarray, block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
    """Byte histograms, shape (blocks, 256) int32, of consecutive ``block_size``-byte blocks.

    One ``np.bincount`` over ``block·256 + byte`` per megabyte of stream gives every histogram in
    that chunk at once; the last block may be shorter than ``block_size``.
    """
    data = np.ascontiguousarray(stream, dtype=np.uint8).reshape(-1)
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    count = -(-data.size // block_size)
    hist = np.zeros((count, 256), dtype=np.int32 if block_size < 1 << 31 else np.int64)
    full = data.size // block_size
    per = max(1, _CHUNK_BYTES // block_size)
    # uint16 keys when they fit: half the memory traffic of the bincount input
    key_type = np.uint16 if per * 256 <= 1 << 16 else np.intp
    offsets = (np.arange(per, dtype=np.intp)[:, None] * 256).astype(key_type)
    for first in range(0, full, per):
        k = min(per, full - first)
        keys = data[first * block_size : (first + k) * block_size].reshape(k, block_size) + offsets[:k]
        hist[first : first + k] = np.bincount(keys.ravel(), minlength=k * 256).reshape(k, 256)
    if full < count:
        hist[full] = np.bincount(data[full * block_size :], minlength=256)
    return hist


def entropy_from_histograms(hist: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits per byte (0..8) of each row of a (blocks, 256) histogram array."""
    hist = np.asarray(hist)
    totals = hist.sum(axis=1)
    out = np.zeros(hist.shape[0], dtype=np.float64)
    nonempty = totals > 0
    if not nonempty.any():
        return out
    h = hist[nonempty]
    t = totals[nonempty].astype(np.float64)
    # H = log2(T) - (1/T)·Σ c·log2(c): exact 0 for a constant block, exact 8 for a uniform one.
    top = int(h.max())
    if top <= _LUT_LIMIT:
        counts = np.arange(top + 1, dtype=np.float64)
        table = np.zeros(top + 1)
        table[1:] = counts[1:] * np.log2(counts[1:])
        clog = table[h].sum(axis=1)
    else:
        hf = h.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            clog = np.where(hf > 0, hf * np.log2(np.where(hf > 0, hf, 1.0)), 0.0).sum(axis=1)
    ent = np.log2(t) - clog / t
    out[nonempty] = np.clip(ent, 0.0, 8.0)
    return out


def block_entropy(stream: np.ndarray, block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
    """Shannon entropy (bits per byte) of each ``block_size``-byte block of ``stream``, in order."""
    return entropy_from_histograms(block_histograms(stream, block_size))


def cell_size(grid_size: int, block_size: int) -> int:
    """Side of the largest aligned square cell of an n×n grid that always lies inside one block."""
    if block_size % 4:
        return 1
    positions = block_size // 4
    c = 1
    while c * 2 <= grid_size and positions % ((c * 2) ** 2) == 0:
        c *= 2
    return c


def block_index_grid(grid_size: int, block_size: int) -> tuple[np.ndarray, int]:
    """(cells, c): the block index of every c×c cell of an n×n grid, and the cell side c."""
    from healing.pixelrts import curve_index_grid

    c = cell_size(grid_size, block_size)
    coarse = curve_index_grid(grid_size // c).astype(np.int64)
    return coarse * (c * c) * 4 // block_size, c


@dataclass
class EntropyMap:
    """Block entropies of a stream and their picture in image space.

    blocks:     entropy of each block, bits per byte, in curve order.
    image:      (n/c, n/c) float32 map, each cell the entropy of the block it lies in (c = ``cell``);
                for images without a curve (plain, non-square PNGs) the map of square tiles.
    cell:       pixels per side of one map cell.
    tile:       for tiled plain images, the tile side in pixels (blocks are tiles, row-major).
    """

    blocks: np.ndarray
    image: np.ndarray
    block_size: int
    cell: int
    grid_size: int | None
    tile: int | None = None
    excluded_tail: int = 0  # trailing blocks treated as padding (not in the statistics)
    stats: dict[str, Any] = field(default_factory=dict)
    # Curve streams only (healing.analysis.ranges reads them): where the data ends, each block's
    # chi-square distance from a flat byte histogram, and its count of zero bytes.
    data_length: int | None = None
    uniformity: np.ndarray | None = None
    zero_bytes: np.ndarray | None = None

    @property
    def considered(self) -> np.ndarray:
        """Entropies of the blocks that count for statistics (padding tail excluded)."""
        end = self.blocks.size - self.excluded_tail
        return self.blocks[: max(end, 0)]

    def summary(self) -> dict[str, Any]:
        """Mean/min/max/std and the fraction of blocks in each band (plain JSON numbers)."""
        return dict(self.stats)


def _stats(values: np.ndarray) -> dict[str, Any]:
    if values.size == 0:
        return {"mean": 0.0, "min": 0.0, "max": 0.0, "std": 0.0, "bands": {name: 0.0 for name, _ in BANDS}}
    edges = np.array([upper for _, upper in BANDS])
    which = np.searchsorted(edges, values, side="right")
    counts = np.bincount(np.minimum(which, len(BANDS) - 1), minlength=len(BANDS))
    return {
        "mean": round(float(values.mean()), 4),
        "min": round(float(values.min()), 4),
        "max": round(float(values.max()), 4),
        "std": round(float(values.std()), 4),
        "bands": {name: round(float(c) / values.size, 4) for (name, _), c in zip(BANDS, counts, strict=True)},
    }


def uniformity_from_histograms(hist: np.ndarray) -> np.ndarray:
    """Pearson's chi-square of each row of a (blocks, 256) histogram against a flat histogram.

    Random bytes give 255 ± 23 whatever the block size (255 degrees of freedom); code, text and
    tables give thousands. Written as ``256·Σh²/t − t`` so that no (blocks, 256) float array is made.
    """
    totals = hist.sum(axis=1).astype(np.float64)
    squares = np.einsum("ij,ij->i", hist, hist, dtype=np.float64)
    out = np.full(hist.shape[0], np.inf)
    nonempty = totals > 0
    out[nonempty] = 256.0 * squares[nonempty] / totals[nonempty] - totals[nonempty]
    return out


def entropy_map(stream: np.ndarray, grid_size: int, block_size: int = DEFAULT_BLOCK_SIZE, *,
                exclude_padding: bool = False, data_length: int | None = None) -> EntropyMap:
    """Entropy of each block of a curve-ordered stream of an n×n grid, drawn in image space.

    ``data_length`` (when the metadata says where the data ends) limits the statistics to the
    whole blocks holding data; otherwise ``exclude_padding`` takes the data to end at the last
    non-zero byte (an image whose metadata was stripped still carries its writer's zero padding).
    """
    if stream.size != 4 * grid_size * grid_size:
        raise ValueError(f"stream has {stream.size} bytes, an {grid_size}² grid holds {4 * grid_size * grid_size}")
    hist = block_histograms(stream, block_size)
    blocks = entropy_from_histograms(hist)
    if data_length is None and exclude_padding:
        # Where the data ends when no metadata says so: after the last non-zero byte.
        nonzero = np.flatnonzero(hist[:, 1:].any(axis=1))
        if nonzero.size:
            last_block = int(nonzero[-1])
            tail = stream[last_block * block_size : (last_block + 1) * block_size]
            data_length = last_block * block_size + int(np.flatnonzero(tail)[-1]) + 1
    excluded = 0
    if data_length is not None:
        # Blocks past the data are padding; so is the zero-filled rest of a partial last block,
        # which would otherwise look like a low-entropy outlier. Keep at least one block.
        full = max(data_length, 0) // block_size
        used = full if full >= 2 else -(-max(data_length, 0) // block_size)
        excluded = max(0, blocks.size - max(used, 1))
    cells, c = block_index_grid(grid_size, block_size)
    image = blocks.astype(np.float32)[np.minimum(cells, blocks.size - 1)]
    emap = EntropyMap(blocks=blocks, image=image, block_size=block_size, cell=c, grid_size=grid_size,
                      excluded_tail=excluded, data_length=data_length if data_length is not None else 0 if exclude_padding else int(stream.size),
                      uniformity=uniformity_from_histograms(hist), zero_bytes=hist[:, 0].copy())
    emap.stats = _stats(emap.considered)
    return emap


def tiled_entropy_map(pixels: np.ndarray, tile: int) -> EntropyMap:
    """Entropy of the bytes of square ``tile``×``tile`` tiles of an image without a Hilbert curve.

    Used for plain PNGs that are not square powers of two. Edge tiles are cropped to the image. The
    histograms are counted and turned into entropies one band of tiles at a time, so the temporaries
    stay a few MiB whatever the image's size (a whole-image key array took 8 bytes per byte of the
    image; a whole-image histogram 12 bytes per tile value).
    """
    array = pixels if pixels.ndim == 3 else pixels[:, :, None]
    height, width, channels = array.shape
    rows, cols = -(-height // tile), -(-width // tile)
    blocks = np.empty(rows * cols, dtype=np.float64)
    column_keys = ((np.arange(width, dtype=np.int32) // tile) * 256)[None, :, None]
    for row in range(rows):
        band = array[row * tile : (row + 1) * tile]
        keys = band + column_keys  # int32: tile column · 256 + byte value
        hist = np.bincount(keys.ravel(), minlength=cols * 256).reshape(cols, 256)
        blocks[row * cols : (row + 1) * cols] = entropy_from_histograms(hist)  # per band: no whole-image histogram
    emap = EntropyMap(blocks=blocks, image=blocks.astype(np.float32).reshape(rows, cols),
                      block_size=tile * tile * channels, cell=tile, grid_size=None, tile=tile)
    emap.stats = _stats(blocks)
    return emap
