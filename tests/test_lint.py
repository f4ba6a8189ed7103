"""``container lint``: each lint passes on a good root and fails on a broken one,
with bootc's messages and output format."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cfsboot.boot import lint
from cfsboot.cli.main import main

PREPARE_ROOT = "[composefs]\nenabled = yes\n[sysroot]\nreadonly = true\n"


def passing_root(root: Path) -> Path:
    """Like bootc's passing_fixture: passes every lint that applies to it."""
    for d in lint.API_DIRS:
        (root / d).mkdir(parents=True)
    (root / "usr/lib/modules/5.7.2").mkdir(parents=True)
    (root / "usr/lib/modules/5.7.2/vmlinuz").write_text("vmlinuz")
    (root / "boot").mkdir()
    (root / "sysroot").mkdir()
    (root / "ostree").symlink_to("sysroot/ostree")
    (root / "usr/lib/ostree").mkdir(parents=True)
    (root / "usr/lib/ostree/prepare-root.conf").write_text(PREPARE_ROOT)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return passing_root(tmp_path / "root")


def results(root: Path) -> dict[str, lint.LintResult]:
    return {r.name: r for r in lint.run_lints(str(root))}


def test_passing_root(root: Path) -> None:
    rs = results(root)
    assert [n for n, r in rs.items() if not r.ok] == []
    assert [n for n, r in rs.items() if r.skipped] == ["var-tmpfiles"]   # running root only
    assert list(rs) == sorted(rs)


def _w(path: Path, data: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)


def _var_is_file(r: Path) -> None:
    os.rmdir(r / "var")
    _w(r / "var")


def _ostree_dir(r: Path) -> None:
    os.unlink(r / "ostree")
    os.mkdir(r / "ostree")


def _ostree_absolute(r: Path) -> None:
    os.unlink(r / "ostree")
    os.symlink("/sysroot/ostree", r / "ostree")


def _usr_etc(r: Path) -> None:
    os.makedirs(r / "etc")
    os.makedirs(r / "usr/etc")


def _users(r: Path) -> None:
    _w(r / "etc/passwd", "root:x:0:0::/root:/bin/sh\nsvc:x:900:900::/:/sbin/nologin\n")
    _w(r / "etc/group", "root:x:0:\nsvc:x:900:\nonlygroup:x:901:\n")
    _w(r / "usr/lib/sysusers.d/basic.conf", "u root 0\n")


def _logs(r: Path) -> None:
    _w(r / "var/log/somefile.log", "log")
    _w(r / "var/log/empty.log", "")
    _w(r / "var/log/someproject/audit.log", "audit")


CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("api-base-directories", lambda r: os.rmdir(r / "var"),
     "Missing API filesystem base directory: /var"),
    ("api-base-directories", _var_is_file,
     "Expected directory for API filesystem base directory: /var"),
    ("baseimage-composefs", lambda r: os.unlink(r / "usr/lib/ostree/prepare-root.conf"),
     "usr/lib/ostree/prepare-root.conf is not present to enable composefs"),
    ("baseimage-composefs",
     lambda r: _w(r / "usr/lib/ostree/prepare-root.conf", "[composefs]\nenabled = no\n"),
     "usr/lib/ostree/prepare-root.conf does not have composefs enabled"),
    ("baseimage-root", lambda r: os.rmdir(r / "sysroot"), "Missing /sysroot"),
    ("baseimage-root", lambda r: os.unlink(r / "ostree"),
     "Missing ostree -> sysroot/ostree link"),
    ("baseimage-root", _ostree_dir,
     "/ostree should be a symlink"),
    ("baseimage-root", _ostree_absolute,
     "Expected /ostree -> sysroot/ostree, not '/sysroot/ostree'"),
    ("bootc-kargs", lambda r: _w(r / "usr/lib/bootc/kargs.d/a.toml", "kargs = 1"),
     "/usr/lib/bootc/kargs.d/a.toml: 'kargs' must be a list of strings"),
    ("buildah-injected", lambda r: _w(r / "etc/hostname", ""),
     "/etc/hostname is an empty file; this may have been synthesized by a container runtime."),
    ("etc-usretc", _usr_etc,
     "Found /usr/etc - this is a bootc implementation detail"),
    ("kernel", lambda r: _w(r / "usr/lib/modules/6.3.1/vmlinuz"),
     "Multiple kernels found in /usr/lib/modules: 5.7.2, 6.3.1"),
    ("nonempty-boot", lambda r: os.mkdir(r / "boot/somesubdir"),
     "Found non-empty /boot:\n  somesubdir"),
    ("nonempty-boot", lambda r: os.rmdir(r / "boot"), "Missing /boot directory"),
    ("nonempty-run-tmp", lambda r: _w(r / "tmp/build-artifact"),
     "Found content in runtime-only directories (/run, /tmp):\n  /tmp/build-artifact"),
    ("nonempty-run-tmp", lambda r: _w(r / "run/systemd/resolve/something-else"),
     "  /run/systemd\n  /run/systemd/resolve\n  /run/systemd/resolve/something-else"),
    ("sysusers", _users,
     "Found /etc/passwd entry without corresponding systemd sysusers.d:\n  svc\n"
     "Found /etc/group entry without corresponding systemd sysusers.d:\n  svc\n  onlygroup"),
    ("utf8", lambda r: os.mkdir(os.fsencode(r / "usr") + b"/bad\xffdir"),
     '/usr: Found non-utf8 filename "bad\\xFFdir"'),
    ("utf8", lambda r: os.symlink(b"bad\xff", os.fsencode(r / "usr/link")),
     "/usr/link: Found non-utf8 symlink target"),
    ("var-log", _logs,
     "Found non-empty logfiles:\n  /var/log/somefile.log\n  /var/log/someproject/audit.log"),
    ("var-run", lambda r: os.makedirs(r / "var/run/foo"), "Not a symlink: var/run"),
    ("var-tmpfiles", lambda r: _w(r / "var/lib/foo/data"),
     "Found non-directory/non-symlink files in /var:\n  /var/lib/foo/data"),
]


