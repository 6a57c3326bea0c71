"""Signed bundles and rollback protection.

Unit: the signed message, sign/verify, key rotation, trust stores, version order and the
desired keys. End to end: the real supervisor with ``TWINFER_TRUSTED_KEYS``, the local twin
and a real HTTP file server (one device for the whole module, as in test_lifecycle): only
bundles signed for their own name and version by a trusted key activate, a staged version
included; a version below the highest ever activated needs ``allow_downgrade``; and the
operator CLI (keygen, bundle --sign, twin-patch --sign) makes patches the device accepts.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from service.update import signing
from service.update.desired import DesiredError, DesiredModel, parse_desired
from service.update.failures import UpdateFailed
from service.update.rollback import compare_versions
from service.update.signing import SignatureError
from service.update.trust import Trust
from tests.support.bundles import Bundle, face_bundle, model_desired
from tests.support.http_server import FileServer
from tests.support.local_twin import LocalTwinFiles, failed_with, is_active, model_status
from tests.support.paths import MODELS, PROJECT_ROOT
from tests.support.service_process import QUICK_REPORTS, ServiceProcess
from twinfer.manifest import read_default

SHA = hashlib.sha256(b"bundle bytes").hexdigest()
FACE = MODELS / "blazeface_short_range.tflite"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def publisher(tmp_path_factory) -> signing.KeyPairFiles:
    return signing.generate_key_pair(tmp_path_factory.mktemp("keys") / "publisher")


@pytest.fixture(scope="module")
def rotated(tmp_path_factory) -> signing.KeyPairFiles:
    return signing.generate_key_pair(tmp_path_factory.mktemp("keys") / "rotated")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory) -> signing.KeyPairFiles:
    return signing.generate_key_pair(tmp_path_factory.mktemp("keys") / "stranger")


def _private(files: signing.KeyPairFiles):
    return signing.load_private_key(files.private)


# --- unit: message, keys, sign and verify ----------------------------------------------------


def test_the_signed_message_is_the_documented_bytes():
    assert signing.signed_message("face", "2.0", SHA.upper()) == b"twinfer-bundle-v1\nface\n2.0\n" + SHA.encode()
    with pytest.raises(ValueError):
        signing.signed_message("face", "2.0", "abc")
    with pytest.raises(ValueError):
        signing.signed_message("fa\nce", "2.0", SHA)


def test_keygen_writes_a_private_key_only_its_owner_reads(publisher):
    assert stat.S_IMODE(publisher.private.stat().st_mode) == 0o600
    public = signing.load_trusted_keys(publisher.public)
    assert [k.key_id for k in public] == [publisher.key_id]
    raw = public[0].public_key.public_bytes(signing.serialization.Encoding.Raw, signing.serialization.PublicFormat.Raw)
    assert publisher.key_id == hashlib.sha256(raw).hexdigest()[:16] and len(publisher.key_id) == 16
    with pytest.raises(FileExistsError):
        signing.generate_key_pair(publisher.private.parent)  # never overwrites a key


def test_sign_verify_roundtrip_returns_the_key_id(publisher):
    signature = signing.sign(_private(publisher), "face", "2.0", SHA)
    assert len(base64.b64decode(signature)) == 64
    keys = signing.load_trusted_keys(publisher.public)
    assert signing.verify(keys, "face", "2.0", SHA, signature) == publisher.key_id
    assert signing.verify(keys, "face", "2.0", SHA.upper(), signature) == publisher.key_id  # hex case is not identity


@pytest.mark.parametrize(
    "name, version, sha256",
    [("face", "2.0", hashlib.sha256(b"other").hexdigest()), ("face2", "2.0", SHA), ("face", "2.1", SHA),
     ("face", "2.0.0", SHA)],
    ids=["tampered-sha256", "other-name", "other-version", "version-spelled-differently"],
)
def test_a_signature_covers_sha256_name_and_version(publisher, name, version, sha256):
    signature = signing.sign(_private(publisher), "face", "2.0", SHA)
    with pytest.raises(SignatureError) as caught:
        signing.verify(signing.load_trusted_keys(publisher.public), name, version, sha256, signature)
    assert caught.value.reason == "bad signature"
    assert "does not verify with any trusted key" in str(caught.value)


def test_key_rotation_two_trusted_keys_either_verifies(tmp_path, publisher, rotated, stranger):
    trust = tmp_path / "trusted"
    trust.mkdir()
    (trust / "2025.pem").write_bytes(publisher.public.read_bytes())
    (trust / "2026.pem").write_bytes(rotated.public.read_bytes())
    (trust / "README").write_text("not a key, not *.pem: ignored")
    keys = signing.load_trusted_keys(trust)
    assert sorted(k.key_id for k in keys) == sorted([publisher.key_id, rotated.key_id])
    for files in (publisher, rotated):
        signature = signing.sign(_private(files), "face", "3", SHA)
        assert signing.verify(keys, "face", "3", SHA, signature) == files.key_id
    # one file holding both PEM blocks works the same
    bundle_file = tmp_path / "both.pem"
    bundle_file.write_bytes(publisher.public.read_bytes() + rotated.public.read_bytes())
    assert len(signing.load_trusted_keys(bundle_file)) == 2
    # a key that is not trusted is refused
    with pytest.raises(SignatureError) as caught:
        signing.verify(keys, "face", "3", SHA, signing.sign(_private(stranger), "face", "3", SHA))
    assert caught.value.reason == "bad signature"


@pytest.mark.parametrize("signature", [None, "", "   "])
def test_unsigned_is_refused_when_keys_are_configured(publisher, signature):
    with pytest.raises(SignatureError) as caught:
        signing.verify(signing.load_trusted_keys(publisher.public), "face", "1", SHA, signature)
    assert caught.value.reason == "unsigned"


@pytest.mark.parametrize("signature, message", [("not base64!", "not base64"),
                                                (base64.b64encode(b"x" * 10).decode(), "10 bytes")])
def test_malformed_signatures_are_bad_signatures(publisher, signature, message):
    with pytest.raises(SignatureError) as caught:
        signing.verify(signing.load_trusted_keys(publisher.public), "face", "1", SHA, signature)
    assert caught.value.reason == "bad signature" and message in str(caught.value)


def test_an_empty_trust_store_trusts_nothing(publisher):
    with pytest.raises(SignatureError) as caught:
        signing.verify([], "face", "1", SHA, signing.sign(_private(publisher), "face", "1", SHA))
    assert caught.value.reason == "no trusted key"


def _target(**fields) -> DesiredModel:
    base = dict(name="face", version="1", url="http://x/face.zip", file_name="face.zip", sha256=SHA, md5=None,
                size=None)
    return DesiredModel(**{**base, **fields})


def test_the_updater_checks_signatures_only_when_keys_are_configured(publisher, tmp_path):
    Trust(tmp_path, None).check_signature(_target(), SHA)  # no keys: unsigned is accepted
    keys = tuple(signing.load_trusted_keys(publisher.public))
    configured = Trust(tmp_path, keys)
    with pytest.raises(UpdateFailed) as caught:
        configured.check_signature(_target(), SHA)
    assert caught.value.reason == "unsigned"
    with pytest.raises(UpdateFailed) as caught:
        configured.check_signature(_target(signature=signing.sign(_private(publisher), "face", "2", SHA)), SHA)
    assert caught.value.reason == "signature_invalid"
    configured.check_signature(_target(signature=signing.sign(_private(publisher), "face", "1", SHA)), SHA)
    broken = Trust(tmp_path, (), "trusted keys path /x does not exist")
    with pytest.raises(UpdateFailed) as caught:
        broken.check_signature(_target(signature=signing.sign(_private(publisher), "face", "1", SHA)), SHA)
    assert caught.value.reason == "signature_invalid" and "/x does not exist" in caught.value.message


def test_trust_stores_that_hold_no_usable_key_are_errors(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(signing.KeyFileError, match="does not exist"):
        signing.load_trusted_keys(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(signing.KeyFileError, match="no \\*.pem"):
        signing.load_trusted_keys(tmp_path / "empty")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(signing.KeyFileError, match="no PEM public key"):
        signing.load_trusted_keys(tmp_path / "junk.pem")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pem").write_bytes(
        ec_key.public_key().public_bytes(signing.serialization.Encoding.PEM,
                                         signing.serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(signing.KeyFileError, match="not an Ed25519"):
        signing.load_trusted_keys(tmp_path / "ec.pem")


@pytest.mark.parametrize(
    "a, b, expected",
    [("1.10", "1.9", 1), ("2", "10", -1), ("1.0", "1.0.0", 0), ("1.0.1", "1.0", 1), ("3", "3", 0),
     ("2024-06", "2024-05", 1), ("b", "a", 1), ("1.0-rc1", "1.0-rc2", -1)],
)
def test_versions_compare_by_dotted_numbers_else_as_strings(a, b, expected):
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


def test_desired_signature_and_allow_downgrade():
    model = {"name": "face", "version": "1", "url": "https://x/face.zip", "sha256": SHA}
    state = parse_desired({"model": {**model, "signature": " c2ln ", "allow_downgrade": True}})
    assert (state.model.signature, state.model.allow_downgrade) == ("c2ln", True)
    plain = parse_desired({"model": model}).model
    assert (plain.signature, plain.allow_downgrade) == (None, False)
    for bad, key in (({"signature": 5}, "model.signature"), ({"allow_downgrade": "yes"}, "model.allow_downgrade")):
        with pytest.raises(DesiredError, match=key):
            parse_desired({"model": {**model, **bad}})
    reference = parse_desired({"FileName": "face_1.0.zip", "DownloadUrl": "https://x/f.zip", "ContentMD5": "a" * 32})
    assert (reference.model.signature, reference.model.allow_downgrade, reference.model.version_is_digest) == (
        None, False, False)
    hashed = parse_desired({"FileName": "face.zip", "DownloadUrl": "https://x/f.zip", "ContentMD5": "a" * 32}).model
    assert hashed.version == "a" * 12 and hashed.version_is_digest  # no order: never a "downgrade"


# --- end to end: a device with trusted keys ---------------------------------------------------

ENV = {**QUICK_REPORTS, "TWINFER_DOWNLOAD_READ_TIMEOUT": "5", "TWINFER_KEEP_VERSIONS": "4"}


@pytest.fixture(scope="module")
def operator_keys(tmp_path_factory) -> tuple[Path, str]:
    """The publisher's key pair, made as an operator makes it: ``python -m service keygen``."""
    out = tmp_path_factory.mktemp("operator") / "keys"
    done = cli("keygen", "--out", str(out))
    assert done.returncode == 0, done.stderr
    key_id = dict(line.split(None, 1) for line in done.stdout.splitlines())["key"].split()[-1]
    assert stat.S_IMODE((out / "private.pem").stat().st_mode) == 0o600
    assert signing.load_trusted_keys(out / "public.pem")[0].key_id == key_id
    again = cli("keygen", "--out", str(out))
    assert again.returncode == 1 and "already exists" in again.stderr
    return out, key_id


