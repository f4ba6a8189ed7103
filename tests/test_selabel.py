"""SELinux labeling rules (spec tree-scan-and-boot-transform.md §3.4,
composefs-rs selabel.rs @0fbc853): policy discovery, spec/subs parsing,
priority, substitution, type specifiers, hard links, errors."""

from __future__ import annotations

import pytest

from cfsboot.boot.selabel import (
    SelinuxPolicy,
    SelinuxPolicyError,
    parse_config,
    selabel,
    split_whitespace,
)
from cfsboot.tree.model import (
    BlockDevice,
    CharDevice,
    Directory,
    External,
    Fifo,
    Inline,
    Leaf,
    LeafContent,
    Socket,
    Sparse,
    Stat,
    Symlink,
    leaf_link_counts,
)

LABEL = b"security.selinux"
FILES = b"/etc/selinux/targeted/contexts/files"


def st() -> Stat:
    return Stat(0o755, 0, 0, 0, 0)


class Tree:
    def __init__(self) -> None:
        self.root = Directory(st())
        self.data: dict[int, bytes] = {}

    def dir(self, path: bytes) -> Directory:
        d = self.root
        for part in path.strip(b"/").split(b"/"):
            if not part:
                continue
            child = d.entries.setdefault(part, Directory(st()))
            assert isinstance(child, Directory)
            d = child
        return d

    def leaf(self, path: bytes, node: Leaf) -> Leaf:
        parent, _, name = path.rpartition(b"/")
        self.dir(parent).entries[name] = node
        return node

    def file(self, path: bytes, data: bytes = b"") -> Leaf:
        content = Inline(data) if len(data) <= 64 else External.from_digest(bytes(64), len(data))
        leaf = self.leaf(path, Leaf(st(), content))
        self.data[id(leaf)] = data
        return leaf

    def read(self, leaf: Leaf) -> bytes:
        return self.data[id(leaf)]

    def policy(self, file_contexts: bytes, **extra: bytes) -> None:
        self.file(b"/etc/selinux/config", b"SELINUX=enforcing\nSELINUXTYPE=targeted\n")
        self.file(FILES + b"/file_contexts", file_contexts)
        for suffix, data in extra.items():
            self.file(FILES + b"/file_contexts." + suffix.encode(), data)

    def label(self, path: bytes) -> bytes | None:
        node = self.root.get_path(path)
        assert node is not None, path
        return node.stat.xattrs.get(LABEL)

    def run(self) -> None:
        selabel(self.root, self.read)


def ctx(name: str) -> bytes:
    return f"system_u:object_r:{name}_t:s0".encode()


def labeled(fc: bytes, paths: list[bytes], **extra: bytes) -> Tree:
    t = Tree()
    for p in paths:
        t.file(p)
    t.policy(fc, **extra)
    t.run()
    return t


# ---- ordering and matching -----------------------------------------------------

def test_last_match_wins_no_specificity_sorting() -> None:
    fc = b"/usr/bin/sh system_u:object_r:shell_t:s0\n/usr(/.*)? system_u:object_r:usr_t:s0\n"
    t = labeled(fc, [b"/usr/bin/sh"])
    assert t.label(b"/usr/bin/sh") == ctx("usr")  # libselinux would pick shell_t


def test_file_order_file_contexts_local_homedirs() -> None:
    fc = b"/a(/.*)? system_u:object_r:base_t:s0\n"
    local = b"/a(/.*)? system_u:object_r:local_t:s0\n"
    home = b"/a/h system_u:object_r:home_t:s0\n"
    t = labeled(fc, [b"/a/h", b"/a/x"], local=local, homedirs=home)
    assert t.label(b"/a/x") == ctx("local")
    assert t.label(b"/a/h") == ctx("home")
    t = labeled(b"/a/h system_u:object_r:home_t:s0\n", [b"/a/h"], local=local)
    assert t.label(b"/a/h") == ctx("local")


def test_whole_key_match_only() -> None:
    t = labeled(b"/usr system_u:object_r:usr_t:s0\n", [b"/usr/x", b"/usrx"])
    assert t.label(b"/usr") == ctx("usr")
    assert t.label(b"/usr/x") is None
    assert t.label(b"/usrx") is None


