"""paths.is_within: outputs that would land inside a tree, however spelled."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import need_root

from cfsboot.paths import is_within


def test_spellings(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr").mkdir(parents=True)
    (tmp_path / "tree-cache").mkdir()
    (tmp_path / "link").symlink_to(tree / "usr")
    (tmp_path / "out-link").symlink_to(tmp_path / "tree-cache")
    inside = [tree, tree / "usr", tree / "usr/new/deeper", tmp_path / "link/x",
              tmp_path / "tree-cache/../tree/usr", Path(str(tree) + "/")]
    outside = [tmp_path, tmp_path / "tree-cache", tmp_path / "tree-cache/x",
               tmp_path / "out-link/x", tmp_path / "tree/../tree-cache", Path("/")]
    for p in inside:
        assert is_within(str(tree), str(p)), p
    for p in outside:
        assert not is_within(str(tree), str(p)), p
    assert not is_within(str(tmp_path / "missing"), str(tmp_path / "missing/x"))


def test_bind_mount_is_the_same_tree(tmp_path: Path) -> None:
    need_root()
    tree, alias = tmp_path / "tree", tmp_path / "alias"
    (tree / "var").mkdir(parents=True)
    alias.mkdir()
    subprocess.run(["mount", "--bind", str(tree), str(alias)], check=True)
    try:
        assert is_within(str(tree), str(alias / "var/cache"))
        assert is_within(str(alias), str(tree / "var"))
    finally:
        subprocess.run(["umount", str(alias)], check=True)


def test_a_mount_hidden_from_a_bind_of_the_tree_is_not_inside_it(tmp_path: Path) -> None:
    """`mount --bind / /mnt/root` leaves out /var when /var is its own
    filesystem: a cache on that /var is not in the tree being scanned."""
    need_root()
    real, bound = tmp_path / "real", tmp_path / "bound"
    (real / "var").mkdir(parents=True)
    bound.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(real / "var")], check=True)
    try:
        subprocess.run(["mount", "--bind", str(real), str(bound)], check=True)
        try:
            (real / "var/cache").mkdir()
            assert not is_within(str(bound), str(real / "var/cache"))
            assert not is_within(str(bound), str(real / "var/cache/new"))
            assert is_within(str(real), str(real / "var/cache"))  # the recursive view
            assert is_within(str(bound), str(real / "usr-new"))  # beside var: still inside
        finally:
            subprocess.run(["umount", str(bound)], check=True)
    finally:
        subprocess.run(["umount", str(real / "var")], check=True)
