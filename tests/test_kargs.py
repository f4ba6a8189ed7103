"""kargs.d parsing and the sealed command line (bootc bootc_kargs.rs test cases)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cfsboot.boot.kargs import (
    Cmdline,
    KargsError,
    identical,
    kargs_in_root,
    parse_kargs_toml,
    rust_arch,
    sealed_cmdline,
)

D = "ab" * 64


def test_arch_matching_as_bootc() -> None:
    plain = 'kargs = ["console=tty0", "nosmt"]'
    assert parse_kargs_toml(plain, "x86_64") == ["console=tty0", "nosmt"]
    assert parse_kargs_toml(plain, "aarch64") == ["console=tty0", "nosmt"]
    only_x86 = plain + '\nmatch-architectures = ["x86_64"]\n'
    assert parse_kargs_toml(only_x86, "aarch64") == []
    assert parse_kargs_toml(only_x86, "x86_64") == ["console=tty0", "nosmt"]
    both = plain + '\nmatch-architectures = ["x86_64", "aarch64"]\n'
    assert parse_kargs_toml(both, "aarch64") == ["console=tty0", "nosmt"]
    # Rust names, not uname -m / Debian names
    ppc = plain + '\nmatch-architectures = ["ppc64le"]\n'
    assert parse_kargs_toml(ppc, rust_arch("ppc64le")) == []
    assert rust_arch("ppc64le") == "powerpc64" and rust_arch("amd64") == "x86_64"
    assert rust_arch("x64") == "x86_64" and rust_arch("aa64") == "aarch64"


@pytest.mark.parametrize(("text", "message"), [
    ('kargs = ["console=tty0", "nosmt"]\nfoo="bar"', "unknown key 'foo'"),
    ('foo="bar"', "unknown key 'foo'"),
    ('', "missing required key 'kargs'"),
    ('kargs = "rw"', "'kargs' must be a list of strings"),
    ('kargs = [1]', "'kargs' must be a list of strings"),
    ('kargs = ["rw"]\nmatch-architectures = "x86_64"', "'match-architectures' must be a list"),
    ('kargs = [', "invalid TOML"),
    ('match_architectures = []\nkargs = []', "unknown key 'match_architectures'"),
])
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(KargsError, match=message):
        parse_kargs_toml(text, "x86_64")


def test_kargs_in_root(tmp_path: Path) -> None:
    assert kargs_in_root(str(tmp_path), "x86_64") == []          # no directory
    d = tmp_path / "usr/lib/bootc/kargs.d"
    d.mkdir(parents=True)
    assert kargs_in_root(str(tmp_path), "x86_64") == []          # empty directory
    (d / "somegarbage").write_text("garbage")                    # not .toml: ignored
    (d / "02-bar.toml").write_text('kargs = ["console=ttyS1"]')
    (d / "01-foo.toml").write_text('kargs = ["console=tty0", "nosmt"]')
    assert kargs_in_root(str(tmp_path), "x86_64") == ["console=tty0", "nosmt", "console=ttyS1"]
    # one entry may hold several arguments; identical ones are not repeated
    (d / "03-more.toml").write_text('kargs = ["nosmt quiet", "console=tty0", '
                                    '"foo-bar=1", "foo_bar=1", "foo_bar=2"]')
    assert kargs_in_root(str(tmp_path), "x86_64") == [
        "console=tty0", "nosmt", "console=ttyS1", "quiet", "foo-bar=1", "foo_bar=2"]
    (d / "04-bad.toml").write_text("kargs = 1")
    with pytest.raises(KargsError, match=r"04-bad\.toml"):
        kargs_in_root(str(tmp_path), "x86_64")


def test_kargs_dir_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "usr/lib/bootc").mkdir(parents=True)
    (tmp_path / "usr/lib/bootc/kargs.d").write_text("not a directory")
    with pytest.raises(KargsError, match="is not a directory"):
        kargs_in_root(str(tmp_path), "x86_64")


def test_identical_and_cmdline() -> None:
    assert identical("a-b=1", "a_b=1") and not identical("a=1", "a=2")
    assert not identical("rw", "rw=") and identical("rw", "rw")
    line = Cmdline(["rw", "rw", "console=tty0", "console=ttyS0", 'x="a b"', 'x="a b"'])
    assert str(line) == 'rw console=tty0 console=ttyS0 x="a b"'


def test_sealed_cmdline_order_and_reserved() -> None:
    assert sealed_cmdline(["rw", "quiet"], D, False, ["quiet", "a=1 b"]) == \
        f"rw quiet composefs={D} a=1 b"
    assert sealed_cmdline([], D, True) == f"composefs=?{D}"
    for bad in ("composefs=x", "composefs.digest=v1-sha512-12:aa"):
        with pytest.raises(KargsError, match="not allowed"):
            sealed_cmdline([bad], D, False)
        with pytest.raises(KargsError, match="not allowed"):
            sealed_cmdline([], D, False, [bad])
    assert sealed_cmdline(["composefs_backup=1"], D, False) == f"composefs_backup=1 composefs={D}"


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.mkdir(), "/usr/lib/bootc/kargs.d/10-x.toml is a directory; kargs.d files "
                          "must be regular files"),
    (lambda p: p.symlink_to("/missing.toml"), "/usr/lib/bootc/kargs.d/10-x.toml is a symlink "
                                              "to a missing file"),
    (lambda p: p.symlink_to("/etc/cfsboot-only-in-root"), "/usr/lib/bootc/kargs.d/10-x.toml is a "
                                                "symlink; kargs.d files must be regular files"),
], ids=["directory", "dangling-symlink", "symlink"])
def test_kargs_entry_not_a_regular_file(tmp_path: Path, make: object, message: str) -> None:
    d = tmp_path / "usr/lib/bootc/kargs.d"
    d.mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/cfsboot-only-in-root").write_text("x")   # resolved in the root
    make(d / "10-x.toml")  # type: ignore[operator]
    with pytest.raises(KargsError) as info:
        kargs_in_root(str(tmp_path), "x86_64")
    assert str(info.value) == message or str(info.value).startswith(message)
    assert "\n" not in str(info.value)
