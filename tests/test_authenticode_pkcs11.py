"""Signing with a key inside a PKCS#11 token (SoftHSM) through OpenSSL's pkcs11 engine.

Needs softhsm2, libengine-pkcs11-openssl and openssl; skips otherwise."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import need_tool
from test_uki_support import cli, make_pe, sbverify_ok

from cfsboot.boot import authenticode as ac

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
ENGINE_DIRS = ("/usr/lib/x86_64-linux-gnu/engines-3", "/usr/lib/aarch64-linux-gnu/engines-3")


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A SoftHSM token holding db.key; returns (PKCS#11 URI, key directory)."""
    util = need_tool("softhsm2-util")
    need_tool("openssl")
    if not os.path.exists(SOFTHSM_MODULE):
        pytest.skip(f"{SOFTHSM_MODULE} missing (apt-get install softhsm2)")
    if not any(os.path.exists(f"{d}/pkcs11.so") for d in ENGINE_DIRS):
        pytest.skip("OpenSSL pkcs11 engine missing (apt-get install libengine-pkcs11-openssl)")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\n"
                    "objectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    keys = tmp_path / "keys"
    assert cli("keys", "generate", str(keys)) == 0
    subprocess.run([util, "--init-token", "--free", "--label", "cfsboot", "--pin", "1234",
                    "--so-pin", "0000"], check=True, capture_output=True)
    subprocess.run([util, "--import", str(keys / "db.key"), "--token", "cfsboot",
                    "--label", "db", "--id", "01", "--pin", "1234"],
                   check=True, capture_output=True)
    return "pkcs11:token=cfsboot;object=db;type=private;pin-value=1234", keys


def test_pkcs11_signature_equals_key_file(token: tuple[str, Path]) -> None:
    uri, keys = token
    cert = ac.load_certificate((keys / "db.crt").read_bytes())
    image = make_pe()
    by_token = ac.sign(image, ac.engine_signer("pkcs11", uri, cert, module=SOFTHSM_MODULE))
    key = ac.load_private_key((keys / "db.key").read_bytes())
    assert by_token == ac.sign(image, ac.KeySigner(key, cert))


def test_cli_pkcs11(token: tuple[str, Path], tmp_path: Path) -> None:
    uri, keys = token
    src = tmp_path / "in.efi"
    src.write_bytes(make_pe())
    out = tmp_path / "out.efi"
    assert cli("uki", "sign", str(src), "-o", str(out), "--cert", str(keys / "db.crt"),
               "--pkcs11-uri", uri, "--pkcs11-module", SOFTHSM_MODULE) == 0
    assert sbverify_ok(keys / "db.crt", out)
    out2 = tmp_path / "out2.efi"
    assert cli("uki", "sign", str(src), "-o", str(out2), "--cert", str(keys / "db.crt"),
               "--engine", "pkcs11", "--key", uri, "--pkcs11-module", SOFTHSM_MODULE) == 0
    assert out2.read_bytes() == out.read_bytes()
    with pytest.raises(ac.AuthenticodeError, match="exited with"):
        cli("uki", "sign", str(src), "-o", str(out2), "--cert", str(keys / "db.crt"),
            "--pkcs11-uri", uri.replace("object=db", "object=missing"),
            "--pkcs11-module", SOFTHSM_MODULE)
