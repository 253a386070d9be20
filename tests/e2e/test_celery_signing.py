"""Celery message signing (issue 21): with GENSTACK_CELERY_SIGNING_* set, producers sign task
messages and a real worker runs only those signed by a certificate in its store. An unsigned task
and one signed by an untrusted key fail visibly to their sender (UNAUTHENTICATED), never PENDING.

Producers run in child processes: signing changes kombu's process-wide serializer registry."""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support import ROOT, PrivateRedis, ServiceProcess

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (see .ci/run)")]


@pytest.fixture()
def private_redis(tmp_path):
    """A redis-server of this test's own: the suite's session-wide workers (unsigned) consume the same
    queues on the shared Redis and would take the signed messages first."""
    with PrivateRedis(tmp_path) as server:
        yield server.url

PRODUCER = r"""
import json, sys
from shared.celery_app import make_celery
app = make_celery()
try:
    check = {"name": "length", "params": {"max_chars": 10}}
    r = app.send_task("validator.validate", queue="validator", kwargs={"deadline_s": 60.0},
                      args=[{"artifact": {"text": "short"}, "checks": [check]}])
    doc = r.get(timeout=90, propagate=False)
    print(json.dumps({"state": r.state, "result": doc if isinstance(doc, dict) else repr(doc)}))
finally:
    app.close()
"""


class SignedWorker(ServiceProcess):
    """A worker that accepts only signed messages refuses Celery's unsigned remote-control ping too, so
    its readiness is its GENSTACK_WORKER_READY line."""

    def _wait_worker(self) -> None:

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail("exited during start-up")
            if any(line.startswith(f"GENSTACK_WORKER_READY {self.service}") for line in list(self.lines)):
                return
            time.sleep(0.2)
        self._fail("never printed its ready line")


def _signer(folder, name: str) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path)


def _produce(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", PRODUCER], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_workers_run_only_signed_task_messages(tmp_path, private_redis):
    import os

    store = tmp_path / "trusted"
    store.mkdir()
    key, cert = _signer(tmp_path, "producer")
    (store / "producer.pem").write_text(open(cert).read())
    other_key, other_cert = _signer(tmp_path, "stranger")  # a valid signature, but not a trusted signer
    signing = {"GENSTACK_CELERY_SIGNING_KEY_FILE": key, "GENSTACK_CELERY_SIGNING_CERT_FILE": cert,
               "GENSTACK_CELERY_SIGNING_CERT_STORE": str(store)}
    base = {**os.environ, "GENSTACK_VALIDATOR_WARM_UP_MODELS": "false", "PYTHONUNBUFFERED": "1",
            "GENSTACK_REDIS_URL": private_redis}
    for var in ("GENSTACK_BROKER_URL", "GENSTACK_RESULT_BACKEND"):
        base.pop(var, None)
    with SignedWorker("validator", "worker", env={**signing, "GENSTACK_VALIDATOR_WARM_UP_MODELS": "false",
                                                  "GENSTACK_REDIS_URL": private_redis}):
        signed = _produce({**base, **signing})
        assert signed["state"] == "SUCCESS" and signed["result"]["passed"] is True, signed

        unsigned = _produce(base)
        assert unsigned["state"] == "FAILURE" and "Unauthenticated" in unsigned["result"], unsigned
        assert "signed by a certificate in its store" in unsigned["result"]

        stranger = _produce({**base, "GENSTACK_CELERY_SIGNING_KEY_FILE": other_key,
                             "GENSTACK_CELERY_SIGNING_CERT_FILE": other_cert,
                             "GENSTACK_CELERY_SIGNING_CERT_STORE": str(tmp_path / "stranger.pem")})
        assert stranger["state"] == "FAILURE" and "Unauthenticated" in stranger["result"], stranger


def test_part_of_the_signing_settings_is_a_clear_error(tmp_path):
    from shared.config import Settings

    with pytest.raises(ValueError, match="together"):
        _ = Settings(celery_signing_key_file=tmp_path / "k.pem").message_signing