def test_none_context_and_no_match_remove_label() -> None:
    t = Tree()
    f = t.file(b"/tmp/f")
    f.stat.xattrs[LABEL] = b"stale_t\0"
    g = t.file(b"/nomatch")
    g.stat.xattrs[LABEL] = b"stale_t\0"
    t.dir(b"/tmp").stat.xattrs[LABEL] = b"stale"
    t.policy(b"/tmp(/.*)? <<none>>\n/etc(/.*)? system_u:object_r:etc_t:s0\n")
    t.run()
    assert t.label(b"/tmp") is None and t.label(b"/tmp/f") is None
    assert t.label(b"/nomatch") is None
    assert t.label(b"/") is None
    assert t.label(b"/etc/selinux/config") == ctx("etc")


def test_label_has_no_trailing_nul_and_replaces_stale() -> None:
    t = Tree()
    f = t.file(b"/usr/f")
    f.stat.xattrs[LABEL] = b"unconfined_u:object_r:container_file_t:s0\0"
    t.policy(b"/usr(/.*)? system_u:object_r:usr_t:s0\n")
    t.run()
    assert t.label(b"/usr/f") == b"system_u:object_r:usr_t:s0"


def test_root_is_looked_up_as_slash_d() -> None:
    t = labeled(b"/ -d system_u:object_r:root_t:s0\n/ -- system_u:object_r:bad_t:s0\n", [])
    assert t.label(b"/") == ctx("root")


@pytest.mark.parametrize("spec, node, code", [
    ("--", Inline(b""), "-"), ("--", Sparse(10), "-"), ("-l", Symlink(b"x"), "l"),
    ("-p", Fifo(), "p"), ("-s", Socket(), "s"), ("-b", BlockDevice(1), "b"),
    ("-c", CharDevice(1), "c"),
])
def test_type_specifiers(spec: str, node: LeafContent, code: str) -> None:
    fc = (f"/x system_u:object_r:any_t:s0\n/x {spec} system_u:object_r:typed_t:s0\n"
          "/d -d system_u:object_r:dir_t:s0\n").encode()
    t = Tree()
    t.leaf(b"/x", Leaf(st(), node))
    t.leaf(b"/y", Leaf(st(), Inline(b"")))
    t.dir(b"/d")
    t.file(b"/d2")
    t.policy(fc.replace(b"/d -d", b"/d2 -d") + fc)
    t.run()
    assert t.label(b"/x") == ctx("typed")
    assert t.label(b"/d") == ctx("dir")
    assert t.label(b"/d2") is None  # -d does not match a regular file
    others = {"-", "l", "p", "s", "b", "c"} - {code}
    for other in others:
        t2 = Tree()
        contents: dict[str, LeafContent] = {
            "-": Inline(b""), "l": Symlink(b"x"), "p": Fifo(), "s": Socket(),
            "b": BlockDevice(1), "c": CharDevice(1)}
        t2.leaf(b"/x", Leaf(st(), contents[other]))
        t2.policy(f"/x {spec} system_u:object_r:typed_t:s0\n".encode())
        t2.run()
        assert t2.label(b"/x") is None, other


# ---- substitutions ---------------------------------------------------------------

def test_substitution_applies_per_level_and_subs_dist_overrides() -> None:
    fc = (b"/usr(/.*)? system_u:object_r:usr_t:s0\n/srv(/.*)? system_u:object_r:srv_t:s0\n"
          b"/opt/bin(/.*)? system_u:object_r:optbin_t:s0\n")
    t = Tree()
    t.file(b"/opt/bin/x")
    t.file(b"/opt/a/b/c")
    t.file(b"/optx")
    t.policy(fc, subs=b"/opt /srv\n", subs_dist=b"# comment\n/opt /usr\n")
    t.run()
    assert t.label(b"/opt") == ctx("usr")
    assert t.label(b"/opt/a/b/c") == ctx("usr")   # children built on /usr
    assert t.label(b"/opt/bin/x") == ctx("usr")   # looked up as /usr/bin/x, not /opt/bin/x
    assert t.label(b"/optx") is None                # whole-component match only


def test_later_subs_line_overrides_and_root_never_substituted() -> None:
    fc = b"/ -d system_u:object_r:root_t:s0\n/b(/.*)? system_u:object_r:b_t:s0\n" \
         b"/c(/.*)? system_u:object_r:c_t:s0\n"
    t = Tree()
    t.dir(b"/a")
    t.policy(fc, subs=b"/a /b\n/a /c\n/ /b\n")
    t.run()
    assert t.label(b"/a") == ctx("c")
    assert t.label(b"/") == ctx("root")


