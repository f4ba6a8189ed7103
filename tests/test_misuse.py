"""Command lines that used to damage data or give a silently wrong result
(review 3b): each is now refused with one line on stderr and exit status 1,
before anything is written.  Every refusal has a control next to it: the same
command with the mistake removed succeeds, so the tests can fail."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_root
from test_uki_support import make_cert, make_pe, write_key_cert

from cfsboot.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit status and stderr of ``cfsboot ARGV``."""
    capsys.readouterr()
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def refused(capsys: pytest.CaptureFixture[str], message: str, *argv: str) -> None:
    rc, err = run(capsys, *argv)
    assert (rc, err) == (1, f"cfsboot: {message}\n")


def snapshot(top: Path) -> dict[str, tuple[object, ...]]:
    """Everything ``top`` holds: type, mode, mtime, content or link target."""
    state: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                body = Path(path).read_bytes()
            else:
                body = None
            state[os.path.relpath(path, top)] = (st.st_mode, st.st_mtime_ns, body)
    st = os.stat(top)
    state["."] = (st.st_mode, st.st_mtime_ns, None)
    return state


# --- A: uki build/sign -o naming one of the inputs ----------------------------------------

@pytest.fixture
def uki_inputs(tmp_path: Path) -> Path:
    d = tmp_path / "u"
    d.mkdir()
    (d / "stub").write_bytes(make_pe([(".text", b"\xc3" * 64)]))
    (d / "kernel").write_bytes(make_pe([(".text", b"\x90" * 64)]))
    for name in ("initrd", "cmdline", "osrel", "splash", "dtb", "section", "sbat"):
        (d / name).write_bytes(f"{name}\n".encode())
    (d / "sbat").write_bytes(b"sbat,1,SBAT Version,sbat,1,https://example.invalid\n")
    key, cert = make_cert("misuse db")
    write_key_cert(d, "db", key, cert)
    write_key_cert(d, "extra", *make_cert("misuse extra"))
    return d


def _build_argv(d: Path, out: Path) -> list[str]:
    return ["uki", "build", "--stub", str(d / "stub"), "--linux", str(d / "kernel"),
            "--initrd", str(d / "initrd"), "--cmdline", f"@{d / 'cmdline'}",
            "--os-release", f"@{d / 'osrel'}", "--uname", "6.1", "--splash", str(d / "splash"),
            "--devicetree", str(d / "dtb"), "--section", f".extra:@{d / 'section'}",
            "--sbat", f"@{d / 'sbat'}", "--key", str(d / "db.key"), "--cert", str(d / "db.crt"),
            "--extra-cert", str(d / "extra.crt"), "--no-sign-kernel", "-o", str(out)]


@pytest.mark.parametrize(("option", "name"), [
    ("--linux", "kernel"), ("--initrd", "initrd"), ("--stub", "stub"), ("--cmdline", "cmdline"),
    ("--os-release", "osrel"), ("--splash", "splash"), ("--devicetree", "dtb"),
    ("--section", "section"), ("--sbat", "sbat"), ("--key", "db.key"), ("--cert", "db.crt"),
    ("--extra-cert", "extra.crt")])
def test_uki_build_output_is_an_input(capsys: pytest.CaptureFixture[str], uki_inputs: Path,
                                      option: str, name: str) -> None:
    before = snapshot(uki_inputs)
    out = uki_inputs / name
    refused(capsys, f"--output {out} is also the {option} input; write the UKI elsewhere",
            *_build_argv(uki_inputs, out))
    assert snapshot(uki_inputs) == before


def test_uki_build_output_reaches_an_input_by_another_name(
        capsys: pytest.CaptureFixture[str], uki_inputs: Path, tmp_path: Path) -> None:
    """A symlink to the kernel (atomic writes replace a link's target) and a
    hard link are the same file too."""
    (tmp_path / "link").symlink_to(uki_inputs / "kernel")
    os.link(uki_inputs / "stub", tmp_path / "hard")
    before = snapshot(uki_inputs)
    for out, option in ((tmp_path / "link", "--linux"), (tmp_path / "hard", "--stub")):
        refused(capsys, f"--output {out} is also the {option} input; write the UKI elsewhere",
                *_build_argv(uki_inputs, out))
    assert snapshot(uki_inputs) == before
    # Control: the same command line writing elsewhere works.
    rc, _ = run(capsys, *_build_argv(uki_inputs, tmp_path / "uki.efi"))
    assert rc == 0 and (tmp_path / "uki.efi").read_bytes()[:2] == b"MZ"


