"""Secure-mode code paths with a simulated fs-verity kernel (this machine has none).

The fake enables verity only on an fd opened read-only while no writable fd on
the same inode is open (ETXTBSY otherwise, as the kernel does), and measures
the real fs-verity digest of the file at enable time."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cfsboot.erofs.writer import mkfs_erofs
from cfsboot.errors import CfsError
from cfsboot.fsverity import digest_fd
from cfsboot.repository import verity
from cfsboot.repository.fsck import fsck
from cfsboot.repository.meta import SHA512, Algorithm
from cfsboot.repository.objects import ObjectError
from cfsboot.repository.repo import Repository
from cfsboot.tree.model import Directory, Stat


class FakeVerity:
    def __init__(self) -> None:
        self.enabled: dict[tuple[int, int], bytes] = {}
        self.calls = 0

    def _writable_elsewhere(self, key: tuple[int, int]) -> bool:
        for name in os.listdir("/proc/self/fd"):
            try:
                st = os.stat(f"/proc/self/fd/{name}")
                flags = int(Path(f"/proc/self/fdinfo/{name}").read_text().split()[3], 8)
            except (OSError, ValueError, IndexError):
                continue
            if (st.st_dev, st.st_ino) == key and flags & os.O_ACCMODE != os.O_RDONLY:
                return True
        return False

    def enable(self, fd: int, alg: Algorithm) -> verity.EnableResult:
        self.calls += 1
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in self.enabled:
            return "exists"
        import fcntl
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY or \
                self._writable_elsewhere(key):
            raise OSError(errno.ETXTBSY, "Text file busy")
        dup = os.dup(fd)
        try:
            os.lseek(dup, 0, os.SEEK_SET)
            self.enabled[key] = digest_fd(dup, alg.hash_name)[0]
        finally:
            os.close(dup)
        return "enabled"

    def measure(self, fd: int, alg: Algorithm) -> bytes | None:
        st = os.fstat(fd)
        return self.enabled.get((st.st_dev, st.st_ino))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeVerity:
    f = FakeVerity()
    monkeypatch.setattr(verity, "enable", f.enable)
    monkeypatch.setattr(verity, "measure", f.measure)
    return f


def test_secure_repository_round_trip(tmp_path: Path, fake: FakeVerity) -> None:
    root = tmp_path / "r"
    repo, created = Repository.init(root, SHA512)
    with repo:
        assert created and not repo.insecure
        d1 = repo.ensure_object(b"in memory" * 1000)
        with repo.object_tmpfile() as t:
            t.write(b"streamed" * 1000)
            d2 = t.finalize().digest
        sink = repo.sink()
        pending = sink.begin(5)
        pending.write(b"sink!")
        d3 = verity.digest_bytes(b"sink!", SHA512)
        pending.commit(d3)
        for d in (d1, d2, d3):
            with repo.open_object(d) as f:
                assert verity.digest_bytes(f.read(), SHA512) == d
        w = repo.create_stream(0)
        w.write_external(b"x" * 100)
        repo.write_stream(w, "s", "ref")
        img = repo.write_image("img", mkfs_erofs(Directory(Stat(0o755, 0, 0, 0, 0)), 1))
        fd, want_verity, digest = repo.open_image(img.hex())
        os.close(fd)
        assert want_verity and digest == img
        result = fsck(repo)
        assert result.ok, result.errors
    # reopened: still secure (meta.json has verity)
    with Repository.open(root) as repo:
        assert not repo.insecure
        repo.require_verity()


def test_secure_mode_rejects_missing_or_wrong_verity(tmp_path: Path, fake: FakeVerity) -> None:
    root = tmp_path / "r"
    with Repository.init(root, SHA512)[0] as repo:
        digest = repo.ensure_object(b"good")
        path = root / "objects" / digest[:1].hex() / digest[1:].hex()
        # an object planted without verity
        bad = verity.digest_bytes(b"planted", SHA512)
        (root / "objects" / bad[:1].hex()).mkdir(exist_ok=True)
        (root / "objects" / bad[:1].hex() / bad[1:].hex()).write_bytes(b"planted")
        with pytest.raises(ObjectError, match="no fs-verity"):
            repo.open_object(bad)
        with pytest.raises(ObjectError, match="no fs-verity"):
            repo.ensure_object(b"planted")
        errs = fsck(repo).errors
        assert errs == [f"fsck: object-verity-missing: objects/{bad[:1].hex()}/{bad[1:].hex()}"]
        # verity that measures differently from the name
        st = path.stat()
        fake.enabled[(st.st_dev, st.st_ino)] = bytes(64)
        with pytest.raises(ObjectError, match="mismatch"):
            repo.open_object(digest)


def test_stray_writable_fd_forces_a_verity_copy(tmp_path: Path, fake: FakeVerity) -> None:
    """A writable fd kept open elsewhere (a forked child) makes the kernel answer
    ETXTBSY; the object is then copied and verity enabled on the copy."""
    with Repository.init(tmp_path / "r", SHA512)[0] as repo:
        t = repo.object_tmpfile()
        t.write(b"busy" * 1000)
        assert t._tmp.fd is not None
        stray = os.open(f"/proc/self/fd/{t._tmp.fd}", os.O_RDWR)
        calls = fake.calls
        try:
            res = t.finalize()
        finally:
            os.close(stray)
        assert fake.calls - calls == 4  # three ETXTBSY retries, then the copy
        with repo.open_object(res.digest) as f:
            assert f.read() == b"busy" * 1000


def test_insecure_init_then_secure_open_is_insecure(tmp_path: Path, fake: FakeVerity) -> None:
    with Repository.init(tmp_path / "r", SHA512, insecure=True)[0] as repo:
        assert repo.insecure
        with pytest.raises(CfsError, match="fs-verity"):
            repo.require_verity()


def test_mount_verification_modes(tmp_path: Path, fake: FakeVerity) -> None:
    """Secure repositories ask overlayfs for verity=require and check the image's
    kernel digest; insecure ones hash the image in userspace instead."""
    from cfsboot.repository import mount

    image = mkfs_erofs(Directory(Stat(0o755, 0, 0, 0, 0)), 1)
    with Repository.init(tmp_path / "s", SHA512)[0] as repo:
        digest = repo.write_image("img", image)
        fd, _, found = repo.open_image("img")
        try:
            assert mount._verify_image(repo, "img", fd, found) is True
            with pytest.raises(CfsError, match="corrupt"):
                mount._verify_image(repo, "img", fd, bytes(64))
        finally:
            os.close(fd)
    with Repository.init(tmp_path / "i", SHA512, insecure=True)[0] as repo:
        fake.enabled.clear()
        assert repo.write_image("img", image) == digest
        fd, _, found = repo.open_image(digest.hex())
        try:
            # no verity=require: objects written on the insecure streaming path
            # have no verity, so overlayfs would refuse to read them
            assert mount._verify_image(repo, "img", fd, found) is False
            with pytest.raises(CfsError, match="corrupt"):
                mount._verify_image(repo, "img", fd, bytes(64))
        finally:
            os.close(fd)