@pytest.mark.parametrize(("name", "breakage", "message"), CASES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)])
def test_each_lint(root: Path, name: str, breakage: Callable[[Path], None],
                   message: str) -> None:
    breakage(root)
    check = next(x for x in lint.LINTS if x.name == name).check
    result = lint.LintResult(name, lint.FATAL, sections=check(str(root)))
    assert not result.ok
    assert message in result.message(truncate=False)
    others = [n for n, r in results(root).items() if not r.ok and n != name]
    assert others == []


def test_run_tmp_ignores_podman_stub_resolv(root: Path) -> None:
    _w(root / "run/systemd/resolve/stub-resolv.conf", "nameserver 127.0.0.53")
    assert results(root)["nonempty-run-tmp"].ok


def test_truncation_and_cli_output(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(7):
        _w(root / f"var/log/f{i}.log", "x")
    assert main(["container", "lint", "--rootfs", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "Lint warning: var-log: Found non-empty logfiles:",
        *(f"  /var/log/f{i}.log" for i in range(5)),
        "  ...and 2 more",
        "Checks passed: 12", "Checks skipped: 1", "Warnings: 1"]
    assert main(["container", "lint", "--rootfs", str(root), "--no-truncate"]) == 0
    assert "/var/log/f6.log" in capsys.readouterr().out
    assert main(["container", "lint", "--rootfs", str(root), "--fatal-warnings"]) == 1
    assert capsys.readouterr().err == "cfsboot: Checks failed: 1\n"
    assert main(["container", "lint", "--rootfs", str(root), "--fatal-warnings",
                 "--skip", "var-log"]) == 0
    assert "Checks skipped: 2" in capsys.readouterr().out


def test_fatal_fails_and_json(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.makedirs(root / "var/run/foo")
    assert main(["container", "lint", "--rootfs", str(root)]) == 1
    captured = capsys.readouterr()
    assert "Failed lint: var-run: Not a symlink: var/run" in captured.out
    assert captured.err == "cfsboot: Checks failed: 1\n"
    assert main(["container", "lint", "--rootfs", str(root), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["root-type"] == "alternative" and doc["failed"] == 1
    var_run = next(x for x in doc["lints"] if x["name"] == "var-run")
    assert var_run["message"] == "Not a symlink: var/run" and not var_run["ok"]


def test_list_and_unknown_skip(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["container", "lint", "--list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [x["name"] for x in listed] == sorted(lint.LINT_NAMES) and len(listed) == 14
    assert main(["container", "lint", "--list"]) == 0
    assert "- name: var-tmpfiles\n  type: warning" in capsys.readouterr().out
    assert main(["container", "lint", "--rootfs", str(root), "--skip", "nope"]) == 1
    assert "unknown lint 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_rootfs_must_be_a_directory(tmp_path: Path, kind: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "nonexistent"
    if kind == "file":
        target.write_text("not a root")
    capsys.readouterr()
    assert main(["container", "lint", "--rootfs", str(target)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"cfsboot: --rootfs {target} is not a directory")
    assert captured.err.count("\n") == 1


@pytest.mark.parametrize("kind", ["directory", "dangling-symlink"])
def test_kargs_entry_not_a_file(root: Path, kind: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    d = root / "usr/lib/bootc/kargs.d"
    d.mkdir(parents=True)
    if kind == "directory":
        (d / "10-x.toml").mkdir()
    else:
        (d / "10-x.toml").symlink_to("/nonexistent.toml")
    r = results(root)["bootc-kargs"]
    assert not r.ok
    message = r.message(truncate=False)
    assert "/usr/lib/bootc/kargs.d/10-x.toml is " + (
        "a directory" if kind == "directory" else "a symlink to a missing file") in message
