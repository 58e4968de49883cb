"""The encrypted file key store: one folder, one PEM per key version, one JSON per key.

Layout of the folder (``./keys`` by default)::

    qa-signing.json        public: versions, public keys, fingerprints, validity
    qa-signing.v1.pem      PKCS#8, encrypted with the passphrase, mode 0600
    qa-signing.v2.pem
    .lock                  taken while a key is generated or rotated

Listing, exporting and verifying read only the JSON files, so they need no
passphrase. Every file is written to a temporary name and renamed, so a crash
never leaves half a key; private key files are created 0600 and a private key
file that group or others may read is refused rather than used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from engine.errors import KeyStoreError
from engine.keys import (
    KeyEvents,
    KeyVersion,
    Listener,
    SignatureCheck,
    check_key_name,
    verifier_of,
    version_at,
)
from plugins.filekeys.passphrase import Passphrase

FORMAT = "converge-file-keys/1"
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class FileKeyStore:
    """A :class:`~engine.keys.KeyStore` in a folder of encrypted PKCS#8 files."""

    def __init__(
        self, folder: Path, *, passphrase: str | bytes | None = None, clock: Clock = utc_now
    ) -> None:
        self.folder = folder
        self.passphrase = Passphrase(passphrase)
        self.clock = clock
        self.events = KeyEvents()
        self._unlocked: dict[tuple[str, int], Ed25519PrivateKey] = {}

    # --- reading (no passphrase) --------------------------------------------------------

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.json") if _is_key_name(p.stem))

    def versions(self, name: str) -> list[KeyVersion]:
        return [_version(name, v, self._meta_path(name)) for v in self._metadata(name)["versions"]]

    def verifier(self, name: str) -> SignatureCheck:
        self.versions(name)  # fail now, not at the first signature, for a key that is not here
        return verifier_of(lambda: self.versions(name))

    def subscribe(self, listener: Listener) -> None:
        self.events.subscribe(listener)

    # --- private keys --------------------------------------------------------------------

    def signer(self, name: str, at: datetime) -> Ed25519PrivateKey:
        return self._private(version_at(self.versions(name), at))

    def generate(
        self,
        name: str,
        valid_for: timedelta | None = None,
        created_by: Mapping[str, Any] | None = None,
    ) -> KeyVersion:
        check_key_name(name)
        with self._locked():
            if self._meta_path(name).exists():
                raise KeyStoreError(f"key {name} exists in {self.folder}; rotate it instead")
            secret = self.passphrase.get(confirm=True)
            now = self.clock()
            version = self._new_version(
                name, 1, now, valid_for, secret=secret, created_by=created_by
            )
            self._write_metadata(name, valid_for, [version])
        self.events.emit("generated", version, now)
        return version

    def rotate(
        self,
        name: str,
        valid_for: timedelta | None = None,
        created_by: Mapping[str, Any] | None = None,
    ) -> KeyVersion:
        with self._locked():
            meta = self._metadata(name)
            old = self.versions(name)
            current = old[-1]
            self._check_passphrase(current)
            now = self.clock()
            retired = _retire(current, now)
            period = valid_for if valid_for is not None else _period(meta)
            secret = self.passphrase.get(confirm=True)
            new = self._new_version(
                name, current.version + 1, now, period, secret=secret, created_by=created_by
            )
            self._write_metadata(name, _period(meta), [*old[:-1], retired, new])
        if retired != current:
            self.events.emit("retired", retired, now)
        self.events.emit("rotated", new, now)
        return new

    def _check_passphrase(self, current: KeyVersion) -> None:
        """Refuse to rotate under a passphrase that does not open the current version:
        one store, one passphrase, or signing would fail after the next restart."""
        if self._pem_path(current.name, current.version).exists():
            self._private(current)

    def _private(self, version: KeyVersion) -> Ed25519PrivateKey:
        """The decrypted private key of ``version``, checked against its public key."""
        cached = self._unlocked.get((version.name, version.version))
        if cached is not None:
            return cached
        path = self._pem_path(version.name, version.version)
        key = _load_private(path, self.passphrase.get(confirm=False))
        if key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) != version.public_key:
            meta = self._meta_path(version.name)
            raise KeyStoreError(f"{path} does not hold the public key {meta} lists")
        self._unlocked[version.name, version.version] = key
        return key

    def _new_version(
        self,
        name: str,
        number: int,
        now: datetime,
        valid_for: timedelta | None,
        *,
        secret: bytes,
        created_by: Mapping[str, Any] | None,
    ) -> KeyVersion:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(secret))
        path = self._pem_path(name, number)
        if path.exists():
            raise KeyStoreError(f"{path} exists but {self._meta_path(name)} does not list it")
        _write_atomically(path, pem, PRIVATE_MODE)
        self._unlocked[name, number] = key
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        until = None if valid_for is None else now + valid_for
        return KeyVersion(name, number, public, now, until, now, created_by)

    # --- files ---------------------------------------------------------------------------

    def _meta_path(self, name: str) -> Path:
        return self.folder / f"{check_key_name(name)}.json"

    def _pem_path(self, name: str, version: int) -> Path:
        return self.folder / f"{check_key_name(name)}.v{version}.pem"

    def _metadata(self, name: str) -> dict[str, Any]:
        path = self._meta_path(name)
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeyStoreError(
                f"no key {name} in {self.folder}; create it with: converge keys generate {name}"
            ) from None
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"cannot read {path}: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not meta.get("versions"):
            raise KeyStoreError(f"{path} is not a {FORMAT} key file")
        return meta

    def _write_metadata(
        self, name: str, valid_for: timedelta | None, versions: list[KeyVersion]
    ) -> None:
        meta = {
            "format": FORMAT,
            "name": name,
            "valid_for_seconds": None if valid_for is None else int(valid_for.total_seconds()),
            "versions": [v.as_dict() for v in versions],
        }
        text = json.dumps(meta, indent=2) + "\n"
        _write_atomically(self._meta_path(name), text.encode(), PUBLIC_MODE)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers (two rotations at once would both make version n+1)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _is_key_name(stem: str) -> bool:
    try:
        check_key_name(stem)
    except KeyStoreError:
        return False
    return True


