from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from saferule_core.artifacts.signing import (
    decode_signature,
    encode_signature,
    generate_keypair,
    load_signing_key,
    load_verify_key,
    sign_manifest,
    verify,
    verify_key_hex,
)
from saferule_core.errors import ArtifactError

MANIFEST = b'{\n  "version": "v0001"\n}\n'


def test_generate_keypair_files_and_permissions(tmp_path: Path) -> None:
    verify_key = generate_keypair(tmp_path / "keys")
    signing_file = tmp_path / "keys" / "signing_key"
    assert stat.S_IMODE(signing_file.stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "verify_key").read_text().strip() == verify_key_hex(verify_key)
    assert load_signing_key(tmp_path / "keys").verify_key == verify_key
    assert load_verify_key(tmp_path / "keys") == verify_key
    assert load_verify_key(tmp_path / "keys" / "verify_key") == verify_key


def test_generate_keypair_refuses_to_overwrite(key_dir: Path) -> None:
    before = (key_dir / "signing_key").read_bytes()
    with pytest.raises(ArtifactError, match="already exists"):
        generate_keypair(key_dir)
    assert (key_dir / "signing_key").read_bytes() == before


def test_group_readable_signing_key_is_refused(key_dir: Path) -> None:
    os.chmod(key_dir / "signing_key", 0o640)
    with pytest.raises(ArtifactError, match="chmod 600"):
        load_signing_key(key_dir)


def test_missing_key_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="registry keygen"):
        load_verify_key(tmp_path / "nowhere")


def test_sign_verify_round_trip(signing_key: SigningKey) -> None:
    signature = sign_manifest(MANIFEST, signing_key)
    assert decode_signature(encode_signature(signature)) == signature
    verify(MANIFEST, signature, signing_key.verify_key)  # no exception


def test_altered_manifest_fails(signing_key: SigningKey) -> None:
    signature = sign_manifest(MANIFEST, signing_key)
    with pytest.raises(ArtifactError, match="bad signature"):
        verify(MANIFEST.replace(b"v0001", b"v0002"), signature, signing_key.verify_key)


def test_wrong_key_fails(signing_key: SigningKey) -> None:
    signature = sign_manifest(MANIFEST, signing_key)
    with pytest.raises(ArtifactError, match="bad signature"):
        verify(MANIFEST, signature, SigningKey.generate().verify_key)


def test_unsigned_fails(signing_key: SigningKey) -> None:
    with pytest.raises(ArtifactError, match="unsigned"):
        verify(MANIFEST, None, signing_key.verify_key)


def test_signature_is_bound_to_the_context(signing_key: SigningKey) -> None:
    plain = signing_key.sign(MANIFEST).signature  # a signature over the bare bytes, no context
    with pytest.raises(ArtifactError):
        verify(MANIFEST, plain, signing_key.verify_key)


def test_malformed_signature_file() -> None:
    with pytest.raises(ArtifactError, match="not hex"):
        decode_signature(b"zz\n")
    with pytest.raises(ArtifactError, match="expected 64"):
        decode_signature(b"abcd\n")
