"""
Downloading one file, safely: progress on stderr, a checksum, and never a half-written file.

    path = download_file(URL, "checkpoints/data/alpaca_data.json", sha256=None, desc="alpaca")

What it guarantees:
- The file at `dest` is either absent or complete. Bytes stream into a temporary file beside `dest`
  (same directory, so the final `os.replace` is an atomic rename on the same filesystem); the temp file
  is fsync'ed and only then renamed over `dest`. An interrupted transfer leaves nothing at `dest`.
- A short transfer (the server closed the connection before Content-Length bytes arrived) is an error,
  not a silently truncated dataset.
- Integrity. With a pinned `sha256` the download is checked against it, and so is an existing file.
  A file kept in a git repository can be pinned by its git blob hash instead (`git_sha1`: SHA-1 of
  "blob <size>\\0" + the bytes, what `git ls-tree` shows for that file at a fixed commit): a pin that can
  be read from the repository's history without downloading the file itself. Without either we cannot
  know what the right bytes are, so we do the next best thing and say so honestly: the sha256 of the
  first successful download is recorded in `dest + ".sha256"` (a "sidecar") and every later use re-checks
  the file against it. That catches a file corrupted or edited on disk after download; it does NOT prove
  the first download was the file the dataset's authors published (trust on first use, like ssh's
  known_hosts).
- Network failures (no network, DNS, refused connection, timeout, HTTP errors) raise `DownloadError`
  saying what could not be fetched, from where, and how to proceed offline. `download_all` fetches
  several files and, offline, names every missing one in a single message (not one per attempt).

Stdlib only (urllib); no network at import time.
"""

import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CHUNK_BYTES = 1 << 16  # read 64 KiB at a time: constant memory for any file size
TIMEOUT_S = 30  # seconds for connecting and for each read; a stalled server fails instead of hanging


class DownloadError(RuntimeError):
    """A file could not be downloaded (network, HTTP, short transfer, checksum mismatch).

    `missing` is (url, dest) when the cause was the network (the file can be placed by hand), else None;
    `reason` says what went wrong in a few words ("HTTP 404 Not Found", "timed out").
    """

    def __init__(self, message: str, missing: tuple[str, Path] | None = None, reason: str = ""):
        super().__init__(message)
        self.missing, self.reason = missing, reason


