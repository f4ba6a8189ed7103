"""`cfsboot mkcomposefs` as a drop-in for C mkcomposefs and composefs-rs, over
every public vector, plus its error handling."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import RS_VECTORS, VECTORS, load_json, need_vectors

from cfsboot.cli.main import main


def c_cases() -> list[dict[str, Any]]:
    if not (VECTORS / "vectors.json").exists():
        return []
    return [c for c in load_json(VECTORS / "vectors.json")["cases"] if not c.get("must_fail")]


def rs_cases() -> list[dict[str, Any]]:
    if not (RS_VECTORS / "vectors.json").exists():
        return []
    return list(load_json(RS_VECTORS / "vectors.json")["cases"])


def fail_inputs() -> list[str]:
    if not (VECTORS / "vectors.json").exists():
        return []
    return [c["input"] for c in load_json(VECTORS / "vectors.json")["cases"] if c.get("must_fail")]


@pytest.mark.parametrize("case", c_cases(), ids=lambda c: f"{c['input']}-{c['format']}"
                         f"-max{c['max_version']}")
def test_c_vector(case: dict[str, Any], tmp_path: Path,
                  capsys: pytest.CaptureFixture[str]) -> None:
    need_vectors()
    out = tmp_path / "out.cfs"
    args = [a for a in case["mkcomposefs_args"] if a != "--from-file"]
    rc = main(["mkcomposefs", "--from-file", *args, "--print-digest",
               str(VECTORS / case["input"]), str(out)])
    assert rc == 0
    data = out.read_bytes()
    assert hashlib.sha256(data).hexdigest() == case["image_sha256"]
    assert capsys.readouterr().out.strip() == case["fsverity_sha256"]


@pytest.mark.parametrize("case", rs_cases(),
                         ids=lambda c: f"{c['input']}-{c['object_id_algorithm']}"
                         f"-v{c['erofs_format']}")
def test_rs_vector(case: dict[str, Any], tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    need_vectors()
    out = tmp_path / "out.erofs"
    alg = case["object_id_algorithm"]
    rc = main(["mkcomposefs", "--from-file", "--format", str(case["erofs_format"]),
               "--hash", alg, "--print-digest", str(RS_VECTORS / case["input"]), str(out)])
    assert rc == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == case["image_sha256"]
    assert capsys.readouterr().out.strip() == case[f"fsverity_{alg}"]


@pytest.mark.parametrize("name", fail_inputs())
def test_should_fail_leaves_no_image(name: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    need_vectors()
    out = tmp_path / "out.cfs"
    for extra in ([], ["--min-version=1"]):
        assert main(["mkcomposefs", "--from-file", *extra, str(VECTORS / name), str(out)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("cfsboot: ") and err.count("\n") == 1, err
        assert os.listdir(tmp_path) == []


def test_print_digest_only_writes_nothing(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    need_vectors()
    case = next(c for c in c_cases() if c["input"] == "special.dump" and c["format"] == "v0"
                and c["max_version"] == 1)
    assert main(["mkcomposefs", "--from-file", "--print-digest-only",
                 str(VECTORS / "special.dump")]) == 0
    assert capsys.readouterr().out.strip() == case["fsverity_sha256"]


@pytest.mark.parametrize("argv, message", [
    (["--from-file", "/nonexistent.dump", "x"], "No such file"),
    (["--from-file", "--print-digest-only", "a", "b"], "--print-digest-only"),
    (["--from-file", "a"], "no output image"),
    (["--max-version=2", "--from-file", "a", "b"], "unsupported format version"),
    (["--skip-xattrs", "--user-xattrs", "a", "b"], "conflict"),
    (["/nonexistent-dir", "b"], "not a directory"),
])
def test_errors_are_one_line(argv: list[str], message: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    os.chdir(tmp_path)
    assert main(["mkcomposefs", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "b").exists() and not (tmp_path / "x").exists()


def test_unwritable_output_is_one_line(tmp_path: Path) -> None:
    need_vectors()
    proc = subprocess.run(
        [sys.executable, "-m", "cfsboot", "mkcomposefs", "--from-file",
         str(VECTORS / "special.dump"), str(tmp_path / "missing-dir" / "out.cfs")],
        capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("cfsboot: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_directory_with_digest_store(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "small").write_bytes(b"tiny")
    big = b"0123456789" * 1000
    (src / "sub" / "big").write_bytes(big)
    store = tmp_path / "store"
    assert main(["mkcomposefs", f"--digest-store={store}", str(src),
                 str(tmp_path / "img.cfs")]) == 0
    from cfsboot.fsverity import fsverity_digest
    digest = fsverity_digest(big, "sha256").hex()
    assert (store / digest[:2] / digest[2:]).read_bytes() == big
    assert [p.name for p in store.rglob("*") if p.is_file()] == [digest[2:]]


@pytest.mark.parametrize("argv, message", [
    (["composefs-info", "ls", "/dev/zero"], "more than 1024 MiB"),
    (["composefs-info", "ls", "/"], "is a directory"),
    (["composefs-info", "measure-file", "/dev/zero"], "not a regular file"),
    (["mkcomposefs", "--from-file", "/", "x.cfs"], "is a directory"),
    (["mkcomposefs", "--max-version=-1", "--from-file", "-", "x.cfs"], "format version"),
    (["mkcomposefs", "--min-version=2", "--from-file", "-", "x.cfs"], "format version"),
])
def test_odd_inputs_one_line(argv: list[str], message: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("cfsboot.inputs.STREAM_LIMIT", 1 << 20)
    monkeypatch.setattr("cfsboot.inputs.read_input.__defaults__", (1 << 20,))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err.replace("1 MiB", "1024 MiB") and err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []


def test_negative_mtime_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """composefs-rs writes a pre-1970 mtime as a negative number; we read it back."""
    dump = b"/ 0 40755 2 0 0 0 -315619200.500000000 - - -\n/f 0 100644 1 0 0 0 -1.0 - - -\n"
    (tmp_path / "in.dump").write_bytes(dump)
    assert main(["mkcomposefs", "--from-file", str(tmp_path / "in.dump"),
                 str(tmp_path / "out.cfs")]) == 0
    capsys.readouterr()
    assert main(["composefs-info", "dump", str(tmp_path / "out.cfs")]) == 0
    assert capsys.readouterr().out.encode() == dump


# ---- IMAGE inside SOURCE (C mode): C creates/truncates IMAGE before its scan ----

def _populate(src: Path) -> None:
    (src / "sub").mkdir(parents=True)
    (src / "hello").write_bytes(b"hello\n")
    (src / "sub" / "big").write_bytes(bytes(range(256)) * 40)
    (src / "sub" / "link").symlink_to("../hello")


def _dump(image: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["composefs-info", "dump", str(image)]) == 0
    return capsys.readouterr().out


@pytest.fixture
def oracle_work() -> Any:
    """A scratch directory inside the C oracle's chroot (skips without it)."""
    from test_c_oracle import ORACLE, need_oracle
    need_oracle()
    import shutil
    import tempfile
    work = Path(tempfile.mkdtemp(dir=ORACLE / "tmp", prefix="cfsboot-cli-"))
    try:
        yield work, "/" + str(work.relative_to(ORACLE))
    finally:
        shutil.rmtree(work)


