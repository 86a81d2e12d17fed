"""Google-style OIDC tokens signed with keys made here, and the certificate set that
verifies them (what https://www.googleapis.com/oauth2/v1/certs serves: kid -> X.509 PEM)."""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

PUSH_ACCOUNT = "pubsub-push@my-project.iam.gserviceaccount.com"
AUDIENCE = "https://ocr-worker-abc-ew.a.run.app/"


@dataclass
class SigningKey:
    kid: str
    private_pem: bytes = b""
    cert_pem: str = ""

    def __post_init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.kid)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()

    def token(self, **overrides: Any) -> str:
        """A token like the one Pub/Sub push attaches; ``overrides`` change claims
        (``None`` removes one)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "azp": "1234567890",
            "sub": "1234567890",
            "email": PUSH_ACCOUNT,
            "email_verified": True,
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        signer = crypt.RSASigner.from_string(self.private_pem, key_id=self.kid)  # type: ignore[no-untyped-call]
        token: bytes = jwt.encode(signer, claims)  # type: ignore[no-untyped-call]
        return token.decode()


@dataclass
class KeySet:
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey("key-1")])

    def certs(self) -> dict[str, str]:
        return {key.kid: key.cert_pem for key in self.keys}
