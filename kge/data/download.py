"""Download and unpack the official WikiKG90Mv2 zip without ever letting ogb prompt or download.

Resumable (HTTP Range into ``ROOT/wikikg90m-v2.zip.part``, renamed when complete), size- and
optionally md5-checked, unpacked with a progress bar into a temporary folder that is renamed into
place, then the marker ``RELEASE_v1.txt`` is ensured.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from kge.common.errors import KgeInputError
from kge.data.layout import (
    DATASET_DIRNAME,
    MARKER_NAME,
    META_NAME,
    PROCESSED_DIRNAME,
    SPLIT_FILES,
    dataset_dir,
    write_marker,
)

# The URL ogb 1.3.6 itself uses (ogb/lsc/wikikg90mv2.py); the old Stanford mirror had md5 OLD_MD5.
DEFAULT_URL = "https://dgl-data.s3-accelerate.amazonaws.com/dataset/OGB-LSC/wikikg90m-v2.zip"
OLD_STANFORD_URL = "http://ogb-data.stanford.edu/data/lsc/wikikg90m-v2.zip"
OLD_MD5 = "bfd6257134b7eb59e2edc0a4af21faa8"
CHUNK_BYTES = 1 << 20


def _tqdm(**kw):
    from tqdm import tqdm

    return tqdm(unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, **kw)


def _complete_folder(ds: Path) -> bool:
    proc = ds / PROCESSED_DIRNAME
    return (ds / META_NAME).is_file() and all((proc / name).is_file() for name in SPLIT_FILES.values())


def _fetch(url: str, part: Path, timeout: float) -> int | None:
    """Stream url into part, resuming from its current size; return the total size if known."""
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "kge-download/1"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range not satisfiable: the .part already holds the whole file.
            m = re.search(r"/(\d+)", exc.headers.get("Content-Range", "") or "")
            return int(m.group(1)) if m else offset
        raise KgeInputError(f"{url}: HTTP {exc.code} {exc.reason}; expected the WikiKG90Mv2 zip") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise KgeInputError(
            f"cannot reach {url} ({reason}): no network? Download the zip by hand to {part.with_suffix('')} and rerun"
        ) from None
    with resp:
        if offset and resp.status == 206:
            m = re.search(r"/(\d+)", resp.headers.get("Content-Range", "") or "")
            total = int(m.group(1)) if m else None
            mode = "ab"
        else:
            # Server ignored the Range header (200): start again from byte 0.
            offset, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None else None
        bar = _tqdm(total=total, initial=offset, desc=f"download {part.name[:-5]}")
        try:
            with open(part, mode) as fh:
                while True:
                    try:
                        block = resp.read(CHUNK_BYTES)
                    except (TimeoutError, ConnectionError, OSError) as exc:
                        raise KgeInputError(
                            f"{url}: connection lost at {fh.tell()} bytes ({exc}); rerun to resume from {part}"
                        ) from None
                    if not block:
                        break
                    fh.write(block)
                    bar.update(len(block))
        finally:
            bar.close()
    return total


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    bar = _tqdm(total=path.stat().st_size, desc=f"md5 {path.name}")
    with open(path, "rb") as fh, bar:
        for block in iter(lambda: fh.read(CHUNK_BYTES * 8), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _unpack(zip_path: Path, root: Path) -> None:
    """Stream every member into ROOT/.unpack-tmp, then rename its wikikg90m-v2/ into place."""
    tmp = root / ".unpack-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise KgeInputError(f"{zip_path}: not a valid zip ({exc}); delete it and rerun") from None
    with zf:
        members = zf.infolist()
        for info in members:
            name = Path(info.filename)
            if name.is_absolute() or ".." in name.parts:  # zip-slip guard
                raise KgeInputError(f"{zip_path}: unsafe member path {info.filename!r}")
        bar = _tqdm(total=sum(i.file_size for i in members), desc="unpack")
        with bar:
            for info in members:
                target = tmp / info.filename
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    for block in iter(lambda: src.read(CHUNK_BYTES * 8), b""):
                        dst.write(block)
                        bar.update(len(block))
    src_ds = tmp / DATASET_DIRNAME
    if not src_ds.is_dir():
        shutil.rmtree(tmp)
        raise KgeInputError(
            f"{zip_path}: has no top-level {DATASET_DIRNAME}/ folder; expected the official WikiKG90Mv2 zip"
        )
    os.replace(src_ds, dataset_dir(root))
    shutil.rmtree(tmp)


def download_wikikg90mv2(
    root: str | os.PathLike,
    url: str | None = None,
    expected_size: int | None = None,
    md5: str | None = None,
    keep_zip: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Make ``ROOT/wikikg90m-v2`` complete (download, check, unpack, marker); return that folder.

    Skips what is already done: a folder with the marker returns at once; a complete
    ``ROOT/wikikg90m-v2.zip`` (renamed from ``.part`` only when complete) is not downloaded again.
    ``expected_size``/``md5`` are checked when given (the zip is about 89 GB; the old Stanford md5 is
    ``OLD_MD5``, the AWS mirror publishes none). The zip is deleted after unpacking unless ``keep_zip``.
    """
    url = url or DEFAULT_URL
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ds = dataset_dir(root)
    if (ds / MARKER_NAME).is_file():
        return ds
    if ds.exists():
        if _complete_folder(ds):
            write_marker(ds)  # unpacked by hand, marker missing: every file is there
            return ds
        raise KgeInputError(f"{ds}: exists but is incomplete (no {MARKER_NAME}); remove it and rerun the download")

    zip_path = root / f"{DATASET_DIRNAME}.zip"
    part = root / f"{DATASET_DIRNAME}.zip.part"
    if not zip_path.is_file():
        total = _fetch(url, part, timeout)
        size = part.stat().st_size
        if total is not None and size < total:
            raise KgeInputError(f"{part}: {size} of {total} bytes received; rerun to resume the download")
        if total is not None and size > total:
            part.unlink()
            raise KgeInputError(f"{part}: {size} bytes but the server says {total}; deleted, rerun to download again")
        if expected_size is not None and size != expected_size:
            raise KgeInputError(
                f"{part}: {size} bytes; expected {expected_size} (delete it and rerun if the server changed)"
            )
        if md5 is not None:
            got = _md5(part)
            if got != md5.lower():
                part.unlink()
                raise KgeInputError(
                    f"{part}: md5 {got} does not match the expected {md5}; deleted, rerun to download again"
                )
        os.replace(part, zip_path)
    else:
        if expected_size is not None and zip_path.stat().st_size != expected_size:
            raise KgeInputError(f"{zip_path}: {zip_path.stat().st_size} bytes; expected {expected_size}")
        if md5 is not None and _md5(zip_path) != md5.lower():
            raise KgeInputError(f"{zip_path}: md5 does not match the expected {md5}; delete it and rerun")

    _unpack(zip_path, root)
    if not _complete_folder(ds):
        raise KgeInputError(
            f"{zip_path}: unpacked folder {ds} lacks {META_NAME} or processed/*.npy; expected the official zip"
        )
    if not (ds / MARKER_NAME).is_file():
        write_marker(ds)
    if not keep_zip:
        zip_path.unlink()
    return ds
