"""DIMSE over TLS (PS3.15 B.9, BCP 195): the one place SSL contexts are built.

``server_context`` is the listeners' (``[dicom] tls_port``, ``[hl7]`` MLLP), ``client_context`` every
association we open to a ``[peers.NAME]`` with ``tls = true`` (restore, export, C-MOVE
sub-operations, commitment reports, reconcile) or to a ``dicom://`` target with ``tls``.
Both follow BCP 195 (RFC 9325) as DCMTK's default non-downgrading profile (``+py``) does:
TLS 1.2 or 1.3 only, TLS 1.2 limited to the ECDHE/DHE AES-GCM suites, no compression, no
renegotiation. A peer that offers only TLS 1.1 or a weaker suite fails the handshake.

``peer_subject`` is the RFC 4514 form of a verified client certificate's subject, what a
``[peers.NAME] tls_subject`` is compared with.
"""

from __future__ import annotations

import ssl

from dicomvault.config import ConfigError, DicomSettings, Hl7Settings, PeerSettings

# RFC 9325 4.2 recommended TLS 1.2 suites (the TLS 1.3 suites are OpenSSL's defaults, all AEAD).
BCP195_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
))


class TlsSetupError(ConfigError):
    """A TLS certificate, key or CA file cannot be used: the message names the file and why."""


def _profile(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def _readable(where: str, key: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TlsSetupError(f"{where} {key} {path} cannot be read: {exc.strerror or exc}") from None


def _load_chain(context: ssl.SSLContext, where: str, cert: str, key: str) -> None:
    _readable(where, "tls_cert_file", cert)
    _readable(where, "tls_key_file", key)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        why = ("the private key does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc)
               else f"not a PEM certificate and private key ({exc.reason or exc})")
        raise TlsSetupError(f"{where} tls_cert_file {cert} / tls_key_file {key}: {why}") from None


def _load_ca(context: ssl.SSLContext, where: str, ca: str) -> None:
    _readable(where, "tls_ca_file", ca)
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise TlsSetupError(f"{where} tls_ca_file {ca}: no PEM CA certificate in it ({exc.reason or exc})") from None


def server_context(dicom: DicomSettings | Hl7Settings, where: str = "[dicom]") -> ssl.SSLContext:
    """A listener's context (DIMSE, or MLLP with ``where="[hl7]"``); TlsSetupError (a
    ConfigError) when a file is unusable."""
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(context, where, dicom.tls_cert_file, dicom.tls_key_file)
    if dicom.tls_ca_file:
        _load_ca(context, where, dicom.tls_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED  # no certificate from that CA, no association
    return context


def client_context(peer: PeerSettings, dicom: DicomSettings | None, where: str = "") -> ssl.SSLContext | None:
    """The context for associations to ``peer`` (None: plain TCP). The peer's certificate must
    chain to its ``tls_ca_file`` (else ``[dicom] tls_ca_file``, else the system store) and name
    its host; we show ``tls_cert_file`` (else our listener's certificate, if any). ``where``
    names the configuration table in error messages (default ``[peers.NAME]``)."""
    if not peer.tls:
        return None
    where = where or f"[peers.{peer.name}]"
    dicom = dicom or DicomSettings()
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # verifies the chain and host name
    ca = peer.tls_ca_file or dicom.tls_ca_file
    if ca:
        _load_ca(context, where if peer.tls_ca_file else "[dicom]", ca)
    else:
        context.load_default_certs()
    cert, key = (peer.tls_cert_file, peer.tls_key_file) if peer.tls_cert_file else \
        (dicom.tls_cert_file, dicom.tls_key_file)
    if cert and key:
        _load_chain(context, where if peer.tls_cert_file else "[dicom]", cert, key)
    return context


def peer_subject(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """The RFC 4514 subject of the certificate the peer presented ("" when none)."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return ""
    from cryptography import x509

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()



def pynetdicom_tls_args(context: ssl.SSLContext | None, host: str) -> tuple[ssl.SSLContext, str] | None:
    """``AE.associate(..., tls_args=...)`` for pynetdicom clients (reports, reconcile, C-ECHO)."""
    return None if context is None else (context, host)
