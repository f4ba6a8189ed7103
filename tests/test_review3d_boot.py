"""Review 3d, F4 and F5.

F4: ``Cmdline`` (kargs.d merging, shared by ``container inspect`` and ``seal``) was
quadratic; the indexed version must keep exactly the old results and order, so it is
checked against a copy of the old algorithm, and a ~1 MB kargs.d must merge quickly.

F5: ``uki inspect|verify|sign|resign`` on /dev/zero, a fifo, a directory, an oversized
file or a truncated PE: one ``cfsboot: FILE: ...`` line and exit 1, never a traceback,
an out-of-memory or a hang.  Run through the real command, as a user would.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_uki_support import cli, make_pe

from cfsboot.boot.kargs import KARGS_DIR, Cmdline, identical, kargs_in_root

# ---------------------------------------------------------------- F4: kargs merging


def _old_key(arg: str) -> str:
    return arg.partition("=")[0].replace("-", "_")


def _old_identical(a: str, b: str) -> bool:
    """The pre-review ``identical``, verbatim: the reference for the new one."""
    ka, sa, va = a.partition("=")
    kb, sb, vb = b.partition("=")
    return _old_key(ka) == _old_key(kb) and sa == sb and va == vb


def _old_merge(args: Iterable[str]) -> list[str]:
    """The pre-review ``Cmdline.add`` loop (a scan of every kept argument per add)."""
    kept: list[str] = []
    for arg in args:
        if arg and not any(_old_identical(arg, have) for have in kept):
            kept.append(arg)
    return kept


# Few letters, with the characters the comparison treats specially, so that
# identical, nearly identical and -/_ variants collide often.
_ARG = st.text(alphabet="ab-_=", max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ARG, max_size=40))
def test_cmdline_matches_old_algorithm(args: list[str]) -> None:
    assert Cmdline(args).args == _old_merge(args)
    incremental = Cmdline(args[:len(args) // 2])   # add after construction, as seal does
    for arg in args[len(args) // 2:]:
        incremental.add(arg)
    assert incremental.args == _old_merge(args)
    assert str(incremental) == " ".join(_old_merge(args))


@settings(max_examples=300, deadline=None)
@given(_ARG, _ARG)
def test_identical_matches_old(a: str, b: str) -> None:
    assert identical(a, b) == _old_identical(a, b)


@pytest.mark.parametrize("args, kept", [
    (["a-b=1", "a_b=1", "a-b=2", "a_b", "a-b", "a_b="], ["a-b=1", "a-b=2", "a_b", "a_b="]),
    (["x=a-b", "x=a_b"], ["x=a-b", "x=a_b"]),          # values compare exactly
    (["", "q", "", "q"], ["q"]),                        # empty arguments are dropped
    (["k=v=w", "k=v", "k=v=w"], ["k=v=w", "k=v"]),     # only the first '=' splits
])
def test_cmdline_examples(args: list[str], kept: list[str]) -> None:
    assert Cmdline(args).args == kept == _old_merge(args)


@pytest.fixture
def hang_guard() -> Iterator[None]:
    """Fail instead of stalling the suite if merging turns quadratic again (the old code
    needs hours for the file below).  A hang guard, not a timing assertion: linear
    merging takes about a second."""
    def expired(signum: int, frame: object) -> None:
        raise AssertionError("kargs.d merging took over 120 s: quadratic again?")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(120)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_megabyte_kargs_file_merges(tmp_path: Path, hang_guard: None) -> None:
    n = 20000
    dashed = [f"opt-{i}=on" for i in range(n)]
    flags = [f"flag-{i}" for i in range(n)]
    # Duplicates spelled with '_' (dropped) and values that differ (kept).
    args = dashed + flags + [a.replace("-", "_") for a in dashed + flags] \
        + [f"opt_{i}=off" for i in range(n)]
    kdir = tmp_path / KARGS_DIR
    kdir.mkdir(parents=True)
    big = kdir / "big.toml"
    big.write_text("kargs = [" + ", ".join(f'"{a}"' for a in args) + "]\n")
    (kdir / "more.toml").write_text('kargs = ["flag_0", "opt-0=off", "last"]\n')
    assert big.stat().st_size > 1_000_000
    merged = kargs_in_root(str(tmp_path), "x86_64")
    assert merged == dashed + flags + [f"opt_{i}=off" for i in range(n)] + ["last"]


# ---------------------------------------------------------------- F5: uki input files

CFSBOOT = [sys.executable, "-m", "cfsboot"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    assert cli("keys", "generate", str(out)) == 0
    return out


def _commands(keys: Path) -> list[list[str]]:
    signing = ["--cert", str(keys / "db.crt"), "--key", str(keys / "db.key")]
    return [["inspect"], ["verify"], ["verify", "--pe-only"], ["sign", *signing],
            ["resign", *signing]]


def _limit_memory() -> None:
    """A regression that reads /dev/zero must fail with MemoryError, not take the
    machine's memory (review 3d: 24 GB before the OOM killer)."""
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def _one_line_failure(command: list[str], path: Path, keys: Path) -> str:
    """Run ``cfsboot uki COMMAND PATH`` (with -o for signing) and return its one
    error line; a hang (the fifo) fails after 60 s instead of stalling the suite."""
    out = ["-o", str(path.parent / "signed.efi")] if command[0] in ("sign", "resign") else []
    proc = subprocess.run([*CFSBOOT, "uki", command[0], str(path), *command[1:], *out],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          preexec_fn=_limit_memory)
    assert proc.returncode == 1, (command, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, (command, proc.stderr)
    assert not (path.parent / "signed.efi").exists()
    return lines[0]


def _check_all(path: Path, keys: Path, message: str) -> None:
    for command in _commands(keys):
        assert _one_line_failure(command, path, keys) == f"cfsboot: {path}: {message}"


def test_dev_zero(tmp_path: Path, keys: Path) -> None:
    link = tmp_path / "zero.efi"   # via a symlink, so -o lands in tmp_path
    link.symlink_to("/dev/zero")
    _check_all(link, keys, "not a regular file")


def test_fifo(tmp_path: Path, keys: Path) -> None:
    fifo = tmp_path / "fifo.efi"
    os.mkfifo(fifo)
    _check_all(fifo, keys, "not a regular file")


def test_directory(tmp_path: Path, keys: Path) -> None:
    directory = tmp_path / "dir.efi"
    directory.mkdir()
    _check_all(directory, keys, "is a directory, not a PE image")


def test_too_large(tmp_path: Path, keys: Path) -> None:
    huge = tmp_path / "huge.efi"
    with open(huge, "wb") as f:
        f.truncate((2 << 30) + 1)   # sparse: refused from its size, never read
    _check_all(huge, keys, "more than 2048 MiB; is this really a PE image?")


@pytest.mark.parametrize("length, message", [
    (10, "not a PE image (no MZ header)"),
    (0x410, "section '.text' extends past the end of the file"),  # headers are 0x400
])
def test_truncated_pe(tmp_path: Path, keys: Path, length: int, message: str) -> None:
    path = tmp_path / "short.efi"
    path.write_bytes(make_pe()[:length])
    for command in _commands(keys):
        line = _one_line_failure(command, path, keys)
        assert line.startswith(f"cfsboot: {path}: "), line
        if command[0] == "inspect":
            assert line == f"cfsboot: {path}: {message}"


def test_good_image_still_works(tmp_path: Path, keys: Path) -> None:
    """The helper reads a regular PE (also through a symlink) as before."""
    real = tmp_path / "real.efi"
    real.write_bytes(make_pe())
    link = tmp_path / "link.efi"
    link.symlink_to(real.name)
    assert cli("uki", "sign", str(link), "--cert", str(keys / "db.crt"),
               "--key", str(keys / "db.key")) == 0
    assert cli("uki", "verify", "--pe-only", str(link), "--cert", str(keys / "db.crt")) == 0
    assert link.is_symlink()
