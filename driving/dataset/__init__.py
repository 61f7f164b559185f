"""Crash-safe episodic zarr v3 store for recorded drives (schema: docs/dataset.md).

The package in reading order: `schema` (layout, metadata and value rules, errors),
`codec` (chunk files, byte-identical to zarr-python's), `writer` (store creation and
atomic episode commits), `reader` (`Dataset`, `fingerprint`), `verify` (the whole-store
check). Everything public is re-exported here: `from driving.dataset import ...`.
"""

from driving.dataset.codec import (
    CHUNK_KEY_ENCODING,
    DEPTH_CODEC,
    STEP_CODEC,
    ChunkEncoder,
    array_metadata,
    zarr_codecs,
)
from driving.dataset.reader import Dataset, Episode, fingerprint
from driving.dataset.schema import (
    DEFAULT_CHUNK_FRAMES,
    DEFAULT_CODEC,
    EPISODE_PREFIX,
    EPISODES_DIR,
    FORMAT_NAME,
    INDEX_FILE,
    LABEL_RANGES,
    LOCK_FILE,
    OPTIONAL_STEPS,
    REQUIRED_STEPS,
    SCHEMA_VERSION,
    STAGING_DIR,
    STEP_DTYPES,
    VOLATILE_META,
    DatasetError,
    DiskFullError,
    step_problems,
    validate_meta,
)
from driving.dataset.verify import VerifyReport, verify
from driving.dataset.writer import DatasetWriter, EpisodeBuilder

#: Old private name of `zarr_codecs` (kept: tests build reference arrays with it).
_codecs = zarr_codecs

__all__ = [
    "CHUNK_KEY_ENCODING", "DEFAULT_CHUNK_FRAMES", "DEFAULT_CODEC", "DEPTH_CODEC", "EPISODES_DIR",
    "EPISODE_PREFIX", "FORMAT_NAME", "INDEX_FILE", "LABEL_RANGES", "LOCK_FILE", "OPTIONAL_STEPS",
    "REQUIRED_STEPS", "SCHEMA_VERSION", "STAGING_DIR", "STEP_CODEC", "STEP_DTYPES",
    "VOLATILE_META", "ChunkEncoder", "Dataset", "DatasetError", "DatasetWriter", "DiskFullError",
    "Episode", "EpisodeBuilder", "VerifyReport", "array_metadata", "fingerprint",
    "step_problems", "validate_meta", "verify", "zarr_codecs",
]
