"""model.variants: how the twin's document is read, and which bundle a device tries first."""
from __future__ import annotations

import pytest

from service.update import failures
from service.update.desired import DesiredError, merge_patch, parse_desired
from service.update.failures import UpdateFailed
from service.update.variants import Rejections, choose, falls_through, int8_policy, staged_match
from twinfer.cpu import Int8Support

SHA = {name: f"{i:064x}" for i, name in enumerate(("int8", "fp32", "fp16", "top"), start=1)}
FAST = Int8Support(True, "x86_64 CPU with AVX-512 VNNI", ("AVX-512 VNNI",))
SLOW = Int8Support(False, "x86_64 CPU without int8 dot-product instructions (no VNNI, AMX or Arm dot product)", ())


def variant(name: str, **extra) -> dict:
    return {"url": f"https://files.local/ssd_{name}.zip", "sha256": SHA[name], "size": 1000, **extra}


def model(variants: dict | None = None, **extra) -> dict:
    return {"model": {"name": "ssd", "version": "2.0", **({"variants": variants} if variants is not None else {}),
                      **extra}}


def names(choice) -> list:
    return [c.variant for c in choice.candidates]


def test_variants_replace_the_url_and_keep_their_order():
    target = parse_desired(model({"int8": variant("int8"), "fp32": variant("fp32", version="2.0")})).model
    assert target.url is None and [v.name for v in target.variants] == ["int8", "fp32"]
    assert [v.precision for v in target.variants] == ["int8", "fp32"]  # from the names
    first = choose(target, FAST).candidates[0]
    assert (first.variant, first.url, first.sha256, first.file_name) == (
        "int8", "https://files.local/ssd_int8.zip", SHA["int8"], "ssd_int8.zip")
    assert (first.name, first.version, first.variants) == ("ssd", "2.0", ())


def test_a_cpu_without_int8_dot_products_passes_int8_over_and_says_why():
    target = parse_desired(model({"int8": variant("int8"), "fp32": variant("fp32")})).model
    assert names(choose(target, FAST)) == ["int8", "fp32"]  # int8 first, fp32 if int8 is rejected here
    slow = choose(target, SLOW)
    assert names(slow) == ["fp32"]
    assert slow.skipped == ({"variant": "int8", "why": f"int8 on an {SLOW.why}"},)
    assert slow.report() == {"cpu": SLOW.why, "int8": False, "skipped": list(slow.skipped)}


def test_a_named_variant_is_int8_by_its_precision_key():
    target = parse_desired(model({"small": variant("int8", precision="int8"), "big": variant("fp32")})).model
    assert names(choose(target, SLOW)) == ["big"]


def test_int8_alone_is_still_tried_on_a_slow_cpu():
    target = parse_desired(model({"int8": variant("int8")})).model
    choice = choose(target, SLOW)
    assert names(choice) == ["int8"] and choice.skipped[0]["why"].endswith("tried anyway: no other variant")


def test_the_url_beside_the_variants_is_the_last_resort():
    target = parse_desired(model({"int8": variant("int8")}, url="https://files.local/ssd.zip", sha256=SHA["top"])).model
    candidates = choose(target, FAST).candidates
    assert [(c.variant, c.sha256) for c in candidates] == [("int8", SHA["int8"]), (None, SHA["top"])]
    assert names(choose(target, SLOW)) == [None]


def test_a_pinned_variant_is_taken_whatever_the_cpu():
    target = parse_desired(model({"int8": variant("int8"), "fp32": variant("fp32")}, variant="int8")).model
    choice = choose(target, SLOW)
    assert names(choice) == ["int8"]
    assert choice.skipped == ({"variant": "fp32", "why": "the twin pins model.variant int8"},)


def test_an_entry_left_by_an_older_patch_is_never_used():
    """IoT Hub merges desired patches key by key: 1.0's int8 survives a 2.0 patch that offers only fp32."""
    old = model({"int8": variant("int8", version="1.0")})
    old["model"]["version"] = "1.0"
    merged = merge_patch(old, model({"fp32": variant("fp32", version="2.0")}))
    choice = choose(parse_desired(merged).model, FAST)
    assert names(choice) == ["fp32"]
    assert choice.skipped == ({"variant": "int8", "why": "written for version 1.0, not 2.0 (a stale entry)"},)


def test_a_dropped_variant_is_gone():
    merged = merge_patch(model({"int8": variant("int8"), "fp32": variant("fp32")}), model({"int8": None}))
    assert [v.name for v in parse_desired(merged).model.variants] == ["fp32"]


def test_each_variant_may_carry_its_own_delta_and_signature():
    delta = {"base_version": "1.0", "base_sha256": SHA["fp16"], "url": "https://files.local/p.zst", "sha256": SHA["top"]}
    target = parse_desired(model({"int8": variant("int8", delta=delta, signature="c2ln")})).model
    bundle = choose(target, FAST).candidates[0]
    assert bundle.delta.base_version == "1.0" and bundle.signature == "c2ln"


