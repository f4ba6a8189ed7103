# Type stub of the C extension built from _native.c.

class Stat:
    st_mode: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_rdev: int
    st_mtime_ns: int
    st_ctime_ns: int

def digest_fd(fd: int, alg: int, /) -> tuple[bytes, int]: ...
def digest_buffer(data: bytes | bytearray | memoryview, alg: int, /) -> bytes: ...
def digest_paths(paths: list[bytes], alg: int, nofollow: bool, dir_fd: int = ...,
                 /) -> list[tuple[bytes, int, int, int, int, int, int, int, bool] | int]: ...
def fingerprint_tree(root: bytes, salt: bytes, /) -> tuple[bytes, int, int]: ...
def list_directory(path: bytes, inline_max: int, /) -> list[
    tuple[bytes, bytes, Stat | None, dict[bytes, bytes] | None, bytes | None]]: ...
def multibuffer(enabled: bool | None = None, /) -> bool: ...
