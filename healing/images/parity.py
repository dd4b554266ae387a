"""Erasure-coded parity over an image file's bytes, so a damaged image heals without a golden copy.

The file (the ``.rts.png`` exactly as stored) is cut into ``N`` blocks of ``block_size`` bytes (the last
one zero-padded). Blocks are striped into ``G`` codeword groups — group ``g`` holds blocks ``g, g+G,
g+2G, …`` (``k`` of them; slots past the end of the file are known zeros) — and each group gets ``r``
Reed-Solomon parity shards from zfec (Tahoe-LAFS's C erasure coder, chosen by measured speed: see
docs/parity.md). Any ``r`` lost shares of a group can be rebuilt, so:

* a contiguous burst of up to ``r*G`` blocks touches each group at most ``r`` times: recoverable;
* any ``r`` blocks anywhere are recoverable, and up to ``r`` per group when they are spread out.

zfec only repairs *erasures* (known positions). Per-block hashes (the first 16 bytes of each block's
sha256) name the damaged blocks; a file shorter than recorded makes its tail blocks erasures; a
parity shard whose own hash fails is an erasure too. A repair is accepted only when every rebuilt
block matches its hash and the whole file matches its sha256: otherwise it is refused, never written.

Parity file layout (``$SELFHEAL_HOME/golden/<aa>/<sha256>.parity``, beside the golden copy; never
inside the image, so the image stays byte-exact)::

    MAGIC  u32 len(header)  header  sha256(header)        the header, first copy
    the G*r parity shards (block_size bytes each), parity 0 of every group, then parity 1 of every
    group, …: a burst in the parity file, too, costs each group few shards
    header  sha256(header)  u32 len(header)  MAGIC        the header, second copy (read from the end)

``header`` = u32 len(json) + JSON (version, block_size, k, r, groups, file_length, file_sha256, …)
+ the N block hashes + the G*r shard hashes (16 bytes each). Two copies: damage to one leaves the
other; damage to both makes the parity unusable (detected, the heal falls back to the golden copy).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healing.errors import CorruptedError, InputError, SelfHealError
from healing.safeio import read_regular, write_atomic

MAGIC = b"SELFHEAL-PARITY\n"
VERSION = 1
HASH_BYTES = 16  # sha256 prefix per block: locates damage; the full-file sha256 decides the repair
MAX_SHARES = 256  # zfec: k + r <= 256 (GF(2^8))
MIN_BLOCK, MAX_BLOCK = 64, 4096
TARGET_BLOCKS = 256  # small files use smaller blocks so a burst costs few bytes of capacity
SUFFIX = ".parity"
STATE_SUFFIX = ".parity-state.json"
_U32 = struct.Struct(">I")
_TRAILER = len(MAGIC) + _U32.size + 32


class ParityError(SelfHealError):
    """The parity cannot be used: missing, unreadable or damaged beyond its two header copies (exit 3)."""


class RepairRefused(CorruptedError):
    """The damage exceeds what the parity can rebuild, or the rebuilt file does not verify (exit 2)."""


def _hash(block: bytes | memoryview) -> bytes:
    return hashlib.sha256(block).digest()[:HASH_BYTES]


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """How a file of ``file_length`` bytes is cut into blocks and striped into codeword groups."""

    file_length: int
    block_size: int
    k: int  # data blocks per group
    r: int  # parity shards per group
    groups: int

    @property
    def n_blocks(self) -> int:
        return -(-self.file_length // self.block_size)

    @property
    def n_shards(self) -> int:
        return self.groups * self.r

    @property
    def parity_bytes(self) -> int:
        return self.n_shards * self.block_size

    def shard_position(self, shard: int) -> int:
        """Where shard ``shard`` (= group * r + j) sits among the stored shards (j-major order)."""
        return (shard % self.r) * self.groups + shard // self.r

    @property
    def recoverable_burst_bytes(self) -> int:
        """Longest contiguous damage recoverable at any alignment (a burst of b bytes can touch
        ceil((b-1)/B)+1 blocks; r*G consecutive blocks are always recoverable)."""
        return min(self.file_length, (self.r * self.groups - 1) * self.block_size + 1)

    def blocks_of(self, group: int) -> list[int]:
        """Block indexes of ``group`` in slot order (slots past the file's end are left out)."""
        return list(range(group, self.n_blocks, self.groups))

    def capacity(self) -> dict[str, Any]:
        """What this parity buys: burst size, scattered-block capacity, overhead."""
        return {
            "block_size": self.block_size, "blocks": self.n_blocks, "k": self.k, "r": self.r, "groups": self.groups,
            "parity_bytes": self.parity_bytes,
            "parity_percent": round(100.0 * self.parity_bytes / self.file_length, 3),
            "recoverable_burst_bytes": self.recoverable_burst_bytes,
            "scattered_blocks_guaranteed": self.r,
            "scattered_blocks_max": min(self.n_blocks, self.r * self.groups),
        }


def choose_layout(file_length: int, percent: float) -> Layout:
    """The layout for ``percent`` % parity: blocks of up to 4 KiB (smaller for small files), groups as
    large as zfec allows (k + r <= 256) and r = round(k * percent / 100) >= 1."""
    if file_length <= 0:
        raise InputError("cannot compute parity of an empty file")
    if not 0 < percent <= 100:
        raise InputError(f"parity percent must be in (0, 100], got {percent:g}")
    block = 1 << max(0, (file_length // TARGET_BLOCKS).bit_length() - 1)
    block = min(MAX_BLOCK, max(MIN_BLOCK, block))
    n = -(-file_length // block)
    k_max = max(k for k in range(1, MAX_SHARES) if k + _parity_count(k, percent) <= MAX_SHARES)
    fewest = -(-n // k_max)
    want = n * block * percent / 100
    candidates = []
    for groups in range(fewest, min(n, fewest + 8) + 1):
        k = -(-n // groups)
        r = _parity_count(k, percent)
        if k + r <= MAX_SHARES:
            candidates.append(Layout(file_length, block, k, r, groups))
    # Fewest groups (largest r: most blocks recoverable anywhere) while the overhead stays within 20 %
    # of what was asked; otherwise the nearest overhead.
    for layout in candidates:
        if 0.8 * want <= layout.parity_bytes <= 1.2 * want:
            return layout
    return min(candidates, key=lambda layout: abs(layout.parity_bytes - want))


def _parity_count(k: int, percent: float) -> int:
    return max(1, round(k * percent / 100.0))


# ----------------------------------------------------------------------------- encoding


def _blocks(data: bytes | memoryview, layout: Layout) -> list[bytes | memoryview]:
    """The file's blocks (zero-copy views; the last one zero-padded)."""
    view = memoryview(data)
    size = layout.block_size
    blocks: list[bytes | memoryview] = [view[i * size:(i + 1) * size] for i in range(layout.n_blocks)]
    if blocks and len(blocks[-1]) < size:
        blocks[-1] = bytes(blocks[-1]) + bytes(size - len(blocks[-1]))
    return blocks


def _group_inputs(blocks: list[Any], layout: Layout, group: int, zero: bytes) -> list[Any]:
    slots = [blocks[i] for i in layout.blocks_of(group)]
    return slots + [zero] * (layout.k - len(slots))


def encode(data: bytes | memoryview, percent: float) -> bytes:
    """The complete parity file for ``data`` (the image's bytes) at ``percent`` % parity."""
    import zfec

    layout = choose_layout(len(data), percent)
    blocks = _blocks(data, layout)
    zero = bytes(layout.block_size)
    encoder = zfec.Encoder(layout.k, layout.k + layout.r)
    wanted = tuple(range(layout.k, layout.k + layout.r))
    shards: list[bytes] = []
    for group in range(layout.groups):
        shards.extend(bytes(s) for s in encoder.encode(tuple(_group_inputs(blocks, layout, group, zero)), wanted))
    header = _header(layout, percent, hashlib.sha256(data).hexdigest(), b"".join(_hash(b) for b in blocks),
                     b"".join(_hash(s) for s in shards))
    digest = hashlib.sha256(header).digest()
    length = _U32.pack(len(header))
    stored = [shards[group * layout.r + j] for j in range(layout.r) for group in range(layout.groups)]
    return b"".join([MAGIC, length, header, digest, *stored, header, digest, length, MAGIC])


def _header(layout: Layout, percent: float, file_sha256: str, block_hashes: bytes, shard_hashes: bytes) -> bytes:
    meta = json.dumps({
        "version": VERSION, "code": "zfec-rs-gf256", "block_size": layout.block_size, "k": layout.k, "r": layout.r,
        "groups": layout.groups, "file_length": layout.file_length, "file_sha256": file_sha256,
        "hash": f"sha256[:{HASH_BYTES}]", "percent": percent,
    }, sort_keys=True, separators=(",", ":")).encode()
    return _U32.pack(len(meta)) + meta + block_hashes + shard_hashes


# ----------------------------------------------------------------------------- reading


@dataclass
class Parity:
    """A parsed parity file. ``shards[i]`` is None when shard i is missing or fails its hash."""

    layout: Layout
    file_sha256: str
    percent: float
    block_hashes: list[bytes]
    shard_hashes: list[bytes]
    shards: list[bytes | None]
    header_copies_ok: int  # 2 intact, 1 one copy damaged

    @property
    def damaged_shards(self) -> list[int]:
        return [i for i, s in enumerate(self.shards) if s is None]


def _parse_header(header: bytes) -> tuple[Layout, str, float, list[bytes], list[bytes]]:
    (meta_len,) = _U32.unpack_from(header)
    meta = json.loads(header[4:4 + meta_len])
    if meta.get("version") != VERSION:
        raise ValueError(f"unsupported parity version {meta.get('version')!r}")
    layout = Layout(int(meta["file_length"]), int(meta["block_size"]), int(meta["k"]), int(meta["r"]),
                    int(meta["groups"]))
    rest = header[4 + meta_len:]
    n, s = layout.n_blocks, layout.n_shards
    if len(rest) != (n + s) * HASH_BYTES:
        raise ValueError("hash table length does not match the layout")
    hashes = [rest[i:i + HASH_BYTES] for i in range(0, len(rest), HASH_BYTES)]
    return layout, str(meta["file_sha256"]), float(meta["percent"]), hashes[:n], hashes[n:]


def _header_copy(raw: bytes, at_end: bool) -> bytes | None:
    """One header copy if it is present and matches its sha256, else None."""
    try:
        if at_end:
            if raw[-len(MAGIC):] != MAGIC:
                return None
            (length,) = _U32.unpack_from(raw, len(raw) - len(MAGIC) - 4)
            end = len(raw) - len(MAGIC) - 4
            header, digest = raw[end - 32 - length:end - 32], raw[end - 32:end]
        else:
            if raw[:len(MAGIC)] != MAGIC:
                return None
            (length,) = _U32.unpack_from(raw, len(MAGIC))
            start = len(MAGIC) + 4
            header, digest = raw[start:start + length], raw[start + length:start + length + 32]
    except struct.error:
        return None
    if len(header) != length or hashlib.sha256(header).digest() != digest:
        return None
    return header


def parse(raw: bytes) -> Parity:
    """Parse a parity file's bytes; damaged shards become None. Raises ParityError when neither header
    copy is intact (nothing in the file can then be trusted)."""
    copies = [_header_copy(raw, False), _header_copy(raw, True)]
    header = next((c for c in copies if c is not None), None)
    if header is None:
        raise ParityError("parity file is damaged: both header copies fail their sha256")
    try:
        layout, file_sha, percent, block_hashes, shard_hashes = _parse_header(header)
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise ParityError(f"parity file header is not usable: {exc}") from None
    base = len(MAGIC) + 4 + len(header) + 32
    size = layout.block_size
    shards: list[bytes | None] = []
    for i, expected in enumerate(shard_hashes):
        at = base + layout.shard_position(i) * size
        shard = raw[at:at + size]
        shards.append(shard if len(shard) == size and _hash(shard) == expected else None)
    return Parity(layout, file_sha, percent, block_hashes, shard_hashes, shards, sum(c is not None for c in copies))


def load(path: str | os.PathLike[str]) -> Parity:
    """Read and parse the parity file at ``path`` (never through a symlink)."""
    try:
        raw = read_regular(path, follow_symlinks=False, what="a parity file")
    except InputError as exc:
        raise ParityError(str(exc)) from None
    return parse(raw)


# ----------------------------------------------------------------------------- diagnosis and repair


@dataclass
class Diagnosis:
    """What a file looks like against its parity."""

    file_length: int  # the current length
    expected_length: int
    damaged_blocks: list[int]
    damaged_shards: list[int]
    header_copies_ok: int
    overfull_groups: list[int]  # groups with more than r erasures
    file_intact: bool
    layout: Layout

    @property
    def repairable(self) -> bool:
        return not self.file_intact and not self.overfull_groups

    @property
    def parity_intact(self) -> bool:
        return not self.damaged_shards and self.header_copies_ok == 2

    def damaged_ranges(self) -> list[list[int]]:
        """The damaged blocks as merged byte ranges [start, end) of the recorded file."""
        size, ranges = self.layout.block_size, []
        for block in self.damaged_blocks:
            start, end = block * size, min((block + 1) * size, self.expected_length)
            if ranges and ranges[-1][1] == start:
                ranges[-1][1] = end
            else:
                ranges.append([start, end])
        return ranges

    def to_dict(self) -> dict[str, Any]:
        return {
            "file_intact": self.file_intact, "parity_intact": self.parity_intact, "repairable": self.repairable,
            "file_length": self.file_length, "expected_length": self.expected_length,
            "damaged_blocks": self.damaged_blocks, "damaged_ranges": self.damaged_ranges(),
            "damaged_shards": self.damaged_shards, "header_copies_ok": self.header_copies_ok,
            "overfull_groups": self.overfull_groups, "capacity": self.layout.capacity(),
        }


def _current_blocks(data: bytes, layout: Layout) -> list[bytes | memoryview | None]:
    """The file's blocks as far as it reaches (a block cut short by truncation is None)."""
    view = memoryview(data)[:layout.file_length]
    size, out = layout.block_size, []
    for i in range(layout.n_blocks):
        block = view[i * size:(i + 1) * size]
        want = min(size, layout.file_length - i * size)
        if len(block) < want:
            out.append(None)
        elif len(block) < size:
            out.append(bytes(block) + bytes(size - len(block)))
        else:
            out.append(block)
    return out


def diagnose(data: bytes, parity: Parity) -> Diagnosis:
    """Name the damaged blocks of ``data`` (hash mismatch or cut off), the damaged parity shards, and the
    groups where erasures exceed r."""
    layout = parity.layout
    blocks = _current_blocks(data, layout)
    damaged = [i for i, b in enumerate(blocks) if b is None or _hash(b) != parity.block_hashes[i]]
    intact = (not damaged and len(data) == layout.file_length
              and hashlib.sha256(data).hexdigest() == parity.file_sha256)
    per_group: dict[int, int] = {}
    for i in damaged:
        per_group[i % layout.groups] = per_group.get(i % layout.groups, 0) + 1
    for i in parity.damaged_shards:
        per_group[i // layout.r] = per_group.get(i // layout.r, 0) + 1
    overfull = sorted(g for g, count in per_group.items() if count > layout.r)
    return Diagnosis(len(data), layout.file_length, damaged, parity.damaged_shards, parity.header_copies_ok,
                     overfull, intact, layout)


def repair(data: bytes, parity: Parity) -> bytes:
    """The file rebuilt from ``data`` and its parity, verified block by block and as a whole.

    Raises RepairRefused when the damage exceeds the parity's capacity or the result does not verify."""
    import zfec

    diagnosis = diagnose(data, parity)
    if diagnosis.file_intact:
        return data
    layout = parity.layout
    if diagnosis.overfull_groups:
        raise RepairRefused(
            f"damage exceeds the parity: {len(diagnosis.damaged_blocks)} damaged block(s) of {layout.block_size} bytes "
            f"and {len(diagnosis.damaged_shards)} damaged parity shard(s); {len(diagnosis.overfull_groups)} group(s) "
            f"lost more than {layout.r} shares")
    blocks: list[Any] = _current_blocks(data, layout)
    for i in diagnosis.damaged_blocks:
        blocks[i] = None
    zero = bytes(layout.block_size)
    decoder = zfec.Decoder(layout.k, layout.k + layout.r)
    for group in sorted({i % layout.groups for i in diagnosis.damaged_blocks}):
        members = layout.blocks_of(group)
        shares, numbers = [], []
        for slot in range(layout.k):
            if slot >= len(members):
                shares.append(zero)  # past the end of the file: known zeros
                numbers.append(slot)
            elif blocks[members[slot]] is not None:
                shares.append(blocks[members[slot]])
                numbers.append(slot)
        for j in range(layout.r):
            shard = parity.shards[group * layout.r + j]
            if shard is not None and len(shares) < layout.k:
                shares.append(shard)
                numbers.append(layout.k + j)
        decoded = decoder.decode(tuple(shares[:layout.k]), tuple(numbers[:layout.k]))
        for slot, index in enumerate(members):
            if blocks[index] is None:
                rebuilt = bytes(decoded[slot])
                if _hash(rebuilt) != parity.block_hashes[index]:
                    raise RepairRefused(f"rebuilt block {index} does not match its hash; repair refused")
                blocks[index] = rebuilt
    result = b"".join(bytes(b) for b in blocks)[:layout.file_length]
    if hashlib.sha256(result).hexdigest() != parity.file_sha256:
        raise RepairRefused("rebuilt file does not match its recorded sha256; repair refused")
    return result


# ----------------------------------------------------------------------------- files on disk


def parity_path(golden_dir: str | os.PathLike[str], file_sha256: str) -> Path:
    """Where the parity of the content ``file_sha256`` lives: beside its golden copy."""
    return Path(golden_dir) / file_sha256[:2] / f"{file_sha256}{SUFFIX}"


def _state_path(path: Path) -> Path:
    return path.with_name(path.name[:-len(SUFFIX)] + STATE_SUFFIX) if path.name.endswith(SUFFIX) else \
        path.with_name(path.name + STATE_SUFFIX)


def read_image_bytes(path: str | os.PathLike[str], expected_length: int, *, follow_symlinks: bool = False) -> bytes:
    """The bytes of the image at ``path`` that a repair can use: at most ``expected_length`` + 1 (one
    more than recorded says "longer than recorded"; a file grown to any size is never read whole)."""
    from healing.safeio import open_regular

    with open_regular(path, follow_symlinks=follow_symlinks, what="an image file") as fh:
        return fh.read(expected_length + 1)


def write_parity(data: bytes, target: str | os.PathLike[str], percent: float) -> Parity:
    """Compute the parity of ``data`` and write it atomically to ``target`` (owner read-only; a symlink
    at ``target`` is refused). Returns the parsed parity."""
    raw = encode(data, percent)
    write_atomic(target, raw, mode=0o400, what="parity")
    return parse(raw)


def record_verified(path: str | os.PathLike[str], diagnosis: Diagnosis) -> None:
    """Remember when the parity of ``path`` was last verified and what was found (for parity_status)."""
    from healing.images.integrity import iso_now

    state = {"last_verified": iso_now(), "file_intact": diagnosis.file_intact,
             "parity_intact": diagnosis.parity_intact, "damaged_blocks": len(diagnosis.damaged_blocks)}
    write_atomic(_state_path(Path(path)), json.dumps(state, sort_keys=True), mode=0o600, what="parity state")


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return json.loads(read_regular(_state_path(Path(path)), follow_symlinks=False, max_bytes=4096))
    except (SelfHealError, ValueError):
        return {}


@dataclass
class ParityInfo:
    """What `selfheal parity create` made."""

    path: str
    file_sha256: str
    percent: float
    capacity: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parity_status(image: dict[str, Any] | str | os.PathLike[str], *, golden_dir: str | os.PathLike[str] | None = None
                  ) -> dict[str, Any]:
    """Parity facts of a registered image (its row, or its path): present, overhead_percent,
    last_verified (ISO time or None), recoverable_burst_bytes, and the rest of the capacity."""
    if golden_dir is None:
        from healing.config import load_settings

        golden_dir = load_settings().golden_dir
    row = image if isinstance(image, dict) else _registered(str(image))
    sha = (row or {}).get("golden_sha256")
    empty = {"present": False, "overhead_percent": 0.0, "last_verified": None, "recoverable_burst_bytes": 0}
    if not sha:
        return empty
    path = parity_path(golden_dir, str(sha))
    try:
        parity = load(path)
    except ParityError as exc:
        return {**empty, "path": str(path), "problem": None if "no such file" in str(exc) else str(exc)}
    layout = parity.layout
    size = path.stat().st_size
    state = read_state(path)
    return {
        "present": True, "path": str(path),
        "overhead_percent": round(100.0 * size / layout.file_length, 3),
        "last_verified": state.get("last_verified"),
        "last_result": {k: state[k] for k in ("file_intact", "parity_intact", "damaged_blocks") if k in state} or None,
        "recoverable_burst_bytes": layout.recoverable_burst_bytes,
        "parity_intact": not parity.damaged_shards and parity.header_copies_ok == 2,
        **{k: v for k, v in layout.capacity().items() if k != "recoverable_burst_bytes"},
    }


def _registered(path: str) -> dict[str, Any] | None:
    from healing.images.registry import normalise_path
    from storage import queries
    from storage.engine import session_scope

    with session_scope(write=False) as session:
        return queries.get_image(session, path=normalise_path(path))


def create_for_golden(golden_copy: str | os.PathLike[str], file_sha256: str, golden_dir: str | os.PathLike[str],
                      percent: float) -> dict[str, Any]:
    """Write the parity of a stored golden copy beside it (unless an intact one is already there) and
    return its capacity and path. The copy is re-hashed first: parity of the wrong bytes is never made."""
    import time

    target = parity_path(golden_dir, file_sha256)
    started = time.perf_counter()
    data = read_regular(golden_copy, follow_symlinks=False, what="a golden copy")
    if hashlib.sha256(data).hexdigest() != file_sha256:
        raise CorruptedError(f"golden copy {file_sha256[:12]}… does not match its name; parity not made")
    try:
        existing = load(target)
        reuse = (existing.file_sha256 == file_sha256 and existing.percent == percent and existing.header_copies_ok == 2
                 and not existing.damaged_shards)
    except ParityError:
        reuse = False
    parity = existing if reuse else write_parity(data, target, percent)
    return {"path": str(target), "percent": percent, "seconds": round(time.perf_counter() - started, 3),
            "reused": reuse, **parity.layout.capacity()}
