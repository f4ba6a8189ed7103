"""``cfsboot composefs-info``: C composefs-info output formats, errors as one line.

References: the format strings of composefs C ``tools/composefs-info.c``
(ls/objects/missing-objects/measure-file), the composefs-rs vectors' input
dumpfiles (dump), and fsverity-utils ``fsverity digest`` (measure-file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, RS_VECTORS, VECTORS, need_tool

from cfsboot.cli import parser as cli_parser
from cfsboot.cli.main import main
from cfsboot.tree.model import Directory, External, Inline, Leaf, Stat, Symlink

SIMPLE_V1 = RS_VECTORS / "simple.sha256.v1.erofs"
SPECIAL_512 = RS_VECTORS / "special-sha512.sha512.v1.erofs"
OBJ_5A = b"5a/" + b"5a" * 31
OBJ_70 = (b"70/a9125438f7255245f596c54cebb6621cb9a64f062752cf26763c1b690e7340"
          b"70a9125438f7255245f596c54cebb6621cb9a64f062752cf26763c1b690e7340")


@pytest.fixture(autouse=True)
def _only_this_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process tests build the parser from this module alone, so another
    area's half-written command cannot fail them (the subprocess test below
    runs the full CLI)."""
    monkeypatch.setattr(cli_parser, "COMMAND_MODULES", ("cfsboot.cli.composefs_info",))


def run(capsysbinary: pytest.CaptureFixture[bytes], *args: str | Path) -> tuple[int, bytes, bytes]:
    rc = main(["composefs-info", *map(str, args)])
    out, err = capsysbinary.readouterr()
    return rc, out, err