def test_substitution_of_nested_path_and_chained_not_reapplied() -> None:
    fc = b"/x(/.*)? system_u:object_r:x_t:s0\n/y(/.*)? system_u:object_r:y_t:s0\n"
    t = Tree()
    t.file(b"/a/b/f")
    # /a/b -> /x ; then /x/f is not substituted again even though /x -> /y exists
    t.policy(fc, subs=b"/a/b /x\n/x /y\n/x/f /y/f\n")
    t.run()
    assert t.label(b"/a/b") == ctx("x")
    assert t.label(b"/a/b/f") == ctx("y")  # /x/f is itself an alias: exact lookup of the path


# ---- hard links --------------------------------------------------------------------

def test_hardlinks_split_when_labels_differ() -> None:
    fc = (b"/a(/.*)? system_u:object_r:a_t:s0\n/b(/.*)? system_u:object_r:b_t:s0\n"
          b"/c(/.*)? system_u:object_r:c_t:s0\n/a2(/.*)? system_u:object_r:a_t:s0\n")
    t = Tree()
    leaf = t.file(b"/a/f")
    for p in (b"/a/g", b"/a2/f", b"/b/f", b"/b/g", b"/c/f"):
        t.leaf(p, leaf)
    t.policy(fc)
    t.run()
    nodes = {p: t.root.get_path(p) for p in
             (b"/a/f", b"/a/g", b"/a2/f", b"/b/f", b"/b/g", b"/c/f")}
    assert nodes[b"/a/f"] is leaf and nodes[b"/a/g"] is leaf and nodes[b"/a2/f"] is leaf
    clones = [nodes[b"/b/f"], nodes[b"/b/g"], nodes[b"/c/f"]]
    assert all(isinstance(c, Leaf) for c in clones)
    assert len({id(c) for c in clones}) == 3 and all(c is not leaf for c in clones)
    assert leaf.stat.xattrs[LABEL] == ctx("a")
    assert [c.stat.xattrs[LABEL] for c in clones if c is not None] == \
        [ctx("b"), ctx("b"), ctx("c")]
    counts = leaf_link_counts(t.root)
    assert counts[leaf] == 3
    assert all(counts[c] == 1 for c in clones if isinstance(c, Leaf))


def test_hardlink_unlabeled_then_labeled_splits() -> None:
    t = Tree()
    leaf = t.file(b"/a/f")
    leaf.stat.xattrs[b"security.capability"] = b"cap"
    t.leaf(b"/b/f", leaf)
    t.policy(b"/b(/.*)? system_u:object_r:b_t:s0\n")
    t.run()
    clone = t.root.get_path(b"/b/f")
    assert clone is not leaf and isinstance(clone, Leaf)
    assert LABEL not in leaf.stat.xattrs
    assert clone.stat.xattrs == {b"security.capability": b"cap", LABEL: ctx("b")}
    assert clone.content == leaf.content


# ---- policy discovery --------------------------------------------------------------

def test_no_etc_selinux_strips_labels() -> None:
    t = Tree()
    f = t.file(b"/usr/f")
    f.stat.xattrs[LABEL] = b"x"
    t.root.stat.xattrs[LABEL] = b"x"
    t.dir(b"/usr").stat.xattrs[LABEL] = b"x"
    t.run()
    assert t.label(b"/") is None and t.label(b"/usr") is None and t.label(b"/usr/f") is None


@pytest.mark.parametrize("config", [
    None, b"SELINUX=enforcing\n", b"#SELINUXTYPE=targeted\n", b"SELINUXTYPE targeted\n",
])
def test_no_policy_variants(config: bytes | None) -> None:
    t = Tree()
    t.file(FILES + b"/file_contexts", b"/.* system_u:object_r:x_t:s0\n")
    if config is not None:
        t.file(b"/etc/selinux/config", config)
    t.root.stat.xattrs[LABEL] = b"x"
    t.run()
    assert t.label(b"/") is None


def test_sparse_config_is_absent() -> None:
    t = Tree()
    t.file(FILES + b"/file_contexts", b"/.* system_u:object_r:x_t:s0\n")
    t.leaf(b"/etc/selinux/config", Leaf(st(), Sparse(100)))
    t.run()
    assert t.label(b"/") is None