def sha256_of(path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1_of(path) -> str:
    """The hash git gives a file's contents (`git hash-object PATH`): SHA-1 of b"blob <size>\\0" + bytes."""
    h = hashlib.sha1(f"blob {Path(path).stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def _sidecar(dest: Path) -> Path:
    """Where the sha256 of an unpinned download is recorded: `dest.sha256` next to it."""
    return dest.with_name(dest.name + ".sha256")


def _offline_hint(url: str, dest: Path) -> str:
    return (f"If this machine is offline, download {url} on a machine with network "
            f"and place the file at {dest}.")


def _check_git_sha1(path: Path, git_sha1: str, what: str):
    actual = git_blob_sha1_of(path)
    if actual != git_sha1.lower():
        raise DownloadError(f"{what}: git blob hash {actual} does not match the pinned {git_sha1}. "
                            f"The file is corrupt or another version; delete it to download it again.")


def _check_existing(dest: Path, sha256: str | None, git_sha1: str | None = None) -> bool:
    """True if `dest` is already a good copy. A file that fails its checksum raises (we do not silently
    overwrite something the user may have placed there by hand)."""
    if not dest.is_file():
        return False
    if git_sha1 is not None and sha256 is None:
        _check_git_sha1(dest, git_sha1, str(dest))
        return True
    expected, source = sha256, "pinned"
    if expected is None and _sidecar(dest).is_file():
        expected, source = _sidecar(dest).read_text().split()[0], f"recorded in {_sidecar(dest)}"
    if expected is None:
        return True  # placed by hand, never downloaded by us: nothing to compare against; accept it
    actual = sha256_of(dest)
    if actual != expected.lower():
        raise DownloadError(f"{dest}: sha256 {actual} does not match the {source} sha256 {expected}. "
                            f"The file is corrupt or was changed; delete it to download it again.")
    return True


def _format_progress(desc: str, done: int, total: int | None, elapsed: float) -> str:
    """One progress line: `alpaca: 12.3/22.8 MB  54.1%  3.2 MB/s`."""
    rate = done / max(elapsed, 1e-6) / 1e6
    if total:
        return f"{desc}: {done / 1e6:.1f}/{total / 1e6:.1f} MB {100 * done / total:5.1f}% {rate:6.2f} MB/s"
    return f"{desc}: {done / 1e6:.1f} MB (size unknown) {rate:6.2f} MB/s"


def download_file(url: str, dest, sha256: str | None = None, desc: str = "", git_sha1: str | None = None) -> Path:
    """Download `url` to `dest` (see the module docstring) and return `dest` as a Path.

    If `dest` exists and matches `sha256` / `git_sha1` (or its sidecar), nothing is downloaded. A file placed
    at `dest` by hand is checked against the pin, or used as it is when there is none: the offline route.
    """
    dest = Path(dest)
    desc = desc or dest.name
    if _check_existing(dest, sha256, git_sha1):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)

    # The temp file lives beside dest so os.replace is an atomic rename; its odd name marks it as partial.
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        done = 0
        request = urllib.request.Request(url, headers={"User-Agent": "minipost"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, os.fdopen(fd, "wb") as f:
                fd = None  # now owned (and closed) by f
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                start = last_print = time.perf_counter()
                while True:
                    chunk = response.read(CHUNK_BYTES)
                    if not chunk:
                        break
                    f.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    now = time.perf_counter()
                    if now - last_print > 0.2:  # redraw the line at most 5 times a second
                        print("\r" + _format_progress(desc, done, total, now - start), end="", file=sys.stderr)
                        last_print = now
                print("\r" + _format_progress(desc, done, total, time.perf_counter() - start), file=sys.stderr)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        except urllib.error.HTTPError as e:  # (a subclass of URLError: test it first)
            raise DownloadError(f"could not download {desc} from {url}: HTTP {e.code} {e.reason}. "
                                + _offline_hint(url, dest), missing=(url, dest),
                                reason=f"HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            # URLError: DNS failure, refused connection; TimeoutError: a stalled server;
            # ConnectionError: the connection was reset mid-transfer.
            reason = getattr(e, "reason", e)
            raise DownloadError(f"could not download {desc} from {url}: {reason}. "
                                + _offline_hint(url, dest), missing=(url, dest), reason=str(reason)) from e
        except http.client.HTTPException as e:  # e.g. IncompleteRead: the server hung up early
            raise DownloadError(f"download of {desc} from {url} was interrupted after {done} bytes "
                                f"({type(e).__name__}: {e}). " + _offline_hint(url, dest), missing=(url, dest),
                                reason=f"interrupted after {done} bytes") from e

        # Our own length check: urllib does not always raise when fewer bytes than promised arrive.
        if total is not None and done != total:
            raise DownloadError(f"download of {desc} from {url} was interrupted: got {done} of {total} bytes. "
                                + _offline_hint(url, dest), missing=(url, dest),
                                reason=f"interrupted after {done} of {total} bytes")
        actual = h.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise DownloadError(f"sha256 mismatch for {url}: expected {sha256}, got {actual}. "
                                f"The file was not saved to {dest}.")
        if git_sha1 is not None:
            _check_git_sha1(tmp, git_sha1, f"{url} (not saved to {dest})")
        os.replace(tmp, dest)  # atomic: dest is either the old state (absent) or the complete file
        if sha256 is None and git_sha1 is None:
            # Trust on first use: remember what we got, so later corruption is noticed.
            _sidecar(dest).write_text(f"{actual}  {dest.name}\n")
        return dest
    finally:
        if fd is not None:
            os.close(fd)
        tmp.unlink(missing_ok=True)  # a failed transfer leaves no partial file behind


def download_all(files: list[dict], desc: str) -> list[Path]:
    """Download several files, each {"url", "dest"[, "sha256"][, "git_sha1"]}; return their paths.

    Every file is tried before anything is reported, so an offline user learns about ALL the files to place
    by hand in one message, not one per attempt. A checksum mismatch is raised at once: it is not a network
    problem, and placing another file would not fix it.
    """
    paths, missing, reason = [], [], ""
    for f in files:
        if missing and not Path(f["dest"]).is_file():
            missing.append((f["url"], Path(f["dest"])))  # the network just failed: do not wait for it again
            continue
        try:
            paths.append(download_file(f["url"], f["dest"], sha256=f.get("sha256"), git_sha1=f.get("git_sha1"),
                                       desc=f"{desc} {Path(f['dest']).name}"))
        except DownloadError as e:
            if e.missing is None:
                raise
            missing.append(e.missing)
            reason = reason or e.reason
    if missing:
        where = "; ".join(f"{url} -> {dest}" for url, dest in missing)
        n = f"these {len(missing)} files" if len(missing) > 1 else "this file"
        raise DownloadError(f"could not download {desc} ({reason}). If this machine is offline, download "
                            f"{n} on a machine with network and place {'them' if len(missing) > 1 else 'it'} "
                            f"here: {where}", missing=missing[0])
    return paths