def _retire(version: KeyVersion, now: datetime) -> KeyVersion:
    """``version`` ending now, unless it already ended earlier."""
    if version.not_after is not None and version.not_after <= now:
        return version
    return KeyVersion(
        version.name,
        version.version,
        version.public_key,
        version.not_before,
        now,
        version.created_at,
        version.created_by,
    )


def _period(meta: dict[str, Any]) -> timedelta | None:
    seconds = meta.get("valid_for_seconds")
    return None if seconds is None else timedelta(seconds=seconds)


def _version(name: str, entry: dict[str, Any], path: Path) -> KeyVersion:
    """One version entry of a metadata file; a damaged entry is a one-line error."""
    try:
        return KeyVersion.from_dict({**entry, "name": name})
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyStoreError(f"{path}: damaged entry for version {entry.get('version')}") from exc


def _load_private(path: Path, secret: bytes) -> Ed25519PrivateKey:
    """Decrypt one PEM file, refusing a file that others may read or that is not encrypted."""
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from exc
    if info.st_mode & 0o077:
        raise KeyStoreError(
            f"{path} may be read by group or others (mode {stat.filemode(info.st_mode)});"
            f" refusing it: chmod 600 {path}"
        )
    try:
        key = load_pem_private_key(data, password=secret)
    except TypeError as exc:  # the file is not encrypted
        raise KeyStoreError(f"{path} is not encrypted; refusing it") from exc
    except ValueError as exc:
        raise KeyStoreError(
            f"cannot decrypt {path}: wrong passphrase (CONVERGE_KEY_PASSPHRASE) or damaged file"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyStoreError(f"{path} does not hold an Ed25519 key")
    return key


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` under a temporary name created with ``mode``, then rename it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # the umask may have taken bits away; add none
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
