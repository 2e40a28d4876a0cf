"""The broker's credentials: Mosquitto's password file and ACL file, written from the database.

Mosquitto 2.0 checks every CONNECT against ``password_file`` and every PUBLISH against
``acl_file``. On SIGHUP it re-reads its configuration and both files, checks every connected
client again and drops those whose credential is gone, so a revoked credential stops working
at once, open connections included.

Two kinds of account:

- **the service account** (``settings.mqtt_service_username``, default ``cimtwin.service``):
  ingest, the API's status board, the tools and the tests. Its password is made once, into a
  0600 file (``settings.service_password_path``); ``Settings.mqtt`` hands it to every client
  when ``mqtt_url`` names no user. It reads and writes ``cim/#``, ``vendors/#`` and ``cimtwin/#``.
- **vendor credentials** (table ``mqtt_credentials``): the username is the vendor's code, and
  the ACL's pattern rules let it publish under ``cim/v1/<code>/#`` and ``vendors/<code>/#`` only,
  and read nothing. Pattern rules also make Mosquitto deny every publish from a client whose
  client id or username contains ``+`` or ``#`` (``mosquitto_acl_check_default`` in
  src/security_default.c); rules given per user would skip that check.

Hashes are Mosquitto's own ``$7$`` format (PBKDF2-SHA512, as ``mosquitto_passwd`` makes them),
computed here with hashlib, so the database keeps only hashes and the password file is written
from them. The iteration count is Mosquitto's default, 101: the passwords are 256 random bits, so
the count adds nothing to their strength, while the broker pays it on every CONNECT and for every
connected client on every reload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cimtwin.settings import Settings

log = logging.getLogger("cimtwin.broker_auth")

HASH_ITERATIONS = 101  # mosquitto_passwd's default (PW_DEFAULT_ITERATIONS in Mosquitto 2.0)
_SALT_BYTES = 12       # Mosquitto 2.0 refuses any other salt length
_KEY_BYTES = 64
PASSWD_FILE = "passwd"
ACL_FILE = "acl"
_HEADER = "# Written by cimtwin (`cimtwin broker-sync`) from its database. Do not edit: it is rewritten.\n"


# --- hashes and passwords ----------------------------------------------------------------------

def mosquitto_hash(password: str, *, iterations: int = HASH_ITERATIONS, salt: bytes | None = None) -> str:
    """``$7$<iterations>$<salt>$<key>``: PBKDF2-SHA512, the format of Mosquitto 2.0's password file."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    if len(salt) != _SALT_BYTES:
        raise ValueError(f"Mosquitto needs a {_SALT_BYTES}-byte salt")
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, _KEY_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def verify_mosquitto_hash(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash."""
    try:
        _, kind, iterations, salt, key = hashed.split("$")
        if kind != "7":
            return False
        expected = base64.b64decode(key, validate=True)
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt, validate=True),
                                  int(iterations), len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def new_password() -> str:
    """256 random bits, URL-safe (43 characters): fine on a command line and in device configs."""
    return secrets.token_urlsafe(32)


def service_password(settings: Settings, *, create: bool = False) -> str | None:
    """The service account's password, from its 0600 file; made there first if ``create``."""
    path = settings.service_password_path
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text or not create:
        return text or None
    path.parent.mkdir(parents=True, exist_ok=True)
    password = new_password()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made meanwhile by another process: use theirs
        return service_password(settings)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    log.info("made the broker service account's password in %s", path)
    return password


# --- the files -----------------------------------------------------------------------------------

def render_passwd(entries: list[tuple[str, str]]) -> str:
    """A Mosquitto password file: ``username:hash`` per line."""
    for username, hashed in entries:
        if not username or any(c in username for c in ":\n\r\t #+/") or "\n" in hashed:
            raise ValueError(f"refusing to write username {username!r} into the password file")
    return _HEADER + "".join(f"{username}:{hashed}\n" for username, hashed in entries)


def render_acl(service_username: str) -> str:
    """The ACL file: the service account by name, vendors by pattern (the username is the vendor code)."""
    return _HEADER + f"""
# cimtwin's own processes: ingest subscribes to cim/v1/+/+/up and vendors/# (also as
# $share/<group>/...), workers publish their status under cimtwin/status/#, alerts will go
# under cim/v1/alerts/#. $SYS is read by the benchmarks.
user {service_username}
topic readwrite cim/#
topic readwrite vendors/#
topic readwrite cimtwin/#
topic read $SYS/#

# Vendors: a vendor credential's username is its vendor code (%u); it may publish under its own
# prefixes and read nothing. Because these are pattern rules, Mosquitto denies every publish
# from a client whose client id or username contains + or #.
pattern write cim/v1/%u/#
pattern write vendors/%u/#
# cim/v1/alerts/ is cimtwin's, even for a vendor whose code is "alerts". (Mosquitto logs a
# warning that this pattern has no %u or %c; the rule still applies.)
pattern deny cim/v1/alerts/#
"""


def write_atomic(path: Path, text: str) -> bool:
    """Replaces ``path`` in one rename (mode 0600); False when it already held ``text``.

    Run as root, the file gets the owner of its directory: bootstrap and the tests give that
    directory to the ``mosquitto`` user the broker drops to, which must read the file on reload.
    """
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, PermissionError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o600)
            if os.geteuid() == 0:
                st = path.parent.stat()
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def broker_pid(pid_path: Path) -> int | None:
    """The pid in the broker's pid file when that process is running and is a mosquitto."""
    try:
        pid = int(pid_path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    comm = Path(f"/proc/{pid}/comm")
    try:
        if comm.parent.exists() and comm.read_text().strip() != "mosquitto":
            return None  # a stale pid file whose number now belongs to something else
        os.kill(pid, 0)
    except (FileNotFoundError, ProcessLookupError):
        return None
    except PermissionError:
        pass  # running, but not ours to probe; the SIGHUP will tell
    return pid


@dataclass(frozen=True)
class SyncResult:
    passwd: Path
    acl: Path
    vendor_credentials: int
    changed: bool
    reloaded_pid: int | None
    note: str

    def summary(self) -> str:
        return (f"{self.vendor_credentials} vendor credential(s) + the service account in {self.passwd}; "
                f"{self.note}")


def _previous_hash(passwd: Path, username: str) -> str | None:
    try:
        for line in passwd.read_text().splitlines():
            name, sep, hashed = line.partition(":")
            if sep and name == username:
                return hashed
    except (FileNotFoundError, PermissionError):
        pass
    return None


def write_broker_auth(settings: Settings, vendor_entries: list[tuple[str, str]]) -> SyncResult:
    """Writes both files (service account + ``vendor_entries``) and sends the broker SIGHUP if they changed."""
    directory = settings.broker_auth_path
    passwd, acl = directory / PASSWD_FILE, directory / ACL_FILE
    service_user = settings.mqtt_service_username
    password = service_password(settings, create=True)
    # Keep the service account's hash while it still matches, so an unchanged database leaves
    # the files, and the broker, alone.
    hashed = _previous_hash(passwd, service_user)
    if hashed is None or not verify_mosquitto_hash(password, hashed):
        hashed = mosquitto_hash(password)
    names = [u for u, _ in vendor_entries]
    if service_user in names or len(set(names)) != len(names):
        raise ValueError(f"duplicate or reserved MQTT usernames among {sorted(names)}")
    changed = write_atomic(acl, render_acl(service_user))
    changed = write_atomic(passwd, render_passwd([(service_user, hashed), *vendor_entries])) or changed
    pid = None
    if not changed:
        note = "unchanged, broker not signalled"
    elif (pid := broker_pid(settings.broker_pid_path)) is None:
        note = f"no running broker in {settings.broker_pid_path}; it reads the files when it starts"
    else:
        try:
            os.kill(pid, signal.SIGHUP)
            note = f"broker (pid {pid}) reloaded"
        except (ProcessLookupError, PermissionError) as exc:
            note = f"could not signal the broker (pid {pid}): {exc}"
            pid = None
    return SyncResult(passwd=passwd, acl=acl, vendor_credentials=len(vendor_entries), changed=changed,
                      reloaded_pid=pid, note=note)


def refresh_service_account(settings: Settings) -> SyncResult:
    """Without the database: (re)writes the service account and the ACL, keeping the vendor entries
    the password file already holds. For deploy/bootstrap.sh, before the broker's first start."""
    passwd = settings.broker_auth_path / PASSWD_FILE
    kept = []
    try:
        for line in passwd.read_text().splitlines():
            name, sep, hashed = line.partition(":")
            if sep and not line.startswith("#") and name != settings.mqtt_service_username:
                kept.append((name, hashed))
    except FileNotFoundError:
        pass
    return write_broker_auth(settings, kept)


def sync_broker_auth(settings: Settings) -> SyncResult:
    """Rewrites the password and ACL files from the database (active credentials only), atomically,
    and makes the broker reload them. Concurrent syncs are serialized by an advisory lock, so the
    files always end up as the database's latest state."""
    from cimtwin.store import mqtt_auth as store
    from cimtwin.store.db import connect

    with connect(settings.database_url, application_name="cimtwin-broker-sync") as conn:
        with conn.transaction():
            store.lock_broker_sync(conn)
            entries = store.active_credential_hashes(conn)
            result = write_broker_auth(settings, entries)
    log.info("broker auth: %s", result.summary())
    return result