@pytest.fixture(scope="module")
def files():
    with FileServer() as server:
        yield server


@pytest.fixture(scope="module")
def device(tmp_path_factory, operator_keys, rotated):
    trusted = tmp_path_factory.mktemp("trusted")
    (trusted / "operator.pem").write_bytes((operator_keys[0] / "public.pem").read_bytes())
    (trusted / "next.pem").write_bytes(rotated.public.read_bytes())
    store = tmp_path_factory.mktemp("signed") / "store"
    with ServiceProcess.start(store, workers=1, extra_env={**ENV, "TWINFER_TRUSTED_KEYS": str(trusted)}) as service:
        yield service


@pytest.fixture(scope="module")
def twin(device):
    twin = LocalTwinFiles(device.store)
    twin.wait_reported(is_active("1.0.0"))
    return twin


@pytest.fixture(scope="module")
def operator(operator_keys):
    return signing.load_private_key(operator_keys[0] / "private.pem")


@pytest.fixture(scope="module")
def face() -> Bundle:
    return face_bundle()


def _serve(files: FileServer, path: str, data: bytes) -> str:
    files.put(path, data)
    return files.url(path + "?sv=2024&sig=SECRETSIG")


def _desired(name: str, version: str, url: str, bundle: Bundle, key=None, **model) -> dict:
    document = model_desired(name, version, url, bundle)
    if key is not None:
        model["signature"] = signing.sign(key, name, version, bundle.sha256)
    document["model"].update(model)
    return document


