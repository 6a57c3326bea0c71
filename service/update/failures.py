"""Why an update failed, waited or fell back: every reason the twin can report, named once.

An operator reads these in the reported ``model.last_error.reason`` (and in the
``twinfer_download_failures_total{reason}`` metric), so they are part of the module's
contract: renaming one breaks a fleet's alert rules. Each constant says what the
operator can do about it.
"""
from __future__ import annotations

# --- the desired document ------------------------------------------------------------
MALFORMED_DESIRED = "malformed_desired"  # fix the twin's desired ``model`` (the message names the field)
NOT_IN_STORE = "not_in_store"  # a version the device does not hold, and no url to fetch it from
DOWNGRADE_REFUSED = "downgrade_refused"  # lower than the highest activated: set ``allow_downgrade``
CANCELLED = "cancelled"  # a newer desired document replaced the target (not reported as a failure)

# --- the download (``service.update.fetch``) -----------------------------------------
FORBIDDEN = "forbidden"  # HTTP 401/403: the SAS token expired or does not grant read
NOT_FOUND = "not_found"  # HTTP 404: the blob is not at the url
HTTP_ERROR = "http_error"  # another HTTP status, after the retries
NETWORK = "network"  # the link failed for longer than the retries; retried later
NO_SPACE = "no_space"  # the store's disk is full (the partial file is dropped)
SIZE_MISMATCH = "size_mismatch"  # the server's size is not the twin's ``size``
WINDOW_CLOSED = "window_closed"  # the download window closed; resumes at the next one

# --- trust ----------------------------------------------------------------------------
CHECKSUM_MISMATCH = "checksum_mismatch"  # the bytes are not the twin's sha256/md5 (or do not decompress)
UNSIGNED = "unsigned"  # the device has trusted keys and the twin gives no signature
SIGNATURE_INVALID = "signature_invalid"  # the signature does not verify with any trusted key

# --- the bundle and the model ---------------------------------------------------------
BAD_BUNDLE = "bad_bundle"  # prefix: ``bad_bundle_<why>`` (service.update.bundle's reasons, e.g. bomb)
INVALID_MODEL = "invalid_model"  # the model did not load or run in validation (the message says why)
# A variant (e.g. int8) agreed too little with its reference model on this device's CPU
# (the figures are in the report); the twin's next variant is tried. Check the variant's
# quantisation on this CPU family, or pin another variant (model.variant).
VARIANT_REJECTED = "variant_rejected"
# The version serves here from a bundle none of model.variants names: roll them out as a new version.
VARIANT_MISMATCH = "variant_mismatch"
# Every variant was passed over before a download (written for another version, or pinned
# out): the message lists why; fix model.variants or model.variant.
NO_USABLE_VARIANT = "no_usable_variant"
WORKER_LOAD_FAILED = "worker_load_failed"  # validated, but a worker could not load it: rolled back
DAMAGED_MODEL = "damaged_model"  # a staged version was damaged at start-up and replaced
MEMORY_BUDGET = "memory_budget"  # the pool would outgrow TWINFER_MODEL_MEMORY_BUDGET: raise it or remove a model
DEFAULT_NOT_REMOVABLE = "default_not_removable"  # models.<the default> removed: the twin's model names another

# --- the device ------------------------------------------------------------------------
STORE_NOT_WRITABLE = "store_not_writable"  # the model store's volume is read-only or not ours
INTERNAL = "internal"  # a bug in the update pipeline: the module log has the traceback

# --- why a delta was not used (reported as ``download.delta_fallback``; the full bundle follows)
DELTA_UNSUPPORTED_ENGINE = "unsupported_engine"
DELTA_BASE_MISSING = "base_missing"
DELTA_BASE_MISMATCH = "base_mismatch"
DELTA_PATCH = "patch"  # prefix: ``patch_<download reason>`` when the patch did not download
DELTA_PATCH_CHECKSUM = "patch_checksum"
DELTA_RESULT_CHECKSUM = "result_checksum"


def bad_bundle(why: str) -> str:
    """The reported reason for a bundle ``service.update.bundle`` refused (``why``: its reason)."""
    return f"{BAD_BUNDLE}_{why}"


def patch_failed(download_reason: str) -> str:
    """The delta fallback reason when the patch itself could not be downloaded."""
    return f"{DELTA_PATCH}_{download_reason}"


class UpdateFailed(Exception):
    """An update that ends here: ``reason`` (one of the constants above) and a message an
    operator can act on. ``retryable``: the same document is tried again later (a flaky
    link); ``state``: what the twin reports, "failed" or "rolled_back" (workers refused a
    published model and the pool went back); ``figures``: what was measured, for the report."""

    def __init__(
        self, reason: str, message: str, retryable: bool = False, state: str = "failed", figures: dict | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.state = state
        self.figures = figures  # measured figures behind the reason (variant_rejected's agreement)