def test_uki_build_default_stub_is_an_input(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            ) -> None:
    from cfsboot.boot import uki
    stub = tmp_path / "linuxx64.efi.stub"
    stub.write_bytes(make_pe())
    monkeypatch.setattr(uki, "default_stub_path", lambda arch, addon: str(stub))
    refused(capsys, f"--output {stub} is also the --stub input; write the UKI elsewhere",
            "uki", "build", "--linux", str(stub.parent / "missing"), "-o", str(stub))


def test_uki_sign_output_is_key_material(capsys: pytest.CaptureFixture[str],
                                         uki_inputs: Path, tmp_path: Path) -> None:
    image = tmp_path / "app.efi"
    image.write_bytes(make_pe())
    key, cert, extra = (str(uki_inputs / n) for n in ("db.key", "db.crt", "extra.crt"))
    before = snapshot(uki_inputs)
    for command in ("sign", "resign"):
        for out, option in ((key, "--key"), (cert, "--cert"), (extra, "--extra-cert")):
            refused(capsys, f"--output {out} is also the {option} input; write the signed "
                    "image elsewhere", "uki", command, "--key", key, "--cert", cert,
                    "--extra-cert", extra, "-o", out, str(image))
    # Signing the key file "in place" is the same mistake without -o.
    refused(capsys, f"FILE {key} is also the --key input; write the signed image elsewhere",
            "uki", "sign", "--key", key, "--cert", cert, key)
    assert snapshot(uki_inputs) == before
    assert image.read_bytes() == make_pe()
    # Controls: in place, and -o the image itself, stay allowed.
    assert run(capsys, "uki", "sign", "--key", key, "--cert", cert, str(image))[0] == 0
    assert run(capsys, "uki", "resign", "--key", key, "--cert", cert, "-o", str(image),
               str(image))[0] == 0


# --- B: keys generate and symlinks ---------------------------------------------------------

def test_keys_generate_refuses_symlinks(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "keys", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "db.key").symlink_to(elsewhere / "stolen.key")  # dangling
    before = snapshot(tmp_path)
    for extra in ([], ["--force"]):
        refused(capsys, f"{out / 'db.key'} is a symbolic link; keys are only written into "
                f"{out} itself (remove the link)", "keys", "generate", str(out), *extra)
        assert snapshot(tmp_path) == before
    # A link to an existing file: its target is not overwritten either.
    (out / "db.key").unlink()
    (elsewhere / "kept").write_bytes(b"precious")
    (out / "GUID.txt").symlink_to(elsewhere / "kept")
    refused(capsys, f"{out / 'GUID.txt'} is a symbolic link; keys are only written into "
            f"{out} itself (remove the link)", "keys", "generate", str(out), "--force")
    assert (elsewhere / "kept").read_bytes() == b"precious"
    # Control: without the link, keys are generated, the key private.
    (out / "GUID.txt").unlink()
    assert run(capsys, "keys", "generate", str(out))[0] == 0
    assert stat.S_IMODE((out / "db.key").stat().st_mode) == 0o600
    assert sorted(os.listdir(elsewhere)) == ["kept"]


def test_key_file_write_replaces_a_link_made_meanwhile(tmp_path: Path) -> None:
    """If a link appears after the check, the write replaces it rather than
    writing through it."""
    from cfsboot.cli.keys import _write_temporary
    (tmp_path / "target").write_bytes(b"untouched")
    (tmp_path / "dir").mkdir()
    fd = os.open(tmp_path / "dir", os.O_RDONLY | os.O_DIRECTORY)
    try:
        tmp = _write_temporary(fd, str(tmp_path / "dir"), "db.key", b"secret", 0o600)
        (tmp_path / "dir" / "db.key").symlink_to(tmp_path / "target")  # meanwhile
        os.rename(tmp, "db.key", src_dir_fd=fd, dst_dir_fd=fd)  # as run_generate does
    finally:
        os.close(fd)
    assert (tmp_path / "target").read_bytes() == b"untouched"
    key = tmp_path / "dir" / "db.key"
    assert not key.is_symlink() and key.read_bytes() == b"secret"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert os.listdir(tmp_path / "dir") == ["db.key"]


