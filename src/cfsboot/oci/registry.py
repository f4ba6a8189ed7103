"""Every non-``oci:`` source through ``skopeo experimental-image-proxy``
(oci-import.md §4.3): JSON requests over a SOCK_SEQPACKET socket, data over
pipes passed with SCM_RIGHTS.  skopeo resolves manifest lists to the host
platform, converts Docker manifests to OCI and checks blob digests (errors
surface at ``FinishPipe``); we check digests too."""

from __future__ import annotations

import array
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from typing import Any, BinaryIO

from cfsboot.errors import CfsError
from cfsboot.oci.blobs import MEDIA_CONFIG, Descriptor, VerifiedReader, read_verified

MAX_REPLY = 32 * 1024
MIN_PROTOCOL = (0, 2, 3)
CLOSE_TIMEOUT = 10.0  # seconds close() waits for the proxy before giving up on it


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
        # skopeo closes its end of the pipe only inside FinishPipe, so EOF (the
        # "nothing beyond size" check) can be seen only after that call.
        if not self._finished:
            self._finished = True
            self._proxy.call("FinishPipe", [self._pipeid])
        super()._finish()


class _FinishingPipe(io.RawIOBase):
    """A pipe of unknown length: FinishPipe runs concurrently (skopeo closes
    its end only inside that call)."""

    def __init__(self, proxy: SkopeoSource, f: BinaryIO, pipeid: int) -> None:
        super().__init__()
        self._f = f
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._finish, args=(proxy, pipeid))
        self._thread.start()

    def _finish(self, proxy: SkopeoSource, pipeid: int) -> None:
        try:
            proxy.call("FinishPipe", [pipeid])
        except BaseException as e:  # re-raised in the reading thread
            self._errors.append(e)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._f.readinto(b)  # type: ignore[attr-defined]
        if not n:
            self._thread.join()
            if self._errors:
                raise self._errors[0]
        return int(n or 0)

    def close(self) -> None:
        self._f.close()
        self._thread.join()
        super().close()


