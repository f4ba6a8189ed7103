"""--cache at the digest level: a whole result is reused only for an unchanged
tree with the same options; otherwise only unchanged files' digests are."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cfsboot.boot.digest import DigestOptions, compute_composefs_digest
from cfsboot.boot.digest_cache import COUNT_FIELDS
from cfsboot.tree import fingerprint

# Scans run with the pure-Python hashing code and with the C accelerator.
pytestmark = pytest.mark.usefixtures("verity_impl")

TICK = 0.025  # longer than a kernel timestamp tick


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fingerprint, "RACY_WINDOW_NS", 0)


def make_root(root: Path) -> None:
    for d in ("usr/bin", "usr/lib", "boot", "sysroot", "etc"):
        (root / d).mkdir(parents=True)
    for i in range(8):
        (root / f"usr/lib/lib{i}.so").write_bytes(bytes([i]) * (5000 * (i + 1)))
    (root / "usr/bin/sh").write_bytes(b"#!" + b"s" * 200)
    (root / "etc/hostname").write_bytes(b"host\n")


def digest(root: Path, cache: Path, **kw: object) -> tuple[str, bool, int]:
    options = DigestOptions(cache_dir=str(cache), **kw)  # type: ignore[arg-type]
    result = compute_composefs_digest(str(root), options)
    return result.hexdigest, result.from_cache, result.counts.bytes_hashed


def uncached(root: Path, **kw: object) -> str:
    return compute_composefs_digest(str(root), DigestOptions(**kw)).hexdigest  # type: ignore[arg-type]


def test_unchanged_tree_reuses_the_result(tmp_path: Path, no_racy_window: None) -> None:
    root, cache = tmp_path / "root", tmp_path / "cache"
    make_root(root)
    expected = uncached(root)
    assert digest(root, cache)[:2] == (expected, False)
    assert digest(root, cache) == (expected, True, 0)
    # Other options are other results, not a stale hit.
    v2, from_cache, _ = digest(root, cache, format=2)
    assert (v2, from_cache) == (uncached(root, format=2), False)
    assert digest(root, cache, format=2)[:2] == (v2, True)
    # A caller that needs the tree never gets a bare cached result.
    result = compute_composefs_digest(str(root), DigestOptions(cache_dir=str(cache),
                                                               need_tree=True))
    assert result.root is not None and not result.from_cache
    assert result.hexdigest == expected and result.counts.bytes_hashed == 0


@pytest.mark.parametrize("change", ["content", "mode", "new-file", "policy-like"])
def test_changed_tree_is_recomputed(tmp_path: Path, no_racy_window: None, change: str) -> None:
    root, cache = tmp_path / "root", tmp_path / "cache"
    make_root(root)
    digest(root, cache)
    time.sleep(TICK)
    target = root / "usr/lib/lib3.so"
    st = os.stat(target)
    if change == "content":  # same size and mtime: only ctime moves
        with open(target, "r+b") as f:
            f.write(b"\xff")
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "mode":
        os.chmod(target, 0o600)
    elif change == "new-file":
        (root / "usr/bin/new").write_bytes(b"n" * 100)
    elif change == "policy-like":
        (root / "etc/hostname").write_bytes(b"other\n")
    got, from_cache, hashed = digest(root, cache)
    assert not from_cache
    assert got == uncached(root)
    # Only the changed file is read again (a chmod moves ctime, so it counts).
    assert hashed == {"content": st.st_size, "mode": st.st_size, "new-file": 100,
                      "policy-like": 0}[change]


def test_racily_clean_tree_is_not_recorded(tmp_path: Path) -> None:
    root, cache = tmp_path / "root", tmp_path / "cache"
    make_root(root)  # every ctime is "now"
    digest(root, cache)
    assert digest(root, cache)[1] is False
    assert not (cache / "results.v2").exists()


def test_results_file_format(tmp_path: Path, no_racy_window: None) -> None:
    root, cache = tmp_path / "root", tmp_path / "cache"
    make_root(root)
    expected = digest(root, cache)[0]
    magic, line, end = (cache / "results.v2").read_bytes().split(b"\n")
    assert (magic, end) == (b"cfsboot-results v2", b"")
    key, value, *counts = line.decode().split(" ")
    assert len(bytes.fromhex(key)) == 32 and value == expected
    assert [c.split("=")[0] for c in counts] == list(COUNT_FIELDS)
    assert oct((cache / "results.v2").stat().st_mode & 0o777) == "0o600"


def damage(line: str, how: str) -> str:
    key, value, *counts = line.split(" ")
    if how == "digest not hex":
        value = "zz" + value[2:]
    elif how == "digest too short":
        value = value[:-2]
    elif how == "count missing":
        counts = counts[1:]
    elif how == "count repeated":
        counts = counts + counts[:1]
    elif how == "count not a number":
        counts[0] = counts[0].split("=")[0] + "=-1"
    elif how == "count without value":
        counts[0] = counts[0].split("=")[0]
    elif how == "unknown count":
        counts[0] = "bogus=" + counts[0].split("=")[1]
    return " ".join([key, value, *counts])


@pytest.mark.parametrize("how", ["digest not hex", "digest too short", "count missing",
                                 "count repeated", "count not a number",
                                 "count without value", "unknown count", "other magic",
                                 "garbage", "empty"])
def test_damaged_results_are_a_miss(tmp_path: Path, no_racy_window: None, how: str) -> None:
    root, cache = tmp_path / "root", tmp_path / "cache"
    make_root(root)
    expected = digest(root, cache)[0]
    results = cache / "results.v2"
    magic, line, _ = results.read_text().split("\n")
    text = {"other magic": f"cfsboot-results v3\n{line}\n", "garbage": "\x00\xff{not text",
            "empty": ""}.get(how, f"{magic}\n{damage(line, how)}\n")
    results.write_text(text, errors="surrogateescape")
    assert digest(root, cache)[:2] == (expected, False)
    assert digest(root, cache)[:2] == (expected, True)  # recorded again


def test_recorded_counts_have_the_scan_counts_fields() -> None:
    """The light cache path validates records against its own list of fields."""
    from dataclasses import fields

    from cfsboot.tree.counts import ScanCounts
    assert tuple(f.name for f in fields(ScanCounts)) == COUNT_FIELDS


# What a run answered from the cache must not import: the scanner and image
# writer (a whole computation), and what costs milliseconds of a start-up that
# is half of such a run (argparse and its re/enum/gettext, typing, json,
# dataclasses, threading, hashlib).
HEAVY = ("cfsboot.tree.scan", "cfsboot.erofs.writer", "cfsboot.boot.digest", "argparse", "re",
         "typing", "json", "dataclasses", "threading", "hashlib", "enum")


@pytest.mark.parametrize("json_output", [False, True])
def test_cli_answers_an_unchanged_tree_without_the_heavy_modules(
        tmp_path: Path, no_racy_window: None, json_output: bool) -> None:
    import subprocess
    import sys
    root, cache = tmp_path / "root", tmp_path / "cache"
    make_root(root)
    expected = digest(root, cache)[0]
    # Only what cfsboot imports counts (not what the interpreter's site did).
    code = ("import sys; before = set(sys.modules); from cfsboot.cli.main import main; "
            "rc = main(sys.argv[1:]); "
            f"print('heavy:', sorted(m for m in {HEAVY!r} if m in set(sys.modules) - before)); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "container", "compute-composefs-digest",
                           str(root), "--cache", str(cache), *(["--json"] if json_output else [])],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    *output, heavy = proc.stdout.splitlines()
    assert heavy == "heavy: []"
    if json_output:
        report = json.loads("\n".join(output))
        assert (report["digest"], report["cached"]) == (expected, True)
    else:
        assert output == [expected]


def test_light_digest_sizes_agree() -> None:
    from cfsboot.boot.digest_cache import DIGEST_SIZE
    from cfsboot.fsverity import DIGEST_SIZE as REAL
    assert DIGEST_SIZE == REAL
