"""SELinux labeling throughput on a synthetic Fedora-like policy and tree.

    .venv/bin/python bench/selabel.py [RULES] [FILES]

Prints policy compile time and labels/second for ``apply_policy`` over a
tree of FILES leaves (defaults: 5000 rules, 100000 files).  The generators
are also used by tests/test_selabel_perf.py.
"""

from __future__ import annotations

import random
import sys
import time

from cfsboot.boot.selabel import SelinuxPolicy, apply_policy
from cfsboot.tree.model import Directory, Inline, Leaf, Stat, Symlink

WORDS = ["systemd", "dbus", "nginx", "httpd", "postgresql", "mysql", "ssh", "cups", "avahi",
         "polkit", "NetworkManager", "chrony", "rpm", "dnf", "sssd", "krb5", "samba", "nfs",
         "audit", "cron", "logrotate", "firewalld", "libvirt", "qemu", "podman", "containers",
         "bootc", "ostree", "grub2", "dracut", "plymouth", "udev", "gdm", "xorg", "pulse",
         "pipewire", "bluetooth", "cockpit", "tuned", "rsyslog", "selinux", "git", "python3",
         "perl", "ruby", "java", "node", "go", "rust", "gcc"]
TOPS = ["/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/usr/libexec", "/usr/share",
        "/etc", "/var/lib", "/var/log", "/var/cache", "/var/spool", "/run", "/opt", "/srv",
        "/home/[^/]+", "/root", "/dev"]


def ctx(name: str) -> str:
    return f"system_u:object_r:{name}_t:s0"


def synthetic_file_contexts(n_rules: int, seed: int = 0) -> bytes:
    """A file_contexts shaped like Fedora's: generic rules first, then many
    per-package ones (exact files, directory trees, suffix and lib patterns)."""
    rng = random.Random(seed)
    lines = [
        f"/.*\t{ctx('default')}", f"/\t-d\t{ctx('root')}", f"/usr(/.*)?\t{ctx('usr')}",
        f"/usr/bin(/.*)?\t{ctx('bin')}", f"/usr/lib(/.*)?\t{ctx('lib')}",
        f"/usr/lib64(/.*)?\t{ctx('lib')}", f"/etc(/.*)?\t{ctx('etc')}",
        f"/var(/.*)?\t{ctx('var')}", f"/var/lib(/.*)?\t{ctx('var_lib')}",
        f"/var/log(/.*)?\t{ctx('var_log')}", f"/run(/.*)?\t{ctx('var_run')}",
        "/tmp(/.*)?\t<<none>>", f"/home/[^/]+(/.*)?\t{ctx('user_home')}",
        f"/(.*/)?\\.snapshots(/.*)?\t{ctx('snapper')}",
        f"/usr/(.*/)?lib(64)?(/.*)?\\.so(\\.[^/]*)*\t--\t{ctx('lib_so')}",
        f"/dev/tty[0-9]*\t-c\t{ctx('tty_device')}",
        f"/usr/share/[[:alpha:]]+/icons(/.*)?\t{ctx('icon')}",
    ]
    while len(lines) < n_rules:
        w = rng.choice(WORDS)
        top = rng.choice(TOPS)
        kind = rng.randrange(8)
        label = ctx(f"{w.lower()}_{kind}")
        if kind == 0:
            lines.append(f"{top}/{w}\t--\t{label}")
        elif kind == 1:
            lines.append(f"{top}/{w}(/.*)?\t{label}")
        elif kind == 2:
            lines.append(f"{top}/{w}/[^/]*\\.conf\t--\t{label}")
        elif kind == 3:
            lines.append(f"{top}/{w}-[a-z]+(\\.bin)?\t--\t{label}")
        elif kind == 4:
            lines.append(f"{top}/{w}{rng.randrange(100)}\\.d(/.*)?\t-d\t{label}")
        elif kind == 5:
            lines.append(f"/usr/lib/systemd/system/{w}.*\\.service\t--\t{label}")
        elif kind == 6:
            lines.append(f"{top}/lib{w}\\.so(\\.[0-9]+)*\t--\t{label}")
        else:
            lines.append(f"{top}/{w}/(cache|data|run)(/.*)?\t{label}")
    return ("\n".join(lines) + "\n").encode()


def synthetic_paths(n_files: int, seed: int = 1) -> list[bytes]:
    """Paths that exercise the rules above (and many that only hit generic ones)."""
    rng = random.Random(seed)
    out = []
    for i in range(n_files):
        top = rng.choice(TOPS).replace("[^/]+", rng.choice(["alice", "bob"]))
        w = rng.choice(WORDS)
        kind = rng.randrange(6)
        if kind == 0:
            p = f"{top}/{w}"
        elif kind == 1:
            p = f"{top}/{w}/{rng.choice(['cache', 'data', 'x'])}/f{i}"
        elif kind == 2:
            p = f"{top}/{w}/f{i}.conf"
        elif kind == 3:
            p = f"{top}/lib{w}.so.{rng.randrange(3)}.{i}"
        elif kind == 4:
            p = f"/usr/lib/systemd/system/{w}-{i}.service"
        else:
            p = f"{top}/{w}{rng.randrange(100)}.d/f{i}"
        out.append(p.encode())
    return out


def build_tree(paths: list[bytes]) -> Directory:
    stat = Stat(0o755, 0, 0, 0, 0)
    root = Directory(stat.copy())
    for i, path in enumerate(paths):
        parts = path.strip(b"/").split(b"/")
        d = root
        for part in parts[:-1]:
            child = d.entries.get(part)
            if not isinstance(child, Directory):
                child = Directory(stat.copy())
                d.entries[part] = child
            d = child
        content = Symlink(b"target") if i % 10 == 0 else Inline(b"")
        if parts[-1] not in d.entries:
            d.entries[parts[-1]] = Leaf(stat.copy(), content)
    return root


def policy_from(file_contexts: bytes) -> SelinuxPolicy:
    return SelinuxPolicy.from_files({"file_contexts": file_contexts}.get)


def main() -> None:
    n_rules = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    n_files = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    fc = synthetic_file_contexts(n_rules)
    w0, c0 = time.perf_counter(), time.process_time()
    policy = policy_from(fc)
    w1, c1 = time.perf_counter(), time.process_time()
    root = build_tree(synthetic_paths(n_files))
    nodes = len(_count(root))
    w2, c2 = time.perf_counter(), time.process_time()
    apply_policy(root, policy)
    w3, c3 = time.perf_counter(), time.process_time()
    print(f"policy: {len(policy.rules)} rules compiled in {w1 - w0:.2f} s "
          f"({c1 - c0:.2f} s CPU)")
    print(f"labeled {nodes} nodes in {w3 - w2:.2f} s ({c3 - c2:.2f} s CPU): "
          f"{nodes / (w3 - w2):,.0f} labels/second ({nodes / (c3 - c2):,.0f} per CPU second)")


def _count(d: Directory) -> list[int]:
    out = [1]
    for child in d.entries.values():
        out.extend(_count(child) if isinstance(child, Directory) else [1])
    return out


if __name__ == "__main__":
    main()
