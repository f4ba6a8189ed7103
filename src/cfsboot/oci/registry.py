"""Every non-``oci:`` source through ``skopeo experimental-image-proxy``
(oci-import.md §4.3): JSON requests over a SOCK_SEQPACKET socket, data over
pipes passed with SCM_RIGHTS.  skopeo resolves manifest lists to the host
platform, converts Docker manifests to OCI and checks blob digests (errors
surface at ``FinishPipe``); we check digests too."""

from __future__ import annotations

import array
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from typing import Any, BinaryIO

from cfsboot.errors import CfsError
from cfsboot.oci.blobs import Descriptor, VerifiedReader, read_verified

MAX_REPLY = 32 * 1024
MIN_PROTOCOL = (0, 2, 3)


class ProxyError(CfsError):
    """skopeo is missing or the proxy reported an error."""


class _PipeReader(VerifiedReader):
    """A verified blob pipe that calls ``FinishPipe`` once drained."""

    def __init__(self, proxy: SkopeoSource, pipeid: int, src: BinaryIO,
                 desc: Descriptor, what: str) -> None:
        super().__init__(src, desc.digest, desc.size, what)
        self._proxy = proxy
        self._pipeid = pipeid
        self._finished = False

    def _finish(self) -> None:
        super()._finish()
        if not self._finished:
            self._finished = True
            self._proxy.call("FinishPipe", [self._pipeid])


class SkopeoSource:
    """An image source for one image reference, backed by a skopeo process."""

    def __init__(self, imgref: str, *, tls_verify: bool = True,
                 authfile: str | None = None) -> None:
        skopeo = shutil.which("skopeo")
        if skopeo is None:
            raise ProxyError(f"pulling {imgref} needs skopeo (only oci: layouts are "
                             "read without it); install the skopeo package")
        self.imgref = imgref
        self._lock = threading.Lock()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        cmd = [skopeo, "experimental-image-proxy"]
        if authfile:
            cmd.append(f"--authfile={authfile}")
        if not tls_verify:
            cmd.append("--tls-verify=false")
        try:
            self._proc = subprocess.Popen(cmd, stdin=theirs.fileno(), stdout=subprocess.DEVNULL,
                                          stderr=self._stderr, close_fds=True)
        finally:
            theirs.close()
        try:
            version = self.call("Initialize", [])[0]
            parts = tuple(int(x) for x in str(version).split(".")[:3])
            if parts < MIN_PROTOCOL:
                raise ProxyError(f"skopeo proxy protocol {version} is too old (need 0.2.3)")
            self._image = int(self.call("OpenImage", [imgref])[0])
        except BaseException:
            self.close()
            raise

    def call(self, method: str, args: list[Any]) -> tuple[Any, BinaryIO | None, int]:
        """One request/reply; returns (value, attached fd as a file, pipeid)."""
        with self._lock:
            try:
                self._sock.send(json.dumps({"method": method, "args": args}).encode())
                data, ancdata, _, _ = self._sock.recvmsg(MAX_REPLY,
                                                         socket.CMSG_SPACE(4 * 4))
            except OSError as e:
                raise ProxyError(f"skopeo proxy failed: {e.strerror}{self._stderr_tail()}") \
                    from None
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        files = [os.fdopen(fd, "rb") for fd in fds]
        if not data:
            for f in files:
                f.close()
            raise ProxyError(f"skopeo proxy exited{self._stderr_tail()}")
        reply = json.loads(data)
        if not reply.get("success"):
            for f in files:
                f.close()
            raise ProxyError(f"{self.imgref}: {method}: {reply.get('error')}")
        return reply.get("value"), files[0] if files else None, int(reply.get("pipeid") or 0)

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read()[-400:].decode("utf-8", "replace").strip()
        return f": {text.splitlines()[-1]}" if text else ""

    def manifest(self) -> tuple[str, bytes]:
        digest, f, pipeid = self.call("GetManifest", [self._image])
        if f is None:
            raise ProxyError("GetManifest returned no data")
        with f:
            data = f.read((4 << 20) + 1)
        self.call("FinishPipe", [pipeid])
        if len(data) > 4 << 20:
            raise ProxyError("manifest is too large")
        return str(digest), data

    def open_blob(self, desc: Descriptor, what: str) -> VerifiedReader:
        _, f, pipeid = self.call("GetBlob", [self._image, desc.digest, desc.size])
        if f is None:
            raise ProxyError("GetBlob returned no data")
        return _PipeReader(self, pipeid, f, desc, what)

    def read_blob(self, desc: Descriptor, what: str) -> bytes:
        r = self.open_blob(desc, what)
        with r:
            data = r.read()
            r.drain()
        return data

    def close(self) -> None:
        try:
            if self._proc.poll() is None:
                with contextlib.suppress(ProxyError, ValueError):
                    self.call("Shutdown", [])
        finally:
            self._sock.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._stderr.close()

    def __enter__(self) -> SkopeoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ProxyError", "SkopeoSource", "read_verified"]