# --- C: create-image with the repository inside the source ---------------------------------

def _init(capsys: pytest.CaptureFixture[str], repo: Path, *extra: str) -> None:
    rc, err = run(capsys, "repo", "init", "--insecure", str(repo), *extra)
    assert rc == 0, err


def test_create_image_repository_inside_source(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    src = tmp_path / "root"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hostname").write_bytes(b"host\n" * 100)
    repo = src / "var" / "repo"
    _init(capsys, repo)
    (tmp_path / "alias").symlink_to(src)
    before = snapshot(src)
    for source in (str(src), str(tmp_path / "alias")):
        refused(capsys, f"repository {repo} is inside {source}: its objects would become part "
                "of the image; use a repository outside the tree",
                "create-image", "--repo", str(repo), source, "img")
        assert snapshot(src) == before
    # Control: a repository next to the tree.
    outside = tmp_path / "repo"
    _init(capsys, outside)
    assert run(capsys, "create-image", "--repo", str(outside), str(src), "img")[0] == 0


# --- D: mount into the repository, nested upper/work ----------------------------------------

def _mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


@contextlib.contextmanager
def _no_new_mounts(top: Path) -> Iterator[None]:
    """Fail if a refused mount happened after all, and undo it."""
    before = _mounts()
    try:
        yield
    finally:
        after = _mounts()
        if after != before:
            for line in reversed(after.splitlines()):
                point = line.split()[4]
                if point.startswith(str(top)) and line not in before:
                    subprocess.run(["umount", "-l", point], check=False)
        assert after == before


@pytest.fixture
def mount_repo(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    (src / "f").write_bytes(b"data" * 100)
    _init(capsys, repo)
    assert run(capsys, "create-image", "--repo", str(repo), str(src), "img")[0] == 0
    return repo


def test_mount_into_the_repository(capsys: pytest.CaptureFixture[str], mount_repo: Path,
                                   tmp_path: Path) -> None:
    repo = mount_repo
    before = snapshot(repo)
    with _no_new_mounts(tmp_path):
        for point in (repo, repo / "objects", repo / "images"):
            refused(capsys, f"mount point {point} is inside the repository {repo}: the mount "
                    "would hide it; mount the image elsewhere",
                    "mount", "--repo", str(repo), "img", str(point))
    assert snapshot(repo) == before


def test_mount_upper_and_work_directories(capsys: pytest.CaptureFixture[str],
                                          mount_repo: Path, tmp_path: Path) -> None:
    repo, mnt = mount_repo, tmp_path / "mnt"
    sub = next(p for p in (repo / "objects").iterdir())
    upper, work = tmp_path / "upper", tmp_path / "work"
    for d in (mnt, upper, work, upper / "w", work / "u"):
        d.mkdir()
    before = snapshot(repo)
    base = ["mount", "--repo", str(repo), "img", str(mnt), "--read-write"]
    with _no_new_mounts(tmp_path):
        refused(capsys, f"--upperdir {sub} is inside the repository {repo}: overlayfs would "
                "write into it; use a directory outside",
                *base, "--upperdir", str(sub), "--workdir", str(work))
        refused(capsys, f"--workdir {repo} is inside the repository {repo}: overlayfs would "
                "write into it; use a directory outside",
                *base, "--upperdir", str(upper), "--workdir", str(repo))
        refused(capsys, f"--workdir {upper / 'w'} is inside --upperdir {upper}; overlayfs "
                "needs them apart (e.g. side by side)",
                *base, "--upperdir", str(upper), "--workdir", str(upper / "w"))
        refused(capsys, f"--upperdir {work / 'u'} is inside --workdir {work}; overlayfs "
                "needs them apart (e.g. side by side)",
                *base, "--upperdir", str(work / "u"), "--workdir", str(work))
        refused(capsys, f"--upperdir and --workdir are the same directory {upper}; overlayfs "
                "needs two separate directories",
                *base, "--upperdir", str(upper), "--workdir", str(upper))
    assert snapshot(repo) == before


def test_mount_point_in_the_repository_through_a_bind_mount(
        capsys: pytest.CaptureFixture[str], mount_repo: Path, tmp_path: Path) -> None:
    """Another mount of the repository directory is the repository too; and
    the control: side-by-side upper/work directories mount and unmount."""
    need_root()
    repo, alias = mount_repo, tmp_path / "alias"
    alias.mkdir()
    subprocess.run(["mount", "--bind", str(repo), str(alias)], check=True)
    try:
        with _no_new_mounts(tmp_path):
            refused(capsys, f"mount point {alias / 'objects'} is inside the repository {repo}: "
                    "the mount would hide it; mount the image elsewhere",
                    "mount", "--repo", str(repo), "img", str(alias / "objects"))
    finally:
        subprocess.run(["umount", str(alias)], check=True)
    mnt, upper, work = tmp_path / "mnt", tmp_path / "upper", tmp_path / "work"
    for d in (mnt, upper, work):
        d.mkdir()
    if "overlay" not in Path("/proc/filesystems").read_text():
        pytest.skip("kernel lacks overlayfs")
    before = _mounts()
    rc, err = run(capsys, "mount", "--repo", str(repo), "img", str(mnt), "--read-write",
                  "--upperdir", str(upper), "--workdir", str(work))
    assert rc == 0, err
    try:
        assert (mnt / "f").read_bytes() == b"data" * 100
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert _mounts() == before


# --- E: repo init on a directory that is something else -------------------------------------

def test_repo_init_refuses_a_non_empty_directory(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "os-release").write_bytes(b"ID=test\n")
    (rootfs / "images").mkdir()  # what --reset-metadata would delete
    (rootfs / "images" / "photo.png").write_bytes(b"png")
    before = snapshot(rootfs)
    for extra in ([], ["--ensure"], ["--reset-metadata"]):
        refused(capsys, f"{rootfs} is not empty and not a composefs repository (no "
                "meta.json); give an empty or new directory",
                "repo", "init", "--insecure", str(rootfs), *extra)
        assert snapshot(rootfs) == before
    # Controls: a new, an empty, and an initialized directory.
    _init(capsys, tmp_path / "new")
    (tmp_path / "empty" / "lost+found").mkdir(parents=True)
    _init(capsys, tmp_path / "empty")
    _init(capsys, tmp_path / "new")
    assert (tmp_path / "empty" / "meta.json").is_file()


def test_repo_init_keeps_upgrading_old_format(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    """An old-format repository (objects/, images/, streams/, no meta.json) is
    still upgraded."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    (src / "f").write_bytes(b"old" * 100)
    _init(capsys, repo, "--algorithm", "fsverity-sha256-12")
    assert run(capsys, "create-image", "--repo", str(repo), str(src), "img")[0] == 0
    (repo / "meta.json").unlink()
    capsys.readouterr()
    assert main(["repo", "init", "--insecure", "--ensure", "--algorithm",
                 "fsverity-sha256-12", str(repo)]) == 0
    assert "Upgraded legacy repository" in capsys.readouterr().out
    assert (repo / "meta.json").is_file()
    assert b"fsverity-sha256-12" in (repo / "meta.json").read_bytes()
    assert run(capsys, "repo", "--repo", str(repo), "fsck")[0] == 0


# --- F: mkcomposefs --digest-store in a repository -------------------------------------------

@pytest.fixture
def sha512_repo(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    _init(capsys, repo)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 5000)
    assert run(capsys, "create-image", "--repo", str(repo), str(src), "img")[0] == 0
    return repo


def test_mkcomposefs_digest_store_of_another_algorithm(
        capsys: pytest.CaptureFixture[str], sha512_repo: Path, tmp_path: Path) -> None:
    repo, src, image = sha512_repo, tmp_path / "src", tmp_path / "out.cfs"
    (src / "g").write_bytes(b"y" * 7000)  # an object the repository does not have
    store = repo / "objects"
    before = snapshot(repo)
    refused(capsys, f"--digest-store {store} is the object store of a SHA-512 repository: "
            "add --hash sha512", "mkcomposefs", "--digest-store", str(store), str(src),
            str(image))
    refused(capsys, f"--digest-store {store} is the object store of a SHA-512 repository: "
            "use --hash sha512", "mkcomposefs", "--hash", "sha256", "--digest-store",
            str(store), str(src), str(image))
    refused(capsys, f"--digest-store {repo} is a composefs repository, not an object store; "
            "use its objects/ directory or cfsboot create-image",
            "mkcomposefs", "--hash", "sha512", "--digest-store", str(repo), str(src),
            str(image))
    for inside in (repo / "images", repo / "objects" / "ab"):
        refused(capsys, f"--digest-store {inside} is inside the composefs repository "
                f"{repo}; use its objects/ directory or cfsboot create-image",
                "mkcomposefs", "--hash", "sha512", "--digest-store", str(inside),
                str(src), str(image))
    assert snapshot(repo) == before and not image.exists()
    # Control: the matching hash stores into the repository, which stays sound.
    assert run(capsys, "mkcomposefs", "--hash", "sha512", "--digest-store", str(store),
               str(src), str(image))[0] == 0
    assert snapshot(repo) != before
    assert run(capsys, "repo", "--repo", str(repo), "fsck")[0] == 0


def test_mkcomposefs_digest_store_of_a_sha256_repository(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """C mode hashes with SHA-256: a SHA-256 repository's objects/ fits."""
    repo, src = tmp_path / "repo", tmp_path / "src"
    _init(capsys, repo, "--algorithm", "fsverity-sha256-12")
    src.mkdir()
    (src / "f").write_bytes(b"z" * 5000)
    rc, err = run(capsys, "mkcomposefs", "--digest-store", str(repo / "objects"), str(src),
                  str(tmp_path / "out.cfs"))
    assert rc == 0, err
    assert run(capsys, "repo", "--repo", str(repo), "fsck")[0] == 0


def test_mkcomposefs_digest_store_beside_another_meta_json(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A meta.json that is not a repository's does not make a repository."""
    (tmp_path / "meta.json").write_text('{"title": "my project"}\n')
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"z" * 5000)
    rc, err = run(capsys, "mkcomposefs", "--digest-store", str(tmp_path / "objects"), str(src),
                  str(tmp_path / "out.cfs"))
    assert rc == 0, err


def test_mkcomposefs_image_is_not_its_own_dumpfile(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    dump = tmp_path / "d"
    dump.write_bytes(b"/ 0 40755 2 0 0 0 0.0 - - -\n")
    (tmp_path / "link").symlink_to(dump)
    for image in (dump, tmp_path / "link"):
        capsys.readouterr()
        assert main(["mkcomposefs", "--from-file", str(dump), str(image)]) == 1
        err = capsys.readouterr().err
        assert err == (f"cfsboot: IMAGE {image} is the dumpfile being read; write the image "
                       "elsewhere\n")
    assert dump.read_bytes() == b"/ 0 40755 2 0 0 0 0.0 - - -\n"
    assert main(["mkcomposefs", "--from-file", str(dump), str(tmp_path / "i.cfs")]) == 0


def test_key_set_failure_names_the_file_and_keeps_the_old_set(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A name that cannot be replaced by a file is refused before anything is
    written, so no key of the old set is replaced by half a new one."""
    keys = tmp_path / "k"
    rc, err = run(capsys, "keys", "generate", str(keys), "--key-size", "2048")
    assert rc == 0, err
    old = {p.name: p.read_bytes() for p in keys.iterdir()}
    (keys / "db.esl").unlink()
    (keys / "db.esl").mkdir()  # cannot be replaced by a rename
    rc, err = run(capsys, "keys", "generate", str(keys), "--key-size", "2048", "--force")
    assert (rc, err) == (1, f"cfsboot: {keys}/db.esl is not a regular file; remove it first\n")
    assert sorted(p.name for p in keys.iterdir()) == sorted(old)  # no .tmp left
    for name, data in old.items():
        if name != "db.esl":
            assert (keys / name).read_bytes() == data, name
