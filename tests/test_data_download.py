"""download_wikikg90mv2 against a local HTTP server with Range support (no internet needed)."""

import hashlib
import http.server
import io
import socket
import threading
import zipfile

import numpy as np
import pytest

from kge.common.errors import KgeInputError
from kge.data.download import download_wikikg90mv2
from kge.data.layout import dataset_dir, open_dataset, write_meta


def _zip_bytes(tmp_path, with_marker=False):
    """A tiny but complete WikiKG90Mv2 zip (incompressible features so it has some size)."""
    from kge.data.layout import write_split_arrays

    src = tmp_path / "src"
    ds = dataset_dir(src)
    rng = np.random.default_rng(0)
    write_split_arrays(
        ds,
        train_hrt=rng.integers(0, 4, (100, 3)),
        entity_feat=rng.normal(size=(20, 768)).astype(np.float16),
        relation_feat=rng.normal(size=(4, 768)).astype(np.float16),
        val_hr=rng.integers(0, 4, (5, 2)),
        val_t=rng.integers(0, 20, 5),
        test_dev_hr=rng.integers(0, 4, (5, 2)),
        test_challenge_hr=rng.integers(0, 4, (5, 2)),
    )
    write_meta(ds, 20, 4)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(ds.rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
        if with_marker:
            zf.writestr("wikikg90m-v2/RELEASE_v1.txt", "v1\n")
    return buf.getvalue()


class _Server:
    """Threaded local server for one payload; honours Range unless ranges=False; logs Range headers."""

    def __init__(self, payload, ranges=True):
        outer = self
        self.ranges_seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.ranges_seen.append(rng)
                start = 0
                if rng and ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(payload):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(payload)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
                else:
                    self.send_response(200)
                body = payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/wikikg90m-v2.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_fresh_download(tmp_path):
    payload = _zip_bytes(tmp_path)
    root = tmp_path / "root"
    with _Server(payload) as srv:
        ds = download_wikikg90mv2(root, url=srv.url, expected_size=len(payload), md5=hashlib.md5(payload).hexdigest())
    assert ds == dataset_dir(root) and (ds / "RELEASE_v1.txt").is_file()  # marker ensured
    assert open_dataset(root).num_entities == 20
    assert not (root / "wikikg90m-v2.zip").exists() and not (root / "wikikg90m-v2.zip.part").exists()
    assert srv.ranges_seen == [None]
    # Already complete: returns without touching the network.
    assert download_wikikg90mv2(root, url="http://127.0.0.1:9/never") == ds


def test_resume_with_range(tmp_path):
    payload = _zip_bytes(tmp_path, with_marker=True)
    root = tmp_path / "root"
    root.mkdir()
    cut = len(payload) // 3
    (root / "wikikg90m-v2.zip.part").write_bytes(payload[:cut])  # an interrupted earlier run
    with _Server(payload) as srv:
        download_wikikg90mv2(root, url=srv.url, keep_zip=True)
    assert srv.ranges_seen == [f"bytes={cut}-"]
    assert (root / "wikikg90m-v2.zip").read_bytes() == payload
    assert open_dataset(root).num_relations == 4


def test_server_ignores_range_restarts(tmp_path):
    payload = _zip_bytes(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / "wikikg90m-v2.zip.part").write_bytes(b"garbage" * 10)
    with _Server(payload, ranges=False) as srv:
        download_wikikg90mv2(root, url=srv.url, keep_zip=True)
    assert (root / "wikikg90m-v2.zip").read_bytes() == payload


def test_part_already_complete(tmp_path):
    payload = _zip_bytes(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / "wikikg90m-v2.zip.part").write_bytes(payload)
    with _Server(payload) as srv:
        download_wikikg90mv2(root, url=srv.url)
    assert (dataset_dir(root) / "RELEASE_v1.txt").is_file()


def test_existing_zip_skips_download(tmp_path):
    payload = _zip_bytes(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / "wikikg90m-v2.zip").write_bytes(payload)
    download_wikikg90mv2(root, url="http://127.0.0.1:9/never")  # no request made
    assert open_dataset(root).num_entities == 20


def test_checksum_mismatch(tmp_path):
    payload = _zip_bytes(tmp_path)
    root = tmp_path / "root"
    with _Server(payload) as srv:
        with pytest.raises(KgeInputError, match="md5 .* does not match") as info:
            download_wikikg90mv2(root, url=srv.url, md5="0" * 32)
    assert "\n" not in str(info.value)
    assert not (root / "wikikg90m-v2.zip.part").exists() and not dataset_dir(root).exists()
    with _Server(payload) as srv:
        with pytest.raises(KgeInputError, match=f"expected {len(payload) + 1}"):
            download_wikikg90mv2(root, url=srv.url, expected_size=len(payload) + 1)


def test_unreachable(tmp_path):
    with socket.socket() as s:  # a port nobody listens on, held (bound, never listening) so no one else takes it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}/wikikg90m-v2.zip"
        with pytest.raises(KgeInputError, match="cannot reach .*no network\\? Download the zip by hand") as info:
            download_wikikg90mv2(tmp_path, url=url, timeout=5)
    assert "\n" not in str(info.value) and str(tmp_path / "wikikg90m-v2.zip") in str(info.value)


def test_incomplete_folder_refused(tmp_path):
    dataset_dir(tmp_path).mkdir(parents=True)
    with pytest.raises(KgeInputError, match="exists but is incomplete"):
        download_wikikg90mv2(tmp_path, url="http://127.0.0.1:9/never")


def test_bad_zip(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "wikikg90m-v2.zip").write_bytes(b"PK not really")
    with pytest.raises(KgeInputError, match="not a valid zip"):
        download_wikikg90mv2(root)
