"""Shard folders on a server: ``http(s)://HOST/PATH`` (``PATH/manifest.json``, ``PATH/shard-NNNNNN.tar``) or
webdataset's ``pipe:COMMAND`` form, where ``{}`` in COMMAND stands for the file name
(``pipe:aws s3 cp s3://bucket/train/{} -``). The manifest is fetched once; the tars are streamed as they
are read, never copied to disk first.

A connection that breaks inside a shard is opened again once, and the bytes already read are skipped (any
server will do: no range requests); when that fails too, the error names the URL and the byte it stopped at.
"""
from __future__ import annotations

import http.client
import subprocess
import time
import urllib.error
import urllib.request

from statex_dist.data.errors import DataError, MissingDataError, ShardError

TIMEOUT_S = 60
RETRY_DELAY_S = 1.0


def is_remote(spec) -> bool:
    s = str(spec)
    return s.startswith(("http://", "https://", "pipe:"))


class Location(str):
    """A remote folder or file: a string that ``/`` extends and whose ``name`` is its last part, so messages
    and the manifest's file table treat it as they treat a local path."""

    def __truediv__(self, name: str) -> "Location":
        if self.startswith("pipe:"):
            return Location(self.replace("{}", name, 1)) if "{}" in self else Location(f"{self} {name}")
        return Location(f"{self.rstrip('/')}/{name}")

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1].split()[-1]


def folder(spec: str) -> Location:
    if spec.startswith("pipe:") and "{}" not in spec:
        raise DataError(f"data folder {spec!r}: a pipe: command needs {{}} where the file name goes, e.g. "
                        f"'pipe:aws s3 cp s3://bucket/train/{{}} -'")
    return Location(spec)


def fetch(url: str) -> bytes:
    """A small remote file (the manifest), whole."""
    if url.startswith("pipe:"):
        r = subprocess.run(url[5:], shell=True, capture_output=True, timeout=TIMEOUT_S)
        if r.returncode:
            tail = r.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise MissingDataError(f"{url}: exit status {r.returncode} ({tail[0]})")
        return r.stdout
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        raise MissingDataError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise MissingDataError(f"{url}: cannot be fetched ({getattr(e, 'reason', e)})") from None


class _HTTPStream:
    """A shard's bytes from a server, read once through; one reopen when the connection breaks."""

    def __init__(self, url: str):
        self.url, self.pos, self.retried = url, 0, False
        try:
            self.resp = self._open()
        except OSError as e:
            raise ShardError(f"shard {url}: {e}") from None
        length = self.resp.headers.get("Content-Length")
        self.size = int(length) if length and length.isdigit() else None

    def _open(self):
        try:
            return urllib.request.urlopen(self.url, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:
            raise OSError(f"HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise OSError(f"cannot be fetched ({getattr(e, 'reason', e)})") from None

    def _broken(self, why: str) -> None:
        """Reopen once and skip to ``pos``; then give up naming the URL and the byte."""
        if self.retried:
            raise ShardError(f"shard {self.url}: the server stopped sending at byte {self.pos}"
                             f"{f' of {self.size}' if self.size else ''} ({why}), also after one retry")
        self.retried = True
        self.resp.close()
        time.sleep(RETRY_DELAY_S)
        try:
            self.resp = self._open()
            left = self.pos
            while left:
                got = self.resp.read(min(left, 1 << 20))
                if not got:
                    raise OSError("the body ended before the bytes already read")
                left -= len(got)
        except (OSError, http.client.HTTPException) as e:
            raise ShardError(f"shard {self.url}: the server stopped sending at byte {self.pos}"
                             f"{f' of {self.size}' if self.size else ''} ({why}); the retry failed "
                             f"({e})") from None

    def read(self, n: int = -1) -> bytes:
        while True:
            try:
                data = self.resp.read(n) if n >= 0 else self.resp.read()
            except (OSError, http.client.HTTPException) as e:   # a reset, a timeout, IncompleteRead
                self._broken(f"{type(e).__name__}: {e}")
                continue
            if not data and n != 0 and self.size is not None and self.pos < self.size:
                self._broken(f"the connection closed after {self.pos} of {self.size} bytes")
                continue
            self.pos += len(data)
            return data

    def close(self) -> None:
        self.resp.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _gopen_http(url, mode="rb", bufsize=8192, **kw):
    if mode[0] != "r":
        raise DataError(f"{url}: shards are only read from a server")
    return _HTTPStream(url)


def install() -> None:
    """Route webdataset's http(s) opening through :class:`_HTTPStream`: webdataset's own runs curl with its
    retry policy, which gives up on a half-sent body without a retry and needs curl on every machine."""
    import importlib
    gopen = importlib.import_module("webdataset.gopen")  # the package's name `gopen` is the function
    gopen.gopen_schemes["http"] = gopen.gopen_schemes["https"] = _gopen_http