def _assert_refused(device, twin, document: dict, reason: str) -> dict:
    before = read_default(device.store)
    version = twin.set_desired(document)
    reported = twin.wait_reported(failed_with(reason, version))
    assert read_default(device.store) == before
    assert model_status(reported)["active"]["version"] == before.version
    assert requests.get(device.url + "/readyz", timeout=5).status_code == 200  # still serving
    assert list((device.store / "staging/downloads").iterdir()) == []  # the download is discarded
    return model_status(reported)


@pytest.mark.processes
def test_a_signed_bundle_activates(device, twin, files, face, operator, operator_keys):
    url = _serve(files, "/face_3.zip", face.data)
    twin.set_desired(_desired("face", "3", url, face, key=operator))
    twin.wait_reported(is_active("3"))
    assert (read_default(device.store).name, read_default(device.store).version) == ("face", "3")
    record = json.loads((device.store / "models/face/3/.twinfer-bundle.json").read_text())
    assert record["sha256"] == face.sha256
    assert json.loads((device.store / "versions.json").read_text())["highest_activated"] == {
        "ssd-mobilenetv2-oidv4": "1.0.0", "face": "3"}
    log = device.log()
    assert f"signature verified with trusted key {operator_keys[1]}" in log and "SECRETSIG" not in log