def _passed_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The file descriptors an SCM_RIGHTS message carried."""
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return list(fds)


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
        self._image: int | None = None
        self._unanswered: list[str] = []  # requests whose reply was never read (interrupted)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        cmd = [skopeo, "experimental-image-proxy"]
        if authfile:
            cmd.append(f"--authfile={authfile}")
        if not tls_verify:
            cmd.append("--tls-verify=false")
        try:
            # A session of its own: a terminal Ctrl-C reaches only us, and we then
            # close the image, which is when skopeo removes its /var/tmp copy of an
            # archive (killed by the SIGINT, it would leave that copy behind).
            self._proc = subprocess.Popen(cmd, stdin=theirs.fileno(), stdout=subprocess.DEVNULL,
                                          stderr=self._stderr, close_fds=True,
                                          start_new_session=True)
        finally:
            theirs.close()
        try:
            version = self.call("Initialize", [])[0]
            parts = tuple(int(x) for x in str(version).split(".")[:3])
            if parts < MIN_PROTOCOL:
                raise ProxyError(f"skopeo proxy protocol {version} is too old (need 0.2.3)")
            self.call("OpenImage", [imgref])  # sets self._image
        except BaseException:
            self.close()
            raise

    def call(self, method: str, args: list[Any]) -> tuple[Any, BinaryIO | None, int]:
        """One request/reply; returns (value, attached fd as a file, pipeid)."""
        with self._lock:
            try:
                self._sock.send(json.dumps({"method": method, "args": args}).encode())
                self._unanswered.append(method)
                data, ancdata, _, _ = self._sock.recvmsg(MAX_REPLY,
                                                         socket.CMSG_SPACE(4 * 4))
                self._remember_image(self._unanswered.pop(), data)
            except OSError as e:
                raise ProxyError(f"skopeo proxy failed: {e.strerror}{self._stderr_tail()}") \
                    from None
        files = [os.fdopen(fd, "rb") for fd in _passed_fds(ancdata)]
        if not data:
            for f in files:
                f.close()
            raise ProxyError(f"skopeo proxy exited{self._stderr_tail()}")
        reply = json.loads(data)
        if not reply.get("success"):
            for f in files:
                f.close()
            error = " ".join(str(reply.get("error")).split())  # one line
            raise ProxyError(f"{self.imgref}: {method}: {error}")
        return reply.get("value"), files[0] if files else None, int(reply.get("pipeid") or 0)

    def _remember_image(self, method: str, reply: bytes) -> None:
        """Note OpenImage's handle as soon as it arrives (even after an
        interrupt), so that close() can send CloseImage for it."""
        if method != "OpenImage" or not reply:
            return
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            answer = json.loads(reply)
            if answer.get("success"):
                self._image = int(answer.get("value"))

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read()[-400:].decode("utf-8", "replace").strip()
        return f": {text.splitlines()[-1]}" if text else ""

    def manifest(self) -> tuple[str, bytes]:
        digest, f, pipeid = self.call("GetManifest", [self._image])
        if f is None:
            raise ProxyError("GetManifest returned no data")
        with _FinishingPipe(self, f, pipeid) as pipe:
            data = pipe.read((4 << 20) + 1)
            if len(data) <= 4 << 20:
                pipe.read()  # EOF: FinishPipe's result
        if len(data) > 4 << 20:
            raise ProxyError("manifest is too large")
        return str(digest), data

    def open_blob(self, desc: Descriptor, what: str) -> VerifiedReader:
        _, f, pipeid = self.call("GetBlob", [self._image, desc.digest, desc.size])
        if f is None:
            raise ProxyError("GetBlob returned no data")
        return _PipeReader(self, pipeid, f, desc, what)

    def read_blob(self, desc: Descriptor, what: str) -> bytes:
        try:
            r = self.open_blob(desc, what)
        except ProxyError:
            if desc.media_type != MEDIA_CONFIG:
                raise
            # Docker-format sources: the proxy converts the manifest, and the
            # converted config exists only through GetFullConfig (skopeo 1.9
            # cannot GetBlob it).  Its bytes must still hash to the descriptor.
            return self._full_config(desc)
        with r:
            data = r.read()
            r.drain()
        return data

    def _full_config(self, desc: Descriptor) -> bytes:
        _, f, pipeid = self.call("GetFullConfig", [self._image])
        if f is None:
            raise ProxyError("GetFullConfig returned no data")
        return read_verified(_FinishingPipe(self, f, pipeid), desc, "config")

    def close(self) -> None:
        """CloseImage (skopeo deletes its temporary copy of an archive only
        there), then Shutdown; kill the proxy only if it does not answer."""
        try:
            if self._proc.poll() is None:
                with contextlib.suppress(ProxyError, ValueError, OSError):
                    self._say_goodbye()
        finally:
            self._sock.close()
            try:
                self._proc.wait(timeout=CLOSE_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._stderr.close()

    def _say_goodbye(self) -> None:
        # Another thread may still be inside call() after an interrupt: wait for
        # it a bounded time, never forever.
        if not self._lock.acquire(timeout=CLOSE_TIMEOUT):
            return
        try:
            self._sock.settimeout(CLOSE_TIMEOUT)
            while self._unanswered:  # replies to interrupted requests: resynchronise
                data, ancdata, _, _ = self._sock.recvmsg(MAX_REPLY, socket.CMSG_SPACE(4 * 4))
                self._remember_image(self._unanswered.pop(0), data)
                for fd in _passed_fds(ancdata):
                    os.close(fd)
        finally:
            self._lock.release()
        if self._image is not None:
            image, self._image = self._image, None
            with contextlib.suppress(ProxyError):
                self.call("CloseImage", [image])
        self.call("Shutdown", [])

    def __enter__(self) -> SkopeoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ProxyError", "SkopeoSource", "read_verified"]
