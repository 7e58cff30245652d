"""download_file against a local HTTP server on 127.0.0.1 (loopback only: no test touches the network)."""

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import minipost.download as download
from minipost.download import DownloadError, download_file

BODY = bytes(range(256)) * 1000  # 256,000 bytes: several 64 KiB chunks
BODY_SHA = hashlib.sha256(BODY).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """/file: the body. /short: promises len(BODY) bytes, sends 1,000, hangs up. /slow: stalls.
    Anything else: 404. Every request is counted in server.requests."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path == "/file":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[:1000])
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/slow":
            time.sleep(2.0)
            self.send_response(200)
            self.end_headers()
        else:
            self.send_error(404)

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def leftovers(directory):
    """Files in directory other than the expected ones (a partial download would show up here)."""
    return sorted(p.name for p in directory.iterdir())


def test_success_with_pinned_sha256_and_progress(server, tmp_path, capsys):
    dest = tmp_path / "sub" / "data.bin"
    out = download_file(f"{server.base}/file", dest, sha256=BODY_SHA, desc="test data")
    assert out == dest and dest.read_bytes() == BODY
    err = capsys.readouterr().err
    # the final progress line: name, bytes done / total, percent, rate
    assert "test data: 0.3/0.3 MB" in err and "100.0%" in err and "MB/s" in err
    assert leftovers(dest.parent) == ["data.bin"]  # a pinned hash needs no sidecar, no temp file left


def test_sha256_mismatch_names_url_expected_actual_and_leaves_nothing(server, tmp_path):
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as e:
        download_file(f"{server.base}/file", dest, sha256=wrong)
    msg = str(e.value)
    assert f"{server.base}/file" in msg and wrong in msg and BODY_SHA in msg
    assert leftovers(tmp_path) == []


def test_unpinned_download_records_sidecar_and_verifies_it_later(server, tmp_path):
    dest = tmp_path / "data.bin"
    download_file(f"{server.base}/file", dest)
    sidecar = tmp_path / "data.bin.sha256"
    assert sidecar.read_text().split()[0] == BODY_SHA
    # later use: the file matches its sidecar -> no new request
    download_file(f"{server.base}/file", dest)
    assert server.requests == ["/file"]
    # the file is changed on disk: the sidecar catches it, naming the file and the sidecar
    dest.write_bytes(BODY[:-1] + b"\x00")
    with pytest.raises(DownloadError, match="data.bin.sha256"):
        download_file(f"{server.base}/file", dest)
    assert server.requests == ["/file"]


def test_existing_file_is_not_downloaded_again(server, tmp_path):
    dest = tmp_path / "data.bin"
    download_file(f"{server.base}/file", dest, sha256=BODY_SHA)
    download_file(f"{server.base}/file", dest, sha256=BODY_SHA)
    download_file(f"{server.base}/file", dest, sha256=BODY_SHA)
    assert server.requests == ["/file"]
    # an existing file that does not match a pinned hash is an error, not silently replaced
    dest.write_bytes(b"something else")
    with pytest.raises(DownloadError, match="does not match"):
        download_file(f"{server.base}/file", dest, sha256=BODY_SHA)
    assert dest.read_bytes() == b"something else" and server.requests == ["/file"]


def test_closed_port_gives_offline_instructions(tmp_path):
    with socket.socket() as s:  # find a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.bin"
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError) as e:
        download_file(url, dest, desc="alpaca")
    msg = str(e.value)
    assert "could not download alpaca" in msg and url in msg
    assert f"on a machine with network and place the file at {dest}" in msg
    assert leftovers(tmp_path) == []


def test_http_error_is_a_download_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server.base}/missing", tmp_path / "x.bin")
    assert leftovers(tmp_path) == []


def test_interrupted_transfer_leaves_no_file(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="interrupted"):
        download_file(f"{server.base}/short", dest)
    assert leftovers(tmp_path) == []  # neither dest, nor a temp file, nor a sidecar


def test_stalled_server_times_out(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "TIMEOUT_S", 0.3)
    with pytest.raises(DownloadError, match="timed out"):
        download_file(f"{server.base}/slow", tmp_path / "x.bin")
    assert leftovers(tmp_path) == []


def test_git_blob_hash_is_what_git_computes(tmp_path):
    # known answers: `printf '' | git hash-object --stdin` and `printf 'hello\n' | git hash-object --stdin`
    empty, hello = tmp_path / "empty", tmp_path / "hello"
    empty.write_bytes(b"")
    hello.write_bytes(b"hello\n")
    assert download.git_blob_sha1_of(empty) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert download.git_blob_sha1_of(hello) == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_git_blob_pin_checks_the_download_and_an_existing_file(server, tmp_path):
    good = hashlib.sha1(f"blob {len(BODY)}\0".encode() + BODY).hexdigest()
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match=f"git blob hash {good} does not match the pinned {'1' * 40}"):
        download_file(f"{server.base}/file", dest, git_sha1="1" * 40)
    assert leftovers(tmp_path) == []  # a mismatch saves nothing
    download_file(f"{server.base}/file", dest, git_sha1=good)
    assert dest.read_bytes() == BODY and leftovers(tmp_path) == ["data.bin"]  # pinned: no sidecar
    download_file(f"{server.base}/file", dest, git_sha1=good)
    assert server.requests == ["/file", "/file"]  # the good copy was not fetched again
    dest.write_bytes(b"edited")
    with pytest.raises(DownloadError, match="does not match the pinned"):
        download_file(f"{server.base}/file", dest, git_sha1=good)
    assert dest.read_bytes() == b"edited"


def test_download_all_names_every_missing_file_once(server, tmp_path):
    files = [{"url": f"{server.base}/missing-a", "dest": tmp_path / "a.bin"},
             {"url": f"{server.base}/file", "dest": tmp_path / "b.bin", "sha256": BODY_SHA},
             {"url": f"{server.base}/missing-c", "dest": tmp_path / "c.bin"}]
    with pytest.raises(DownloadError) as e:
        download.download_all(files, desc="set")
    msg = str(e.value)
    assert msg.startswith("could not download set (HTTP 404 Not Found). If this machine is offline, download these "
                          "3 files on a machine with network and place them here: ")
    for f in files:
        assert f"{f['url']} -> {f['dest']}" in msg
    # after the first failure, the network is not tried again (offline, each try could wait for a timeout)
    assert server.requests == ["/missing-a"] and leftovers(tmp_path) == []
    (tmp_path / "a.bin").write_bytes(b"placed by hand")
    (tmp_path / "c.bin").write_bytes(b"placed by hand")
    assert download.download_all(files, desc="set") == [f["dest"] for f in files]
    assert (tmp_path / "b.bin").read_bytes() == BODY