@pytest.mark.processes
def test_a_bundle_signed_by_the_rotated_key_activates_too(device, twin, files, rotated):
    bundle = face_bundle()
    url = _serve(files, "/face_3.5.zip", bundle.data)
    twin.set_desired(_desired("face", "3.5", url, bundle, key=_private(rotated)))
    twin.wait_reported(is_active("3.5"))


@pytest.mark.processes
def test_an_unsigned_bundle_is_refused(device, twin, files, face):
    url = _serve(files, "/face_5.zip", face.data)
    status = _assert_refused(device, twin, _desired("face", "5", url, face), "unsigned")
    assert "not signed" in status["last_error"]["message"]
    assert not (device.store / "models/face/5").exists()
    assert len(files.requests_for("/face_5.zip")) >= 1  # refused after the download and its checksum


@pytest.mark.processes
def test_a_bundle_signed_by_another_key_is_refused(device, twin, files, face, stranger):
    url = _serve(files, "/face_5.zip", face.data)
    status = _assert_refused(device, twin, _desired("face", "5", url, face, key=_private(stranger)),
                             "signature_invalid")
    assert "does not verify with any trusted key" in status["last_error"]["message"]
    assert not (device.store / "models/face/5").exists()


@pytest.mark.processes
def test_a_signature_for_version_3_does_not_activate_version_4(device, twin, files, face, operator):
    url = _serve(files, "/face_4.zip", face.data)
    document = _desired("face", "4", url, face, signature=signing.sign(operator, "face", "3", face.sha256))
    _assert_refused(device, twin, document, "signature_invalid")
    assert not (device.store / "models/face/4").exists()


@pytest.mark.processes
def test_reference_design_keys_carry_no_signature_and_are_refused(device, twin, files, face):
    url = _serve(files, "/face_9.0.zip", face.data)
    _assert_refused(device, twin, {"FileName": "face_9.0.zip", "DownloadUrl": url, "ContentMD5": face.md5_base64},
                    "unsigned")


@pytest.mark.processes
def test_a_downgrade_is_refused_without_allow_downgrade(device, twin, files, operator):
    bundle = face_bundle()
    url = _serve(files, "/face_2.zip", bundle.data)
    before = len(files.requests_for("/face_2.zip"))
    status = _assert_refused(device, twin, _desired("face", "2", url, bundle, key=operator), "downgrade_refused")
    assert "lower than 3.5" in status["last_error"]["message"] and "allow_downgrade" in status["last_error"]["message"]
    assert len(files.requests_for("/face_2.zip")) == before  # refused before downloading a byte


