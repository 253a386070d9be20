"""TLS material for the Kubernetes deployment's `genstack-tls` Secret: a private CA and one server
certificate whose names cover every genstack Service in the namespace, Redis included (short, `.svc`
and `.svc.cluster.local` forms), plus loopback, so every server can present it and every client,
health probes included, can check it against the CA.

    python -m deploy.tls --out ./tls [--namespace genstack] [--days 365]
    kubectl -n genstack create secret generic genstack-tls \\
      --from-file=ca.crt=./tls/ca.crt --from-file=tls.crt=./tls/tls.crt --from-file=tls.key=./tls/tls.key

The CA's key is written to `ca.key` for issuing the next certificate; keep it out of the cluster.
Use cert-manager or your own PKI instead where you have one: the manifests only need a Secret with
`ca.crt`, `tls.crt` and `tls.key`.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def dns_names(namespace: str) -> list[str]:
    """Every name a genstack client or probe may dial: each Service (and the console) in its short
    and namespaced forms, and localhost."""
    from shared.services import implemented_services

    names: list[str] = []
    for service in [*implemented_services(), "console", "redis"]:
        names += [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
                  f"{service}.{namespace}.svc.cluster.local"]
    return [*names, "localhost"]


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def issue(out: Path, namespace: str = "genstack", days: int = 365) -> dict[str, Path]:
    """Write ca.crt, ca.key, tls.crt and tls.key under `out`; returns their paths."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"genstack CA ({namespace})")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in dns_names(namespace)] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"genstack services ({namespace})")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # the same certificate serves and, where mutual TLS is turned on, identifies a client
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    paths = {"ca.crt": out / "ca.crt", "ca.key": out / "ca.key", "tls.crt": out / "tls.crt", "tls.key": out / "tls.key"}
    paths["ca.crt"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["tls.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for name, k in (("ca.key", ca_key), ("tls.key", key)):
        paths[name].touch(mode=0o600)
        paths[name].write_bytes(_pem_key(k))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.tls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write ca.crt, ca.key, tls.crt, tls.key")
    parser.add_argument("--namespace", default="genstack", help="the Kubernetes namespace (default: genstack)")
    parser.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")
    paths = issue(args.out, args.namespace, args.days)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    print(f"kubectl -n {args.namespace} create secret generic genstack-tls "
          + " ".join(f"--from-file={n}={paths[n]}" for n in ("ca.crt", "tls.crt", "tls.key")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
