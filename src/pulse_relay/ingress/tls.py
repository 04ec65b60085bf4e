"""HTTPS for the ingress: a server context from PEM files, renewed in place on SIGHUP.

A renewal loads the new files into the *same* SSLContext the listener holds:
connections already open keep the session they negotiated, and every handshake
after the load presents the new chain. The files are proven loadable on a
scratch context first, so a half-written renewal never reaches the live one.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TLSFilesError(Exception):
    """The certificate or key cannot be used; str() names the file and the problem."""


def _refuse_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for a key's passphrase.
    raise TLSFilesError("the key is encrypted with a passphrase, which is not supported")


def _readable(path: Path, what: str) -> None:
    try:
        with path.open("rb") as stream:
            stream.read(1)
    except OSError as error:
        raise TLSFilesError(f"cannot read {what} {path}: {error.strerror or error}") from None


def _load(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    """load_cert_chain with errors that say which file is wrong and how."""
    _readable(cert_file, "certificate")
    _readable(key_file, "key")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(cert_file))
    except ssl.SSLError:
        raise TLSFilesError(f"{cert_file} holds no PEM certificate") from None
    try:
        context.load_cert_chain(str(cert_file), str(key_file), password=_refuse_passphrase)
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise TLSFilesError(f"the key in {key_file} does not match {cert_file}") from None
        raise TLSFilesError(f"{key_file} holds no usable PEM private key") from None


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting the certificate chain in `cert_file`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, cert_file, key_file)
    return context


def reload_context(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    """Load renewed files into the live `context`; TLSFilesError leaves it as it was."""
    _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert_file, key_file)
    _load(context, cert_file, key_file)


def tls_problem(cert_file: Path, key_file: Path) -> str | None:
    """What is wrong with a certificate and key pair, or None when they load (check-config)."""
    try:
        server_context(cert_file, key_file)
    except TLSFilesError as error:
        return str(error)
    return None