def test_ls_simple(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    rc, out, err = run(capsysbinary, "ls", SIMPLE_V1)
    assert (rc, err) == (0, b"")
    assert out == (b"/blkdev\n/chrdev\n/fifo\n/regular-external\t@ " + OBJ_5A + b"\n"
                   b"/regular-inline\n/socket\n/symlink\t-> /target\n")


def _image(tmp_path: Path, root: Directory, version: int = 1) -> Path:
    from cfsboot.erofs.writer import mkfs_erofs

    path = tmp_path / f"img{version}.cfs"
    path.write_bytes(mkfs_erofs(root, version))
    return path


def _sample_tree() -> Directory:
    st = Stat(0o644, 0, 0, 7, 0)
    linked = Leaf(st, Inline(b"x"))
    sub = Directory(Stat(0o755, 0, 0, 7, 0), {
        b"a b": linked,
        b"new\nline": Leaf(st, Symlink(b"t a\\rget")),
        b"z": linked,
    })
    return Directory(Stat(0o755, 0, 0, 7, 0), {
        b"dir": sub,
        b"ext": Leaf(st, External.from_digest(b"\x01" * 32, 10)),
    })


@pytest.mark.parametrize("version", [0, 1, 2])
def test_ls_dirs_escapes_hardlinks(capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path,
                                   version: int) -> None:
    rc, out, _ = run(capsysbinary, "ls", _image(tmp_path, _sample_tree(), version))
    assert rc == 0
    assert out == (b"/dir/\t\n"
                   b"/dir/a b\n"  # paths keep spaces (NOESCAPE_SPACE)
                   b"/dir/new\\nline\t-> t\\x20a\\\\rget\n"
                   b"/dir/z\n"  # a hard link's later name is printed bare
                   b"/ext\t@ 01/" + b"01" * 31 + b"\n")


def test_ls_filter(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    rc, out, _ = run(capsysbinary, "--filter", "symlink", "--filter", "fifo", "ls", SIMPLE_V1)
    assert (rc, out) == (0, b"/fifo\n/symlink\t-> /target\n")


def test_objects_union_sorted(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    rc, out, _ = run(capsysbinary, "objects", SPECIAL_512, SIMPLE_V1, SIMPLE_V1)
    assert (rc, out) == (0, OBJ_5A + b"\n" + OBJ_70 + b"\n")
    rc, out, _ = run(capsysbinary, "objects", RS_VECTORS / "empty.sha256.v2.erofs")
    assert (rc, out) == (0, b"")


@pytest.mark.parametrize("c_placement", [False, True])
def test_missing_objects(capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path,
                         c_placement: bool) -> None:
    store = tmp_path / "objects"
    (store / "5a").mkdir(parents=True)
    (store / OBJ_5A.decode()).write_bytes(b"")
    images = [SPECIAL_512, SIMPLE_V1]
    if c_placement:
        rc, out, _ = run(capsysbinary, "--basedir", store, "missing-objects", *images)
    else:
        rc, out, _ = run(capsysbinary, "missing-objects", "--basedir", store, *images)
    assert (rc, out) == (0, OBJ_70 + b"\n")


def test_missing_objects_needs_basedir(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    rc, out, err = run(capsysbinary, "missing-objects", SIMPLE_V1)
    assert (rc, out) == (1, b"")
    assert err.count(b"\n") == 1 and b"--basedir" in err


RS_CASES = json.loads((RS_VECTORS / "vectors.json").read_text())["cases"] \
    if (RS_VECTORS / "vectors.json").exists() else []


@pytest.mark.parametrize("case", RS_CASES, ids=[c["image"] for c in RS_CASES])
def test_dump_matches_source_dumpfile(capsysbinary: pytest.CaptureFixture[bytes],
                                      case: dict[str, object]) -> None:
    from cfsboot.tree.dumpfile import parse_dumpfile, write_dumpfile

    source = (RS_VECTORS / str(case["input"])).read_bytes()
    rc, out, _ = run(capsysbinary, "dump", RS_VECTORS / str(case["image"]))
    assert rc == 0
    assert out == write_dumpfile(parse_dumpfile(source, flavor="rs"))


def test_dump_simple_literal(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    _, out, _ = run(capsysbinary, "dump", RS_VECTORS / "simple.sha256.v2.erofs")
    assert out == (RS_VECTORS / "simple.dump").read_bytes()


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
def test_measure_file_matches_fsverity_utils(capsysbinary: pytest.CaptureFixture[bytes],
                                             tmp_path: Path, alg: str) -> None:
    fsverity = need_tool("fsverity")
    files = [tmp_path / "empty", tmp_path / "small", tmp_path / "big"]
    files[0].write_bytes(b"")
    files[1].write_bytes(b"hello\n")
    files[2].write_bytes(bytes(range(256)) * 1000)
    expected = b""
    for f in files:
        res = subprocess.run([fsverity, "digest", f"--hash-alg={alg}", "--block-size=4096",
                              str(f)], check=True, capture_output=True)
        expected += res.stdout.split()[0].split(b":")[1] + b"\n"
    args: list[str | Path] = ["measure-file", *files]
    if alg == "sha512":
        args.insert(1, "--hash=sha512")
    rc, out, _ = run(capsysbinary, *args)
    assert (rc, out) == (0, expected)


def test_measure_file_default_is_sha256(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    vectors = json.loads((RS_VECTORS / "vectors.json").read_text())["cases"]
    case = next(c for c in vectors if "fsverity_sha256" in c)
    rc, out, _ = run(capsysbinary, "measure-file", RS_VECTORS / case["image"])
    assert (rc, out) == (0, case["fsverity_sha256"].encode() + b"\n")


@pytest.mark.parametrize("command", ["ls", "dump", "objects"])
def test_bad_image_is_one_line(capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path,
                               command: str) -> None:
    bad = tmp_path / "bad.cfs"
    data = bytearray(SIMPLE_V1.read_bytes())
    data[1024:1028] = b"\0\0\0\0"  # EROFS magic
    bad.write_bytes(bytes(data))
    rc, out, err = run(capsysbinary, command, bad)
    assert (rc, out) == (1, b"")
    assert err.startswith(b"cfsboot: ") and err.count(b"\n") == 1
    assert str(bad).encode() in err and b"EROFS magic" in err


def test_missing_file_is_one_line(capsysbinary: pytest.CaptureFixture[bytes],
                                  tmp_path: Path) -> None:
    cases: list[list[str | Path]] = [["ls", tmp_path / "nope"],
                                     ["measure-file", tmp_path / "nope"]]
    for args in cases:
        rc, out, err = run(capsysbinary, *args)
        assert (rc, out) == (1, b"")
        assert err.startswith(b"cfsboot: ") and err.count(b"\n") == 1


def test_subprocess_no_traceback(tmp_path: Path) -> None:
    exe = REPO / ".venv" / "bin" / "cfsboot"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cfsboot"]
    bad = tmp_path / "garbage"
    bad.write_bytes(os.urandom(5000))
    res = subprocess.run([*cmd, "composefs-info", "ls", str(bad)], capture_output=True)
    assert res.returncode == 1
    assert res.stdout == b""
    assert res.stderr.startswith(b"cfsboot: ") and res.stderr.count(b"\n") == 1
    ok = subprocess.run([*cmd, "composefs-info", "objects", str(VECTORS / "special.dump.v1.cfs"),
                         str(SIMPLE_V1)], capture_output=True, check=True)
    assert ok.stdout == OBJ_5A + b"\n"
