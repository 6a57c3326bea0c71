"""Which of a model's variants this device downloads, in which order, and why.

The twin may offer one model version as several bundles (``model.variants``: say int8 and
fp32, in the operator's order of preference). A device takes the first one its CPU runs
well: int8 only where the CPU has int8 dot-product instructions (``twinfer.cpu``; the
``TWINFER_VARIANT_INT8`` setting overrides the detection, the twin's ``model.variant`` pins
one variant outright). Only that bundle is downloaded; when it fails on this device
(its verification set disagrees on this CPU, or it does not load) the next one is tried,
and ``model.url`` beside the variants is the last resort. Entries written for another
model version (IoT Hub merges patches key by key, so an old patch's variant can linger)
are never used. When the CPU runs none of them well, they are still tried, in order:
served slowly beats not served.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from service.update import failures
from service.update.desired import DesiredModel
from service.update.desired_bundle import DesiredVariant
from service.update.failures import UpdateFailed
from twinfer.cpu import Int8Support, int8_support

INT8 = "int8"


def falls_through(failure: UpdateFailed) -> bool:
    """Whether the next variant is worth trying after this one failed. Each variant is its
    own bundle (hash, signature, size, blob, model), so a failure of its own (below its
    verification gate here, not loading, a bad checksum or signature, a missing blob, the
    memory budget) makes way for the next; a failing link (retried later with the same
    list), a full disk or a newer document ends the attempt."""
    return not failure.retryable and failure.reason not in (failures.CANCELLED, failures.NO_SPACE)


def int8_policy(setting: str, detected: Int8Support | None = None) -> Int8Support:
    """``TWINFER_VARIANT_INT8`` (auto, always, never) over the CPU's own answer."""
    detected = detected or int8_support()
    if setting == "always":
        return Int8Support(True, f"TWINFER_VARIANT_INT8=always ({detected.why})", detected.features)
    if setting == "never":
        return Int8Support(False, f"TWINFER_VARIANT_INT8=never ({detected.why})", detected.features)
    return detected


@dataclass(frozen=True)
class VariantChoice:
    """The bundles to try, in order, and what was passed over and why."""

    candidates: tuple[DesiredModel, ...]
    skipped: tuple[dict, ...]
    cpu: Int8Support

    def report(self) -> dict:
        """``model.variant`` before anything is tried: what this CPU is, what was passed over."""
        return {"cpu": self.cpu.why, "int8": self.cpu.fast, "skipped": list(self.skipped)}

    def usable(self) -> None:
        """Raises ``no_usable_variant`` when every variant was passed over before a download."""
        if not self.candidates:
            why = "; ".join(f"{s['variant']}: {s['why']}" for s in self.skipped)
            raise UpdateFailed(failures.NO_USABLE_VARIANT, f"no variant of model.variants can be used: {why}")


def as_bundle(target: DesiredModel, variant: DesiredVariant) -> DesiredModel:
    """``target`` as the one bundle ``variant`` describes."""
    return replace(
        target, url=variant.url, sha256=variant.sha256, md5=variant.md5, size=variant.size,
        signature=variant.signature, delta=variant.delta, compression=variant.compression,
        file_name=(PurePosixPath(urlsplit(variant.url).path).name
                   or f"{target.name}_{target.version}_{variant.name}.zip"),
        variants=(), pinned_variant=None, variant=variant.name,
    )


def choose(target: DesiredModel, cpu: Int8Support) -> VariantChoice:
    """The candidates for ``target``: itself when it has no variants."""
    if not target.variants:
        return VariantChoice((target,), (), cpu)
    skipped: list[dict] = []
    good: list[DesiredModel] = []
    slow: list[tuple[dict, DesiredModel]] = []  # int8 on a CPU without int8 dot products
    for variant in target.variants:
        if target.pinned_variant is not None and variant.name != target.pinned_variant:
            skipped.append({"variant": variant.name, "why": f"the twin pins model.variant {target.pinned_variant}"})
        elif variant.version is not None and variant.version != target.version:
            skipped.append({"variant": variant.name,
                            "why": f"written for version {variant.version}, not {target.version} (a stale entry)"})
        elif variant.precision == INT8 and not cpu.fast and target.pinned_variant is None:
            slow.append(({"variant": variant.name, "why": f"int8 on an {cpu.why}"}, as_bundle(target, variant)))
            skipped.append(slow[-1][0])
        else:
            good.append(as_bundle(target, variant))
    if target.url is not None and target.pinned_variant is None:
        good.append(replace(target, variants=(), pinned_variant=None, variant=None))
    if not good:  # nothing this CPU runs well: still better served slowly than not at all
        for entry, _ in slow:
            entry["why"] += "; tried anyway: no other variant"
        good = [bundle for _, bundle in slow]
    return VariantChoice(tuple(good), tuple(skipped), cpu)


def staged_match(choice: VariantChoice, record: dict) -> DesiredModel | None:
    """The candidate a staged version's bundle is (by its recorded SHA-256, else MD5)."""
    for candidate in choice.candidates:
        if candidate.sha256 is not None and candidate.sha256 == record.get("sha256"):
            return candidate
        if candidate.sha256 is None and candidate.md5 is not None and candidate.md5 == record.get("md5"):
            return candidate
    return None


class Rejections:
    """The variants this device refused for one desired document, kept while that document
    is retried (after a failing link): a refused bundle is not downloaded again."""

    def __init__(self) -> None:
        self._document: str | None = None
        self._by_bundle: dict[tuple[str | None, str | None], dict] = {}

    def start(self, document: str) -> None:
        """Handling ``document`` (its fingerprint): a new one forgets the last one's refusals."""
        if document != self._document:
            self._document, self._by_bundle = document, {}

    @staticmethod
    def _key(bundle: DesiredModel) -> tuple[str | None, str | None]:
        return bundle.sha256, bundle.md5

    def refused(self, bundle: DesiredModel) -> bool:
        return self._key(bundle) in self._by_bundle

    def add(self, bundle: DesiredModel, failure: UpdateFailed) -> None:
        # No nulls inside the entries: IoT Hub refuses a reported array that holds one.
        entry = {"variant": bundle.variant or "model.url", "reason": failure.reason, "message": failure.message}
        self._by_bundle[self._key(bundle)] = {**entry, **({"figures": failure.figures} if failure.figures else {})}

    def report(self) -> list[dict]:
        return list(self._by_bundle.values())