@pytest.mark.parametrize("where", ["out.cfs", "sub/out.cfs"])
def test_new_image_inside_source_matches_c(where: str, oracle_work: Any) -> None:
    from test_c_oracle import c_mkcomposefs
    work, inside = oracle_work
    src = work / "src"
    _populate(src)
    c_mkcomposefs(["--use-epoch", f"{inside}/src", f"{inside}/src/{where}"])
    c_image = (src / where).read_bytes()
    (src / where).unlink()
    assert main(["mkcomposefs", "--use-epoch", str(src), str(src / where)]) == 0
    assert (src / where).read_bytes() == c_image
    assert sorted(p.name for p in (src / where).parent.iterdir()
                  if p.name.startswith(".")) == []  # no temporary file left


def test_existing_image_inside_source_matches_c(oracle_work: Any) -> None:
    from test_c_oracle import c_mkcomposefs
    work, inside = oracle_work
    src = work / "src"
    _populate(src)
    old = b"an older image\n" * 300
    (src / "out.cfs").write_bytes(old)
    (src / "out.cfs").chmod(0o600)
    c_mkcomposefs(["--use-epoch", f"{inside}/src", f"{inside}/src/out.cfs"])
    c_image = (src / "out.cfs").read_bytes()
    (src / "out.cfs").write_bytes(old)  # as it was before C truncated it
    assert main(["mkcomposefs", "--use-epoch", str(src), str(src / "out.cfs")]) == 0
    assert (src / "out.cfs").read_bytes() == c_image
    assert (src / "out.cfs").stat().st_mode & 0o777 == 0o600


def test_image_inside_source_is_empty_entry(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Without the oracle: the image lists itself as an empty file, new or existing."""
    src = tmp_path / "src"
    _populate(src)
    for _ in range(2):  # first a new IMAGE, then the existing one
        assert main(["mkcomposefs", str(src), str(src / "out.cfs")]) == 0
        lines = _dump(src / "out.cfs", capsys).splitlines()
        entry = next(line for line in lines if line.startswith("/out.cfs "))
        assert entry.split()[1:3] == ["0", "100644"] and entry.split()[8:11] == ["-"] * 3
        assert len(lines) == 6  # /, hello, out.cfs, sub, sub/big, sub/link
    # --format (composefs-rs semantics) does not have the quirk
    (src / "out.cfs").unlink()
    assert main(["mkcomposefs", "--format", "1", str(src), str(src / "out.cfs")]) == 0
    assert not any(line.startswith("/out.cfs ")
                   for line in _dump(src / "out.cfs", capsys).splitlines())


def test_image_inside_source_failure_leaves_nothing(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from cfsboot.errors import CfsError

    def fail(*_args: Any, **_kwargs: Any) -> bytes:
        raise CfsError("simulated failure")
    monkeypatch.setattr("cfsboot.cli.mkcomposefs.mkfs_erofs", fail)
    src = tmp_path / "src"
    _populate(src)
    before = sorted(p.name for p in src.iterdir())
    assert main(["mkcomposefs", str(src), str(src / "out.cfs")]) == 1
    assert sorted(p.name for p in src.iterdir()) == before  # the empty IMAGE is gone
    (src / "out.cfs").write_bytes(b"old")
    assert main(["mkcomposefs", str(src), str(src / "out.cfs")]) == 1
    assert (src / "out.cfs").read_bytes() == b"old"  # never truncated
    assert "simulated failure" in capsys.readouterr().err
