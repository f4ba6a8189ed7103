#!/usr/bin/env python3
"""Build the small built-in example root filesystem used by `make example`.

It looks like a bootc image's root: /usr with binaries and a kernel directory,
/etc with a SELinux policy of its own, empty /boot, /sysroot and /run.  Works
without root (owners and device nodes are skipped then).

    make-example-root.py DEST
"""

import os
import sys

T0 = 1_700_000_000


def put(root: str, rel: str, data: bytes, mode: int = 0o644) -> str:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def main(root: str) -> None:
    os.makedirs(root)
    for d in ("usr/bin", "usr/lib/modules/6.12.0-example", "etc", "boot", "sysroot", "run",
              "var/tmp", "tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    put(root, "usr/bin/hello", b"#!/bin/sh\necho 'hello from a sealed composefs image'\n" * 4, 0o755)
    os.link(os.path.join(root, "usr/bin/hello"), os.path.join(root, "usr/bin/hi"))
    os.symlink("hello", os.path.join(root, "usr/bin/greet"))
    put(root, "usr/lib/libexample.so.1", bytes(range(256)) * 1024)
    put(root, "usr/lib/modules/6.12.0-example/vmlinuz", b"placeholder kernel\n" * 512)
    put(root, "usr/lib/modules/6.12.0-example/initramfs.img", b"placeholder initrd\n" * 256)
    put(root, "usr/lib/os-release", b'NAME="cfsboot example"\nID=example\nVERSION_ID=1\n')
    os.symlink("../usr/lib/os-release", os.path.join(root, "etc/os-release"))
    put(root, "etc/hostname", b"example\n")
    put(root, "etc/selinux/config", b"SELINUX=enforcing\nSELINUXTYPE=targeted\n")
    put(root, "etc/selinux/targeted/contexts/files/file_contexts", b"\n".join([
        b"/.*              system_u:object_r:default_t:s0",
        b"/                -d system_u:object_r:root_t:s0",
        b"/usr(/.*)?       system_u:object_r:usr_t:s0",
        b"/usr/bin(/.*)?   system_u:object_r:bin_t:s0",
        b"/usr/lib(/.*)?   system_u:object_r:lib_t:s0",
        b"/etc(/.*)?       system_u:object_r:etc_t:s0",
        b"/boot            -d system_u:object_r:boot_t:s0",
        b"/tmp(/.*)?       <<none>>",
        b""]))
    for dirpath, dirs, files in os.walk(root, topdown=False):
        for name in files + dirs:
            os.utime(os.path.join(dirpath, name), ns=(T0 * 10**9, T0 * 10**9),
                     follow_symlinks=False)
        os.utime(dirpath, ns=(T0 * 10**9, T0 * 10**9))


if __name__ == "__main__":
    main(sys.argv[1])
