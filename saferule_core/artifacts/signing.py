"""Ed25519 signing of artifact manifests (PyNaCl), and the key files.

A key directory holds `signing_key` (hex seed, mode 0600, stays on the publishing host) and
`verify_key` (hex public key, copied to every robot). The signature covers a fixed context string
followed by the manifest's canonical bytes; the manifest in turn holds the SHA-256 of the ONNX
file, so one signature pins both. `manifest.sig` stores the 64-byte signature as hex.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nacl.encoding import HexEncoder
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from saferule_core.errors import ArtifactError
from saferule_core.io_utils import atomic_write_text, read_regular_file
from saferule_core.limits import MAX_SMALL_FILE_BYTES, LimitError

KEY_DIR_ENV = "SAFERULE_KEY_DIR"
SIGNING_KEY_FILE = "signing_key"
VERIFY_KEY_FILE = "verify_key"
# Domain separation: a signature made here can never be mistaken for one over other data.
SIGNATURE_CONTEXT = b"saferule-policy-artifact-manifest-v1\n"
_SIGNATURE_BYTES = 64


def default_key_dir() -> Path:
    """$SAFERULE_KEY_DIR, else ~/.config/saferule/keys (outside any registry: the registry is
    what gets copied to robots, the signing key must not be)."""
    return Path(os.environ.get(KEY_DIR_ENV) or Path.home() / ".config" / "saferule" / "keys")


def verify_key_hex(key: SigningKey | VerifyKey) -> str:
    verify_key = key.verify_key if isinstance(key, SigningKey) else key
    return verify_key.encode(HexEncoder).decode("ascii")


def generate_keypair(directory: Path) -> VerifyKey:
    """Create `signing_key` (0600) and `verify_key` in `directory`; refuse to overwrite a key."""
    directory = Path(directory)
    for name in (SIGNING_KEY_FILE, VERIFY_KEY_FILE):
        if (directory / name).exists():
            raise ArtifactError(f"{directory / name} already exists; refusing to overwrite a key")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    signing_key = SigningKey.generate()
    # atomic_write_text creates its temporary file with mkstemp (mode 0600), so the secret is never
    # readable by others, not even before the chmod below.
    atomic_write_text(directory / SIGNING_KEY_FILE, signing_key.encode(HexEncoder).decode("ascii") + "\n")
    os.chmod(directory / SIGNING_KEY_FILE, 0o600)
    atomic_write_text(directory / VERIFY_KEY_FILE, verify_key_hex(signing_key) + "\n")
    os.chmod(directory / VERIFY_KEY_FILE, 0o644)
    return signing_key.verify_key


def _key_file(path: Path, name: str) -> Path:
    path = Path(path)
    return path / name if path.is_dir() else path


def _read_hex_key(path: Path, what: str) -> bytes:
    try:
        text = read_regular_file(path, MAX_SMALL_FILE_BYTES).decode("ascii").strip()
    except FileNotFoundError:
        raise ArtifactError(f"no {what} at {path} (create a key pair with `saferule registry keygen DIR`)") from None
    except (OSError, UnicodeDecodeError, LimitError) as err:
        raise ArtifactError(f"cannot read {what} {path}: {err}") from None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ArtifactError(f"{what} {path} is not hex") from None
    if len(raw) != 32:
        raise ArtifactError(f"{what} {path} holds {len(raw)} bytes, expected 32")
    return raw


def load_signing_key(path: Path) -> SigningKey:
    """The signing key in a key directory (or the `signing_key` file itself)."""
    key_file = _key_file(path, SIGNING_KEY_FILE)
    if key_file.exists() and stat.S_IMODE(key_file.stat().st_mode) & 0o077:
        raise ArtifactError(f"signing key {key_file} is readable by other users; run `chmod 600 {key_file}`")
    return SigningKey(_read_hex_key(key_file, "signing key"))


def load_verify_key(path: Path) -> VerifyKey:
    """The verify key in a key directory (or the `verify_key` file itself)."""
    return VerifyKey(_read_hex_key(_key_file(path, VERIFY_KEY_FILE), "verify key"))


def sign_manifest(manifest_bytes: bytes, signing_key: SigningKey) -> bytes:
    """The 64-byte Ed25519 signature of the manifest bytes."""
    return signing_key.sign(SIGNATURE_CONTEXT + manifest_bytes).signature


def encode_signature(signature: bytes) -> bytes:
    return signature.hex().encode("ascii") + b"\n"


def decode_signature(text: bytes) -> bytes:
    try:
        signature = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ArtifactError("signature file is not hex") from None
    if len(signature) != _SIGNATURE_BYTES:
        raise ArtifactError(f"signature holds {len(signature)} bytes, expected {_SIGNATURE_BYTES}")
    return signature


def verify(manifest_bytes: bytes, signature: bytes | None, verify_key: VerifyKey) -> None:
    """Raise ArtifactError unless `signature` is verify_key's signature of exactly these bytes."""
    if signature is None:
        raise ArtifactError("unsigned: the manifest has no signature")
    try:
        verify_key.verify(SIGNATURE_CONTEXT + manifest_bytes, signature)
    except BadSignatureError:
        raise ArtifactError(f"bad signature: the manifest was altered or not signed by key "
                            f"{verify_key_hex(verify_key)[:16]}...") from None