def test_config_parsing() -> None:
    assert parse_config(b"SELINUX=enforcing\n selinuxType = mls \r\n") == "mls"
    assert parse_config(b"SELINUXTYPE=a=b\nSELINUXTYPE=c\n") == "a=b"
    assert parse_config("SELINUXTYPE=\xa0x\u3000\n".encode()) == "x"
    assert parse_config(b"SELINUXTYPE=\x1cx\n") == "\x1cx"  # not White_Space
    assert parse_config(b"# SELINUXTYPE=targeted\nSELINUXTYPE=\"t\" # c\n") == '"t" # c'
    assert parse_config(b"SELINUXTYPE=targeted\n\xff\n") == "targeted"  # lazy UTF-8 check
    with pytest.raises(SelinuxPolicyError, match="UTF-8"):
        parse_config(b"\xff\nSELINUXTYPE=targeted\n")


def test_policy_name_is_trimmed_unicode_whitespace() -> None:
    t = Tree()
    t.file(b"/etc/selinux/config", "SELINUXTYPE=\u2003targeted\u00a0\n".encode())
    t.file(FILES + b"/file_contexts", b"/ -d system_u:object_r:root_t:s0\n")
    t.run()
    assert t.label(b"/") == ctx("root")


@pytest.mark.parametrize("setup, message", [
    ("etc_is_file", "not a subdirectory"),
    ("selinux_is_file", "not a subdirectory"),
    ("config_is_dir", "is a directory"),
    ("config_is_symlink", "not a regular file"),
    ("missing_policy_dir", "does not exist"),
    ("missing_file_contexts", "missing mandatory file_contexts"),
    ("sparse_file_contexts", "missing mandatory file_contexts"),
    ("file_contexts_is_dir", "is a directory"),
    ("local_is_symlink", "not a regular file"),
    ("subs_is_dir", "is a directory"),
    ("dotdot_policy", "invalid filename"),
])
def test_policy_errors(setup: str, message: str) -> None:
    t = Tree()
    config = b"SELINUXTYPE=targeted\n"
    fc = b"/.* system_u:object_r:x_t:s0\n"
    if setup == "etc_is_file":
        t.file(b"/etc", b"")
    elif setup == "selinux_is_file":
        t.file(b"/etc/selinux", b"")
    elif setup == "config_is_dir":
        t.dir(b"/etc/selinux/config")
    elif setup == "config_is_symlink":
        t.leaf(b"/etc/selinux/config", Leaf(st(), Symlink(b"/x")))
    else:
        t.file(b"/etc/selinux/config",
               b"SELINUXTYPE=..\n" if setup == "dotdot_policy" else config)
        if setup != "missing_policy_dir":
            t.dir(FILES)
        if setup == "sparse_file_contexts":
            t.leaf(FILES + b"/file_contexts", Leaf(st(), Sparse(5)))
        elif setup == "file_contexts_is_dir":
            t.dir(FILES + b"/file_contexts")
        elif setup not in ("missing_file_contexts", "missing_policy_dir", "dotdot_policy"):
            t.file(FILES + b"/file_contexts", fc)
        if setup == "local_is_symlink":
            t.leaf(FILES + b"/file_contexts.local", Leaf(st(), Symlink(b"x")))
        if setup == "subs_is_dir":
            t.dir(FILES + b"/file_contexts.subs")
    with pytest.raises(SelinuxPolicyError, match=message):
        t.run()


# ---- spec line parsing ---------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    (b"/usr", "line 2: missing separator after regex"),
    (b"/usr -x system_u:object_r:x_t:s0", "line 2: invalid type code -x"),
    (b"/usr -dd system_u:object_r:x_t:s0", "invalid type code -dd"),
    (b"/usr - system_u:object_r:x_t:s0", "invalid type code -"),
    (b"/usr -d", "line 2: missing context field"),
    (b"/usr -d ctx extra", "line 2: trailing data"),
    (b"/usr ctx extra", "line 2: trailing data"),
    (b"/usr[ ctx", "file_contexts line 2: invalid regex"),
    (b"/usr) ctx", "file_contexts line 2: invalid regex"),
    (b"\xff ctx", "line 2: not valid UTF-8"),
    (b"/(?<=a*)b ctx", "file_contexts line 2: cannot express regex in Python"),
])
def test_bad_spec_lines(line: bytes, message: str) -> None:
    t = Tree()
    t.policy(b"# comment\n" + line + b"\n/x ctx\n")
    with pytest.raises(SelinuxPolicyError, match=message):
        t.run()


