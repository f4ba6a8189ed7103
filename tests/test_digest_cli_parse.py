"""compute-composefs-digest's command line is read without argparse when it
is plain (cli/container_digest.parse_plain): wherever that reader answers, it
must mean exactly what argparse reads; everything else goes to argparse."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from cfsboot.cli.container_digest import DigestRequest, json_text, parse_plain
from cfsboot.cli.parser import build_parser

COMMAND = ["container", "compute-composefs-digest"]


def argparse_request(words: list[str]) -> DigestRequest | None:
    """What argparse makes of the words; None when it refuses them."""
    parser = build_parser(COMMAND + words)
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = parser.parse_args(COMMAND + words)
        except SystemExit:
            return None
    return DigestRequest.from_namespace(args)


# Words a build script writes, and the ones that trip a hand-written parser.
WORDS = ["/target", "root", "", "a=b", "-", "--", "-h", "--help", "-x", "--cache", "--cache=",
         "--cache=c", "--cache=-c", "--cach", "--ca", "--hash", "--hash=sha256", "sha256",
         "sha512", "md5", "--format", "--format=2", "0", "1", "2", "01", "3", "-1", "+1", " 1",
         "--threads", "--threads=4", "4", "0x4", "1_0", "٣", "--json", "--json=1", "--jso",
         "--no-boot-transform", "--no-boot", "--write-dumpfile-to", "--write-dumpfile-to=d",
         "dump", "--unknown", "-json", "--cache=--", "--cache=--x", "--write-dumpfile-to=--",
         "1" * 5000]


@settings(max_examples=3000, deadline=None)
@given(hs.lists(hs.sampled_from(WORDS), max_size=8))
def test_plain_reading_agrees_with_argparse(words: list[str]) -> None:
    plain = parse_plain(words)
    if plain is not None:
        assert plain == argparse_request(words), words


@pytest.mark.parametrize("words", [
    [],
    ["/work/root"],
    ["--cache", "/var/cache/x", "/work/root"],
    ["/work/root", "--cache=/var/cache/x", "--json"],
    ["--hash", "sha256", "--format", "2", "--no-boot-transform", "--threads", "3", "r"],
    ["--write-dumpfile-to", "out.dump", "r"],
])
def test_build_script_command_lines_are_read_plainly(words: list[str]) -> None:
    """These must take the light path (and mean what argparse says)."""
    plain = parse_plain(words)
    assert plain is not None
    assert plain == argparse_request(words)


@pytest.mark.parametrize("words", [
    ["--help"], ["--ca", "x"], ["a", "b"], ["--json", "--json"], ["--threads", "0"],
    ["--format", "01"], ["--hash", "md5"], ["--", "r"], ["--cache"], ["--cache", "-x"],
    ["--json=yes"],
])
def test_anything_else_goes_to_argparse(words: list[str]) -> None:
    assert parse_plain(words) is None


def test_requests_compare_every_field() -> None:
    base = DigestRequest("r")
    assert base == DigestRequest("r")
    for name, value in [("path", "s"), ("write_dumpfile_to", "d"), ("hash", "sha256"),
                        ("format", 2), ("boot_transform", False), ("json", True),
                        ("threads", 2), ("cache", "c")]:
        other = DigestRequest("r")
        setattr(other, name, value)
        assert other != base, name
    assert "cache=None" in repr(base)


json_values = hs.recursive(
    hs.none() | hs.booleans() | hs.integers() | hs.floats(allow_nan=False, allow_infinity=False)
    | hs.text(),
    lambda inner: hs.dictionaries(hs.text(), inner, max_size=4), max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_report_json_is_what_the_json_module_writes(value: object) -> None:
    """--json output is written without the json module (it imports re)."""
    import json
    assert json_text(value) == json.dumps(value, indent=1)


def test_report_json_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError):
        json_text({"t": float("nan")})
    with pytest.raises(TypeError):
        json_text([1])
