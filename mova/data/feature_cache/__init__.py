"""Cached expert features: run the frozen experts once, train from their stored outputs.

Why: in the usual recipe the experts are frozen, so an image's expert features never change, yet the
experts (and their transforms: SAM resizes every image to 1024 px) cost as much as a large share of a
training step. Computing them once and reading them back with memory maps removes that cost; at MoVA
scale a cache is large (CLIP-L 576 x 1024 bf16 = 1.2 MB/image, SAM-B 4096 x 256 = 2.1 MB/image, about
300 GB for 93k images), so it is sharded, stored in bf16 by default and never loaded whole.

On disk, one folder per expert *and* fingerprint, so a changed expert never reads or overwrites the
features of another::

    ROOT/
      <expert name>-<fingerprint[:16]>/
        manifest.json             what the features are: expert, full fingerprint and its components
                                  (output-deciding config fields, transform description, weights digest),
                                  storage dtype, token shape [N, D], a transform probe, created/updated,
                                  number of entries, bytes, shard list, library versions
        index.json                the commit point: shard list + {image key: shard number}
        shard-00000.safetensors   many images' features: one [N, D] tensor per image, named by image key
        shard-00001.safetensors   ...
      image-keys.json             {image path: {key, size, mtime_ns}}: lets a reader skip decoding and
                                  hashing an unchanged file (a changed file is re-hashed, so it misses)

The OCR expert has no tensor output: its folder holds ``shard-NNNNN.json`` files mapping image key to
the recognised words (``{"text", "box", "score"}``). Words, not word-piece ids, are stored because the
tokenizer (and ``max_tokens``) may change between caching and training; tokenising cached words is cheap.

Writes are crash-safe: a shard is written to a hidden temporary name, fsynced and ``os.replace``-d into
place, and only then listed in ``index.json`` (itself replaced atomically), then ``manifest.json``. A
crash leaves at worst a hidden temporary file (deleted by the next writer) or a complete shard missing
from the index (adopted by the next writer); readers only ever see listed, complete shards. One writer
per cache folder at a time; any number of readers (DataLoader workers included: open shard handles are
dropped when the cache is pickled).

Image keys are content hashes (:func:`image_key`): the same picture under two paths is cached once, and
a file changed under the same path is a miss. Opening a cache for an expert (:meth:`FeatureCache.open_for`)
recomputes the expert's fingerprint and refuses a stale cache with an error that names what changed.
"""

from mova.data.feature_cache.attach import (
    attach_cached_features,
    prime_ocr_memo,
)
from mova.data.feature_cache.build import (
    CacheStats,
    build_cache,
    write,
)
from mova.data.feature_cache.fingerprint import (
    DEFAULT_SHARD_BYTES,
    DTYPE_ALIASES,
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    MANIFEST,
    MAX_OPEN_SHARDS,
    OCR_FIELDS,
    OCR_NEUTRAL_KWARGS,
    PATH_KEYS,
    PIXEL_FIELDS,
    SHARD_RE,
    STORAGE_DTYPES,
    TMP_RE,
    WEIGHT_SAMPLE,
    CacheMissError,
    StaleCacheError,
    describe_transform,
    differing_fields,
    expert_fingerprint,
    fingerprint_components,
    fingerprint_of,
    image_key,
    transform_probe,
    weights_digest,
)
from mova.data.feature_cache.store import (
    ExpertCache,
    FeatureCache,
    storage_dtype,
)

__all__ = [
    "CacheMissError",
    "CacheStats",
    "DEFAULT_SHARD_BYTES",
    "DTYPE_ALIASES",
    "ExpertCache",
    "FORMAT",
    "FORMAT_VERSION",
    "FeatureCache",
    "INDEX",
    "MANIFEST",
    "MAX_OPEN_SHARDS",
    "OCR_FIELDS",
    "OCR_NEUTRAL_KWARGS",
    "PATH_KEYS",
    "PIXEL_FIELDS",
    "SHARD_RE",
    "STORAGE_DTYPES",
    "StaleCacheError",
    "TMP_RE",
    "WEIGHT_SAMPLE",
    "attach_cached_features",
    "build_cache",
    "describe_transform",
    "differing_fields",
    "expert_fingerprint",
    "fingerprint_components",
    "fingerprint_of",
    "image_key",
    "prime_ocr_memo",
    "storage_dtype",
    "transform_probe",
    "weights_digest",
    "write",
]
