"""Whether a bundle may activate: its signature and its version.

With trusted keys (``TWINFER_TRUSTED_KEYS``) the twin's signature must cover (name,
version, sha256) of the bundle, a staged version's too (checked against the SHA-256
recorded when it was installed). A version lower than the highest ever activated for the
same name is refused unless the twin allows the downgrade (``service.update.rollback``).
"""
from __future__ import annotations

import logging
from pathlib import Path

from service.repository import read_bundle_record
from service.update import failures
from service.update.desired import DesiredModel
from service.update.failures import UpdateFailed
from service.update.rollback import RollbackGuard
from service.update.signing import NO_TRUSTED_KEY, UNSIGNED, SignatureError, TrustedKey, verify

log = logging.getLogger("twinfer.updater")


def recorded_sha256(directory: Path) -> str | None:
    """The SHA-256 of the bundle a staged version was installed from (None: no record)."""
    value = read_bundle_record(directory).get("sha256")
    return value if isinstance(value, str) else None


class Trust:
    def __init__(
        self, store: Path, trusted_keys: tuple[TrustedKey, ...] | None, trusted_keys_error: str | None = None
    ) -> None:
        """``trusted_keys`` None: signatures are not required (the embedded default); a
        tuple (even empty, when the configured keys could not be loaded): every activation
        needs a valid signature. ``trusted_keys_error``: why the configured keys did not load."""
        self._keys = trusted_keys
        self._keys_error = trusted_keys_error
        self._rollback = RollbackGuard(store)

    @property
    def requires_signatures(self) -> bool:
        return self._keys is not None

    def check_signature(self, target: DesiredModel, sha256: str | None) -> None:
        """Raises ``UpdateFailed`` unless the signature covers (name, version, ``sha256``)."""
        if self._keys is None:
            return
        if sha256 is None:  # a staged version with no record of the bundle it came from
            raise UpdateFailed(
                failures.UNSIGNED if not target.signature else failures.SIGNATURE_INVALID,
                f"{target.name} {target.version} is in the store but was not installed from a bundle this device "
                f"recorded (no SHA-256 to check a signature against); with trusted keys only signed bundles "
                f"activate: roll it out again as a signed bundle under a new version",
            )
        try:
            key = verify(self._keys, target.name, target.version, sha256, target.signature)
        except SignatureError as exc:
            message = str(exc)
            if exc.reason == NO_TRUSTED_KEY and self._keys_error:
                message += f": {self._keys_error}"
            reason = failures.UNSIGNED if exc.reason == UNSIGNED else failures.SIGNATURE_INVALID
            raise UpdateFailed(reason, message) from None
        log.info("%s %s: signature verified with trusted key %s", target.name, target.version, key)

    def check_staged(self, target: DesiredModel, directory: Path) -> None:
        """A version already in the store is trusted as the bundle it was installed from."""
        if self.requires_signatures:
            self.check_signature(target, recorded_sha256(directory))

    def check_downgrade(self, target: DesiredModel) -> None:
        refusal = self._rollback.refusal(target.name, target.version, target.allow_downgrade, target.version_is_digest)
        if refusal is not None:
            raise UpdateFailed(failures.DOWNGRADE_REFUSED, refusal)

    def note_activated(self, name: str, version: str, version_is_digest: bool = False) -> None:
        """Raise the version high-water mark (a digest pin has no order and leaves it)."""
        if not version_is_digest:
            self._rollback.note_activated(name, version)