@pytest.mark.parametrize(("variants", "extra", "message"), [
    ([], {}, "must be an object of variants"),
    ({}, {}, "must be an object of variants"),
    ({"int8": {"sha256": SHA["int8"]}}, {}, r"model.variants.int8.url is required"),
    ({"int8": {"url": "https://x/a.zip"}}, {}, r"model.variants.int8 needs sha256"),
    ({"int8": variant("int8", colour="red")}, {}, "unknown model.variants.int8 keys: colour"),
    ({"int8": variant("int8", precision="int3")}, {}, "precision must be one of"),
    ({"../x": variant("int8")}, {}, "variant"),
    ({"int8": variant("int8", delta={"url": "https://x/p"})}, {}, "model.variants.int8.delta.base_version"),
    ({"int8": variant("int8")}, {"variant": "fp32"}, "model.variant 'fp32' is not one of model.variants"),
    ({"int8": variant("int8")}, {"variant": ["int8"]}, "model.variant must be the name of one of model.variants"),
    ({"int8": None}, {}, "model needs sha256"),  # every variant dropped: a model without a bundle
])
def test_malformed_variants_are_refused_with_the_key(variants, extra, message):
    with pytest.raises(DesiredError, match=message):
        parse_desired(model(variants, **extra))


def test_without_variants_a_model_still_needs_a_checksum():
    with pytest.raises(DesiredError, match="model needs sha256"):
        parse_desired(model(None, url="https://files.local/ssd.zip"))


def test_the_setting_overrides_what_the_cpu_says():
    assert int8_policy("always", SLOW).fast and "TWINFER_VARIANT_INT8=always" in int8_policy("always", SLOW).why
    assert not int8_policy("never", FAST).fast
    assert int8_policy("auto", FAST) == FAST


def test_a_staged_version_is_matched_to_a_variant_by_its_bundle():
    target = parse_desired(model({"int8": variant("int8"), "fp32": variant("fp32")})).model
    choice = choose(target, FAST)
    assert staged_match(choice, {"sha256": SHA["fp32"]}).variant == "fp32"
    assert staged_match(choice, {"sha256": SHA["top"]}) is None
    assert staged_match(choice, {}) is None  # the bundled default: no record


def test_nothing_usable_is_a_clear_failure_before_anything_moves():
    old = model({"int8": variant("int8", version="1.0"), "fp32": variant("fp32", version="1.0")})
    choice = choose(parse_desired(old).model, FAST)  # version 2.0 asked, every entry written for 1.0
    assert choice.candidates == ()
    with pytest.raises(UpdateFailed, match="no variant of model.variants can be used: int8: written for version "
                                           "1.0") as caught:
        choice.usable()
    assert caught.value.reason == failures.NO_USABLE_VARIANT


@pytest.mark.parametrize(("failure", "next_one"), [
    (UpdateFailed(failures.VARIANT_REJECTED, "F1 0.2"), True),
    (UpdateFailed(failures.INVALID_MODEL, "does not load"), True),
    (UpdateFailed(failures.CHECKSUM_MISMATCH, "wrong bytes"), True),
    (UpdateFailed(failures.NOT_FOUND, "404"), True),
    (UpdateFailed(failures.MEMORY_BUDGET, "too big"), True),
    (UpdateFailed(failures.NETWORK, "link down", retryable=True), False),
    (UpdateFailed(failures.NO_SPACE, "disk full"), False),
    (UpdateFailed(failures.CANCELLED, "newer document"), False),
])
def test_a_failure_of_the_variants_own_bundle_makes_way_for_the_next(failure, next_one):
    assert falls_through(failure) is next_one


def test_refusals_are_kept_while_a_document_is_retried_and_never_hold_nulls():
    target = parse_desired(model({"int8": variant("int8"), "fp32": variant("fp32")},
                                 url="https://files.local/ssd.zip", sha256=SHA["top"])).model
    int8, fp32, top = choose(target, FAST).candidates
    rejections = Rejections()
    rejections.start("document-1")
    rejections.add(int8, UpdateFailed(failures.VARIANT_REJECTED, "F1 0.2", figures={"f1": 0.2}))
    rejections.add(top, UpdateFailed(failures.INVALID_MODEL, "does not load"))
    rejections.start("document-1")  # the same document again, after a failing link
    assert rejections.refused(int8) and not rejections.refused(fp32)
    assert rejections.report() == [
        {"variant": "int8", "reason": "variant_rejected", "message": "F1 0.2", "figures": {"f1": 0.2}},
        {"variant": "model.url", "reason": "invalid_model", "message": "does not load"},
    ]
    rejections.start("document-2")
    assert not rejections.refused(int8) and rejections.report() == []
