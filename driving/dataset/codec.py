"""Chunk files: zarr v3 array metadata, encoding and checksummed decoding of one chunk.

Why not zarr-python for the bytes: its asynchronous store costs ~15x the compression per
chunk (a thread hand-off per file), which would make recording slower than the simulator,
and reading 16-frame windows through it is ~3x slower. The files written here are
byte-identical to zarr-python's (tests/test_dataset.py compares them), so any zarr v3
reader opens the store; arrays in another layout are read through zarr-python.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: Per-step arrays: one zstd chunk each (they are small).
STEP_CODEC = {"name": "zstd", "level": 3}
#: Depth maps (float16 metres).
DEPTH_CODEC = {"name": "zstd", "level": 3}
#: chunk files `c.<t>.0.0.0` side by side (zarr v3 "default" encoding, "." separator): no
#: directory per chunk index, so fewer files to create and fsync per episode.
CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}


def compressor(spec: Mapping[str, Any]) -> Any:
    """The zarr codec object for a codec spec (`{"name": "blosc"|"zstd", ...}`)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    name = spec.get("name", "blosc")
    if name == "blosc":
        return BloscCodec(
            cname=spec.get("cname", "lz4"), clevel=int(spec.get("clevel", 5)), shuffle="noshuffle"
        )
    if name == "zstd":
        return ZstdCodec(level=int(spec.get("level", 3)))
    raise ValueError(f"unknown codec {name!r}: use 'blosc' or 'zstd'")


def zarr_codecs(spec: Mapping[str, Any]) -> list[Any]:
    """Compressor then a CRC32C checksum, so that any flipped or truncated byte is detected."""
    from zarr.codecs import Crc32cCodec

    return [compressor(spec), Crc32cCodec()]


_META_TEMPLATES: dict[tuple[str, int, str], dict[str, Any]] = {}


def array_metadata(
    shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, codec: Mapping[str, Any]
) -> dict[str, Any]:
    """zarr v3 array metadata (the `zarr.json` document), as zarr itself writes it.

    The template comes from zarr (an array made in memory, once per process and kind), so
    the codec chain and fields are exactly zarr's; only shape and chunk shape are set here.
    """
    key = (dtype, len(shape), json.dumps(dict(codec), sort_keys=True))
    tpl = _META_TEMPLATES.get(key)
    if tpl is None:
        import zarr
        from zarr.storage import MemoryStore

        arr = zarr.create_array(
            store=MemoryStore(),
            shape=(1,) * len(shape),
            chunks=(1,) * len(shape),
            dtype=dtype,
            compressors=zarr_codecs(codec),
            chunk_key_encoding=CHUNK_KEY_ENCODING,
        )
        tpl = _META_TEMPLATES[key] = json.loads(json.dumps(arr.metadata.to_dict()))
    meta = json.loads(json.dumps(tpl))
    meta["shape"] = [int(x) for x in shape]
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [int(x) for x in chunks]
    return meta


class ChunkEncoder:
    """Encodes one chunk as zarr's codec chain does: raw little-endian bytes, the compressor,
    then the CRC32C checksum appended (4 bytes, little-endian)."""

    def __init__(self, codec: Mapping[str, Any], typesize: int) -> None:
        from numcodecs import Blosc, Zstd

        name = codec.get("name", "blosc")
        if name == "blosc":
            self._c = Blosc(
                cname=codec.get("cname", "lz4"),
                clevel=int(codec.get("clevel", 5)),
                shuffle=Blosc.NOSHUFFLE,
                blocksize=0,
                typesize=typesize,
            )
        elif name == "zstd":
            self._c = Zstd(level=int(codec.get("level", 3)), checksum=False)
        else:
            raise ValueError(f"unknown codec {name!r}: use 'blosc' or 'zstd'")

    def encode(self, block: np.ndarray) -> bytes:
        import google_crc32c

        raw = np.ascontiguousarray(block)
        if raw.dtype.byteorder == ">":
            raw = raw.astype(raw.dtype.newbyteorder("<"))
        data = bytes(self._c.encode(raw))
        crc = np.array([google_crc32c.value(data)], dtype="<u4").tobytes()
        return data + crc


Decoder = tuple[Any, np.dtype]


def direct_decoder(arr: Any) -> Decoder | None:
    """(codec, dtype) to decode chunk files of `arr` directly when it has our layout (bytes →
    blosc/zstd → crc32c, chunks along time over whole frames), else None (use zarr)."""
    meta = arr.metadata.to_dict()
    codecs = meta.get("codecs", [])
    names = [c.get("name") for c in codecs]
    whole = list(arr.chunks[1:]) == list(arr.shape[1:])
    if not (len(codecs) == 3 and names[0] == "bytes" and names[2] == "crc32c" and whole):
        return None
    endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    if names[1] not in ("blosc", "zstd") or (endian != "little" and arr.dtype.itemsize > 1):
        return None
    from numcodecs import Blosc, Zstd

    return (Blosc() if names[1] == "blosc" else Zstd()), np.dtype(arr.dtype).newbyteorder("<")


def decode_chunk_file(path: Path, dec: Decoder, chunks: tuple[int, ...]) -> np.ndarray:
    """Read one chunk file, check its CRC32C, decode it (FileNotFoundError if missing)."""
    import google_crc32c

    data = path.read_bytes()
    if len(data) < 4 or google_crc32c.value(data[:-4]) != int.from_bytes(data[-4:], "little"):
        raise ValueError("CRC32C checksum mismatch (the file was changed or truncated)")
    codec, dtype = dec
    raw = codec.decode(data[:-4])
    return np.frombuffer(raw, dtype=dtype).reshape(chunks)


def chunk_key(arr: Any, c: int) -> str:
    """File name of time-chunk `c` of `arr` (relative to the array's folder)."""
    return arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))


def chunk_checksum(path: Path) -> bytes:
    """The stored CRC32C of a chunk file (its last 4 bytes): a content digest without reading
    or decoding the chunk."""
    with open(path, "rb") as f:
        f.seek(-4, 2)
        return f.read(4)


def write_file(path: Path, data: bytes) -> None:
    """A plain write into an episode's staging folder.

    No temp file or fsync here, by design: nothing in staging is visible, the commit fsyncs
    the whole folder and then renames it into `episodes/` (the atomic step).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