@pytest.mark.processes
def test_a_downgrade_with_allow_downgrade_activates_and_keeps_the_high_water_mark(device, twin, files, operator):
    bundle = face_bundle()
    url = _serve(files, "/face_2.zip", bundle.data)
    twin.set_desired(_desired("face", "2", url, bundle, key=operator, allow_downgrade=True))
    twin.wait_reported(is_active("2"))
    assert json.loads((device.store / "versions.json").read_text())["highest_activated"]["face"] == "3.5"


@pytest.mark.processes
def test_a_staged_version_still_needs_a_valid_signature(device, twin, files, face, operator):
    url = _serve(files, "/face_3.zip", face.data)
    requests_before = len(files.requests)
    # 3 is below the high-water mark 3.5: a rollback on purpose, so allow_downgrade throughout
    _assert_refused(device, twin, _desired("face", "3", url, face, allow_downgrade=True), "unsigned")
    # signed for the bytes the twin names, but the staged bundle's recorded SHA-256 is what counts
    other = hashlib.sha256(b"another bundle").hexdigest()
    document = _desired("face", "3", url, face, signature=signing.sign(operator, "face", "3", other),
                        allow_downgrade=True)
    document["model"]["sha256"] = other
    _assert_refused(device, twin, document, "signature_invalid")
    twin.set_desired(_desired("face", "3", url, face, key=operator, allow_downgrade=True))
    twin.wait_reported(is_active("3"))
    assert len(files.requests) == requests_before  # activated from the store, no download


@pytest.mark.processes
def test_the_cli_signs_a_patch_the_device_accepts(device, twin, files, operator_keys, tmp_path):
    keys, key_id = operator_keys
    labels = tmp_path / "labels.txt"
    labels.write_text("face\n")
    out = tmp_path / "face_7.0.zip"
    done = cli("bundle", str(FACE), "--labels", str(labels), "--name", "face", "--version", "7.0", "-o", str(out),
               "--sign", str(keys / "private.pem"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["key_id"] == key_id
    assert signing.verify(signing.load_trusted_keys(keys / "public.pem"), "face", "7.0", result["sha256"],
                          result["signature"]) == key_id
    url = _serve(files, "/face_7.0.zip", out.read_bytes())
    done = cli("twin-patch", "--url", url, "--bundle", str(out), "--name", "face", "--version", "7.0",
               "--sign", str(keys / "private.pem"))
    assert done.returncode == 0, done.stderr
    patch = json.loads(done.stdout)
    assert patch["model"]["signature"] == result["signature"]  # Ed25519 is deterministic
    by_value = cli("twin-patch", "--url", url, "--sha256", result["sha256"], "--name", "face", "--version", "7.0",
                   "--signature", result["signature"], "--allow-downgrade")
    assert by_value.returncode == 0, by_value.stderr
    model = json.loads(by_value.stdout)["model"]
    assert (model["signature"], model["allow_downgrade"]) == (result["signature"], True)
    twin.set_desired(patch)
    twin.wait_reported(is_active("7.0"))
    assert read_default(device.store).version == "7.0"


@pytest.mark.processes
def test_cli_refuses_unusable_signing_inputs(tmp_path, operator_keys):
    keys, _ = operator_keys
    out = tmp_path / "x.zip"
    done = cli("bundle", str(FACE), "-o", str(out), "--sign", str(keys / "private.pem"))
    assert done.returncode == 1 and "--sign needs --name and --version" in done.stderr and not out.exists()
    done = cli("bundle", str(FACE), "--name", "f", "--version", "1", "-o", str(out), "--sign", str(keys / "public.pem"))
    assert done.returncode == 1 and "not an unencrypted PEM private key" in done.stderr and not out.exists()
    base = ["twin-patch", "--url", "https://x/m.zip", "--sha256", SHA, "--name", "m", "--version", "1"]
    done = cli(*base, "--signature", "@@@")
    assert done.returncode == 2 and "--signature: model.signature is not base64" in done.stderr
    done = cli(*base, "--signature", "c2ln", "--sign", str(keys / "private.pem"))
    assert done.returncode == 2 and "not allowed with argument" in done.stderr
    assert cli("keygen", "--help").stdout.startswith("usage: python -m service keygen")