def test_bad_lines_in_local_and_subs_name_the_file() -> None:
    t = Tree()
    t.policy(b"/x ctx\n", local=b"/y\n")
    with pytest.raises(SelinuxPolicyError, match=r"file_contexts\.local line 1"):
        t.run()
    t = Tree()
    t.policy(b"/x ctx\n", subs_dist=b"\n/a /b /c\n")
    with pytest.raises(SelinuxPolicyError, match=r"file_contexts\.subs_dist line 2: trailing"):
        t.run()
    t = Tree()
    t.policy(b"/x ctx\n", subs=b"/a\n")
    with pytest.raises(SelinuxPolicyError, match="missing original path"):
        t.run()


def test_comments_blank_lines_and_whitespace() -> None:
    fc = "\n   \n#/usr x\n  # indented comment\n\t/usr\u00a0-d\u2003system_u:object_r:usr_t:s0\r\n"
    t = labeled(fc.encode(), [b"/usr/f"])
    assert t.label(b"/usr") == ctx("usr")


def test_split_whitespace_is_unicode_white_space_only() -> None:
    assert split_whitespace("a\x1cb\x1dc\x1ed\x1ff") == ["a\x1cb\x1dc\x1ed\x1ff"]
    assert ["a", "b"] == ["a", "b"]  # why split_whitespace exists
    assert split_whitespace("a\u0085b\u2028c\u3000d\x0be") == ["a", "b", "c", "d", "e"]
    assert split_whitespace("a\u200bb") == ["a\u200bb"]  # zero-width space is not White_Space


def test_separator_char_in_file_contexts_pattern_is_regex() -> None:
    # a 0x1c byte is part of the regex token, as in Rust
    t = Tree()
    t.file(b"/a\x1cb")
    t.policy(b"/a\x1cb system_u:object_r:fs_t:s0\n")
    t.run()
    assert t.label(b"/a\x1cb") == ctx("fs")


# ---- the policy object -----------------------------------------------------------------

def test_policy_lookup_api() -> None:
    files = {"file_contexts": b"/.* system_u:object_r:default_t:s0\n/tmp(/.*)? <<none>>\n"
             b"/etc -d system_u:object_r:etc_t:s0\n",
             "file_contexts.subs": b"/opt /usr\n"}
    policy = SelinuxPolicy.from_files(files.get)
    assert policy.lookup(b"/etc", "d") == ctx("etc")
    assert policy.lookup(b"/etc", "-") == ctx("default")
    assert policy.lookup(b"/tmp/x", "-") is None
    assert policy.lookup(b"relative", "-") is None
    assert policy.substitute(b"/opt") == b"/usr"
    assert len(policy.rules) == 3 and policy.rules[0].context == "system_u:object_r:etc_t:s0"


def test_from_tree_returns_none_without_policy() -> None:
    t = Tree()
    assert SelinuxPolicy.from_tree(t.root, t.read) is None


def test_pcre_fallback_rules_interleave_by_priority() -> None:
    # composefs-rs hybrid_lookaround_priority: PCRE2-only (look-ahead) rules and
    # Rust-DFA rules keep one global "last line wins" order
    fc = b"""\
/(.*)?  system_u:object_r:default_t:s0
/usr(.*)?  system_u:object_r:usr_t:s0
/usr/bin/(?!bad).*  system_u:object_r:bin_ok_t:s0
/usr/bin/good  system_u:object_r:bin_good_t:s0
/etc/(?!shadow).*  system_u:object_r:etc_public_t:s0
/etc/hostname  system_u:object_r:hostname_t:s0
"""
    t = labeled(fc, [b"/etc/hostname", b"/etc/passwd", b"/etc/shadow", b"/usr/bin/good",
                     b"/usr/bin/hello", b"/usr/bin/bad"])
    assert t.label(b"/etc/hostname") == ctx("hostname")
    assert t.label(b"/etc/passwd") == ctx("etc_public")
    assert t.label(b"/etc/shadow") == ctx("default")
    assert t.label(b"/usr/bin/good") == ctx("bin_good")
    assert t.label(b"/usr/bin/hello") == ctx("bin_ok")
    assert t.label(b"/usr/bin/bad") == ctx("usr")
