"""A site in an S3 bucket (AWS S3 or any S3-compatible object store), usually off-site.

``s3://bucket/optional/prefix`` holds objects under ``<prefix>/objects/ab/cd/<name>``, the same
layout as the file site, so an operator (or a DR rebuild) sees one shape everywhere.

Why it works the way it does:

* **Write once without a race.** ``put_if_absent`` is a conditional PUT (``If-None-Match: *``):
  the store itself refuses to replace an existing key (HTTP 412), so two replication workers
  racing on one name cannot overwrite each other, and no HEAD-then-PUT window exists. Stores
  that answer 501 to the header fall back to HEAD-then-PUT (content-addressed names make the
  remaining race harmless: both writers hold the same bytes).
* **The server checks what arrived.** Every PUT carries the SHA-256 of the bytes
  (``x-amz-checksum-sha256``); S3 recomputes it on arrival and rejects a mismatch, and later
  reports it back through ``checksum_sha256`` so the replication worker can verify a copy
  without downloading it. ``get`` compares the downloaded bytes with that checksum too.
* **Durable on return.** A PUT that S3 acknowledged is durable, so the crash-recovery journal
  methods of :class:`Site` stay no-ops.
* **Ransomware resistance.** With ``object_lock_days`` > 0 on a bucket created with Object
  Lock, each object is written with a retention date (COMPLIANCE mode by default): nobody,
  not even the account root, can delete or overwrite that version before the date.
* **Fail fast, clearly.** Short timeouts and a single SDK retry: the replication outbox does
  its own retrying with backoff and a circuit breaker, so the site must report a failure
  quickly, in words a hospital administrator can act on ("cannot reach S3 endpoint ...",
  "access denied to bucket ...", "bucket ... does not exist", "S3 request timed out").
* **Ciphertext only.** Objects arrive sealed; the site never sees a key or PHI, and it puts
  no user metadata (``x-amz-meta-*``) on objects, so nothing readable leaks to the provider.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import datetime as dt
import hashlib
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn
from urllib.parse import unquote, urlparse

import boto3
from botocore import exceptions as bx
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .base import KEY_NAME, Capabilities, DeletionRefused, ObjectRetention, Site, SiteError, valid_key_name, valid_snapshot_name
from .network import connection_reason, seconds_option

# Options understood in a site's configuration table. Anything else is refused, so that a
# typo such as ``object_lock_day = 30`` cannot silently leave copies deletable.
OPTIONS = frozenset({
    "endpoint_url", "region", "access_key_id", "secret_access_key", "session_token",
    "object_lock_days", "object_lock_mode", "storage_class", "connect_timeout", "read_timeout",
})

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
# Total attempts per request, the first one included (botocore's ``max_attempts`` counts only
# the retries). One quick retry absorbs a dropped keep-alive connection; anything longer is the
# outbox's job.
TOTAL_ATTEMPTS = 2

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HEX = frozenset("0123456789abcdef")
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_DENIED_CODES = {
    "403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "InvalidToken", "ExpiredToken", "TokenRefreshRequired", "AccountProblem", "InvalidObjectState",
}
_CORRUPT_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"}


def _valid_name(name: str) -> str:
    """Object names are hex MACs; anything else is a caller bug (and could escape the prefix)."""
    if len(name) < 8 or not all(c in _HEX for c in name):
        raise SiteError(f"invalid object name {name!r}")
    return name


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def _b64_to_hex(value: str) -> str | None:
    """S3 reports checksums base64-encoded; a composite (multipart) one ends in ``-<parts>``."""
    if "-" in value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def _int_option(options: Mapping[str, object], key: str, default: int) -> int:
    value = options.get(key, default)
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise SiteError(f"S3 site option {key} must be a whole number, got {value!r}") from None
    if number < 0:
        raise SiteError(f"S3 site option {key} must not be negative, got {number}")
    return number


class S3Site(Site):
    """Objects in one S3 bucket under an optional prefix. Thread-safe (boto3 clients are)."""

    capabilities = Capabilities(snapshots=True, checksums=True, object_lock=True, keys=True)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        object_lock_days: int = 0,
        object_lock_mode: str = "COMPLIANCE",
        storage_class: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        if not _BUCKET_NAME.match(bucket) or ".." in bucket:
            raise SiteError(
                f"{bucket!r} is not a valid S3 bucket name: use 3-63 lower-case letters, digits, '.' and '-'"
            )
        if (access_key_id is None) != (secret_access_key is None):
            raise SiteError("S3 site needs both access_key_id and secret_access_key, or neither "
                            "(then the AWS environment / credentials file / instance role is used)")
        mode = object_lock_mode.upper()
        if mode not in ("COMPLIANCE", "GOVERNANCE"):
            raise SiteError(f"S3 site option object_lock_mode must be COMPLIANCE or GOVERNANCE, got {object_lock_mode!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.object_lock_days = object_lock_days
        self.object_lock_mode = mode
        self.storage_class = storage_class
        self._objects = f"{self.prefix}/objects/" if self.prefix else "objects/"
        config = Config(
            region_name=region,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": TOTAL_ATTEMPTS},
            # Ask for and check checksums only where we say so: put/get pass them explicitly.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
            aws_session_token=session_token, region_name=region,
        )
        try:
            self._client: Any = session.client("s3", endpoint_url=endpoint_url or None, config=config)
        except ValueError as exc:  # botocore rejects a malformed endpoint URL here
            raise SiteError(f"invalid S3 endpoint_url {endpoint_url!r}: {exc}") from exc
        self.endpoint = str(self._client.meta.endpoint_url)
        self._read_timeout = read_timeout
        self._lock_enabled: bool | None = None
        self._bucket_seen = False
        self._no_conditional_put = False
        self._state_lock = threading.Lock()
        self._confirmed: dict[str, str] = {}  # names whose PUT response confirmed our SHA-256

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, object] | None = None) -> "S3Site":
        """``s3://bucket/optional/prefix`` plus the options of the site's configuration table."""
        parsed = urlparse(url)
        if parsed.scheme != "s3":
            raise SiteError(f"not an S3 site URL: {url!r} (expected s3://bucket/prefix)")
        if parsed.query or parsed.fragment or parsed.username or parsed.password:
            raise SiteError(f"S3 site URL {url!r}: put credentials and settings in the site's options, not the URL")
        bucket = parsed.netloc
        if not bucket:
            raise SiteError(f"S3 site URL {url!r} has no bucket (expected s3://bucket/prefix)")
        opts = dict(options or {})
        unknown = sorted(set(opts) - OPTIONS)
        if unknown:
            raise SiteError(f"unknown S3 site option(s) {', '.join(unknown)}: supported are {', '.join(sorted(OPTIONS))}")

        def text(key: str) -> str | None:
            value = opts.get(key)
            if value is None or value == "":
                return None
            if not isinstance(value, str):
                raise SiteError(f"S3 site option {key} must be a string, got {value!r}")
            return value

        return cls(
            bucket,
            unquote(parsed.path),
            endpoint_url=text("endpoint_url"),
            region=text("region") or "us-east-1",
            access_key_id=text("access_key_id"),
            secret_access_key=text("secret_access_key"),
            session_token=text("session_token"),
            object_lock_days=_int_option(opts, "object_lock_days", 0),
            object_lock_mode=text("object_lock_mode") or "COMPLIANCE",
            storage_class=text("storage_class"),
            connect_timeout=seconds_option(opts, "connect_timeout", CONNECT_TIMEOUT, "S3"),
            read_timeout=seconds_option(opts, "read_timeout", READ_TIMEOUT, "S3"),
        )

    def key_of(self, name: str) -> str:
        _valid_name(name)
        return f"{self._objects}{name[:2]}/{name[2:4]}/{name}"

    # -- errors ----------------------------------------------------------------------------------

    def _fail(self, exc: Exception, action: str) -> NoReturn:
        """Turn any botocore failure into a SiteError whose first words say what to fix."""
        where = f"({action} on {self.url})"
        if isinstance(exc, bx.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = error.get("Message") or ""
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = f"{code or 'HTTP ' + str(status)}: {message}".rstrip(": ")
            if code == "NoSuchBucket":
                raise SiteError(f"bucket {self.bucket} does not exist at {self.endpoint}: {detail} {where}") from exc
            if code in _DENIED_CODES or status == 403:
                hint = ""
                if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                    hint = " (check access_key_id / secret_access_key)"
                elif code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
                    hint = " (the credentials have expired)"
                elif action.startswith("DeleteObject") and self._lock_enabled:
                    raise DeletionRefused(f"access denied to bucket {self.bucket} (the object is under Object Lock "
                                          f"retention): {detail} {where}") from exc
                raise SiteError(f"access denied to bucket {self.bucket}{hint}: {detail} {where}") from exc
            if code in _CORRUPT_CODES:
                raise SiteError(f"S3 rejected the upload because the data arrived corrupted: {detail} {where}") from exc
            if code == "InvalidBucketName":
                raise SiteError(f"{self.bucket!r} is not a valid S3 bucket name: {detail} {where}") from exc
            if code in ("RequestTimeout", "RequestTimeTooSkewed"):
                what = "S3 request timed out" if code == "RequestTimeout" else "the server clock is wrong"
                raise SiteError(f"{what}: {detail} {where}") from exc
            if code in ("SlowDown", "ServiceUnavailable", "InternalError") or (status or 0) >= 500:
                raise SiteError(f"S3 endpoint {self.endpoint} is unavailable or overloaded: {detail} {where}") from exc
            raise SiteError(f"S3 request failed: {detail} {where}") from exc
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
            raise SiteError(
                f"no S3 credentials for bucket {self.bucket}: set access_key_id and secret_access_key in the "
                f"site's options, or the AWS environment / credentials file: {exc} {where}"
            ) from exc
        if isinstance(exc, bx.ReadTimeoutError):
            raise SiteError(
                f"S3 request timed out: {self.endpoint} accepted the connection but did not answer within "
                f"{self._read_timeout:g} s {where}"
            ) from exc
        if isinstance(exc, bx.ConnectTimeoutError):
            raise SiteError(f"cannot reach S3 endpoint {self.endpoint}: connection timed out {where}") from exc
        if isinstance(exc, bx.SSLError):
            raise SiteError(f"cannot reach S3 endpoint {self.endpoint}: TLS failed: {exc} {where}") from exc
        if isinstance(exc, bx.ProxyConnectionError):
            raise SiteError(f"cannot reach S3 endpoint {self.endpoint}: the proxy refused: {exc} {where}") from exc
        if isinstance(exc, bx.EndpointConnectionError):
            raise SiteError(
                f"cannot reach S3 endpoint {self.endpoint}: {connection_reason(exc)} {where}"
            ) from exc
        if isinstance(exc, (bx.ConnectionClosedError, bx.ResponseStreamingError, bx.HTTPClientError,
                            bx.ConnectionError)):
            raise SiteError(
                f"cannot reach S3 endpoint {self.endpoint}: the connection broke mid-request "
                f"({connection_reason(exc)}) {where}"
            ) from exc
        if isinstance(exc, bx.FlexibleChecksumError):
            raise SiteError(f"object on S3 is corrupted: checksum mismatch on download: {exc} {where}") from exc
        if isinstance(exc, bx.BotoCoreError):
            raise SiteError(f"S3 request failed: {exc} {where}") from exc
        raise exc

    def _call(self, action: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc, action)

    @staticmethod
    def _code(exc: Exception) -> str:
        if isinstance(exc, ClientError):
            return str(exc.response.get("Error", {}).get("Code", ""))
        return ""

    def _head(self, name: str, checksum: bool = False) -> dict[str, Any] | None:
        """HEAD the object; None if absent. A 404 is ambiguous (no object, or no bucket)."""
        key = self.key_of(name)
        extra = {"ChecksumMode": "ENABLED"} if checksum else {}
        try:
            head: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=key, **extra)
        except ClientError as exc:
            if self._code(exc) in _MISSING_CODES:
                self._confirm_bucket()
                return None
            self._fail(exc, f"HeadObject {key}")
        except BotoCoreError as exc:
            self._fail(exc, f"HeadObject {key}")
        return head

    def _confirm_bucket(self) -> None:
        """After a 404, tell a missing object from a missing bucket (once per site object)."""
        if self._bucket_seen:
            return
        self._head_bucket()
        self._bucket_seen = True

    def _head_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            # HEAD answers carry no body: the status code is all there is.
            if self._code(exc) in _MISSING_CODES | {"NoSuchBucket"}:
                raise SiteError(f"bucket {self.bucket} does not exist at {self.endpoint} (HeadBucket)") from exc
            self._fail(exc, "HeadBucket")
        except BotoCoreError as exc:
            self._fail(exc, "HeadBucket")

    # -- Site interface --------------------------------------------------------------------------

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Conditional PUT with a server-verified SHA-256; False if the name is already taken."""
        key = self.key_of(name)
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket, "Key": key, "Body": data,
            "ChecksumAlgorithm": "SHA256", "ChecksumSHA256": _sha256_b64(data),
            "ContentType": "application/octet-stream",
        }
        if self.storage_class:
            kwargs["StorageClass"] = self.storage_class
        if self.object_lock_days > 0 and self.object_lock_enabled():
            kwargs["ObjectLockMode"] = self.object_lock_mode
            kwargs["ObjectLockRetainUntilDate"] = (
                dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=self.object_lock_days)
            )
        if self._no_conditional_put:
            if self._head(name) is not None:
                return False
        else:
            kwargs["IfNoneMatch"] = "*"
        try:
            answer = self._client.put_object(**kwargs)
        except ClientError as exc:
            code = self._code(exc)
            if code == "PreconditionFailed":
                return False
            if code == "ConditionalRequestConflict":
                # Another writer is putting this very name right now. Content-addressed names
                # mean the same bytes, but only a finished copy counts.
                if self._head(name) is not None:
                    return False
                raise SiteError(f"S3 request failed: a concurrent write of {name} is still in progress; "
                                f"retry later (PutObject {key} on {self.url})") from exc
            if code == "NotImplemented" and not self._no_conditional_put:
                with self._state_lock:
                    self._no_conditional_put = True
                return self.put_if_absent(name, data)
            self._fail(exc, f"PutObject {key}")
        except BotoCoreError as exc:
            self._fail(exc, f"PutObject {key}")
        self._bucket_seen = True
        confirmed = answer.get("ChecksumSHA256")
        if isinstance(confirmed, str) and confirmed == kwargs["ChecksumSHA256"]:
            # S3 checked the bytes it received against our SHA-256 (BadDigest otherwise) and
            # echoes the checksum it stored: that is the verification, without a HEAD.
            with self._state_lock:
                self._confirmed[name] = _b64_to_hex(confirmed) or ""
                if len(self._confirmed) > 10_000:
                    self._confirmed.clear()
        return True

    def get(self, name: str) -> bytes:
        """Download and check against the SHA-256 the server holds (when it reports one)."""
        return self._download(name)[0]

    def get_with_retention(self, name: str) -> tuple[bytes, ObjectRetention]:
        """``get`` plus the Object Lock retention of the version read, taken from the same
        GetObject answer (verify checks retention without another request). S3 reports it only
        to callers allowed ``s3:GetObjectRetention``; for others it reads as none."""
        data, answer = self._download(name)
        until = answer.get("ObjectLockRetainUntilDate")  # botocore parses it to a datetime
        if not isinstance(until, dt.datetime):
            until = None
        elif until.tzinfo is None:
            until = until.replace(tzinfo=dt.timezone.utc)
        return data, ObjectRetention(answer.get("ObjectLockMode"), until, answer.get("VersionId"))

    def extend_retention(self, name: str, until: dt.datetime, mode: str | None = None,
                         version_id: str | None = None) -> None:
        """Set the Object Lock retention of the object (of ``version_id``, else the current
        version) to ``until`` in ``mode`` (default: the site's). Callers only lengthen it: S3
        refuses to shorten COMPLIANCE retention, and shortening GOVERNANCE retention would need
        a bypass header this site never sends."""
        key = self.key_of(name)
        extra = {"VersionId": version_id} if version_id else {}
        self._call(f"PutObjectRetention {key}", "put_object_retention", Bucket=self.bucket, Key=key,
                   Retention={"Mode": mode or self.object_lock_mode, "RetainUntilDate": until}, **extra)

    def _download(self, name: str, key: str | None = None, what: str = "object") -> tuple[bytes, dict[str, Any]]:
        """GetObject checked against its length and the SHA-256 S3 recorded on arrival."""
        key = key or self.key_of(name)
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            data: bytes = answer["Body"].read()
        except ClientError as exc:
            if self._code(exc) in _MISSING_CODES:
                raise KeyError(name) from None
            self._fail(exc, f"GetObject {key}")
        except BotoCoreError as exc:
            self._fail(exc, f"GetObject {key}")
        length = answer.get("ContentLength")
        if length is not None and length != len(data):
            raise SiteError(f"cannot read {what} {name} from {self.url}: got {len(data)} of {length} bytes")
        reported = answer.get("ChecksumSHA256")
        expected = _b64_to_hex(reported) if isinstance(reported, str) else None
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise SiteError(f"{what} {name} on {self.url} is corrupted: its bytes do not match the SHA-256 "
                            "S3 recorded when it was written")
        return data, answer

    def stat(self, name: str) -> int | None:
        head = self._head(name)
        return None if head is None else int(head["ContentLength"])

    def checksum_sha256(self, name: str) -> str | None:
        """Hex SHA-256 of the stored bytes as the server computed it on arrival.

        None when the server cannot vouch for the bytes (no SHA-256 recorded, a composite
        multipart checksum, or no such object): the caller then falls back to reading back.
        """
        with self._state_lock:
            confirmed = self._confirmed.pop(name, None)
        if confirmed:
            return confirmed
        head = self._head(name, checksum=True)
        if head is None:
            return None
        reported = head.get("ChecksumSHA256")
        return _b64_to_hex(reported) if isinstance(reported, str) else None

    def list(self) -> Iterator[str]:
        """Every object name, in key order; keys not in the object layout are skipped."""
        start = len(self._objects)
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._objects)
            for page in pages:
                for item in page.get("Contents", ()):
                    parts = item["Key"][start:].split("/")
                    if len(parts) != 3:
                        continue
                    first, second, name = parts
                    if len(name) >= 8 and set(name) <= _HEX and first == name[:2] and second == name[2:4]:
                        yield name
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc, f"ListObjectsV2 {self._objects}")

    def delete(self, name: str) -> None:
        """Physically remove the object: on a versioned bucket that means every version.

        A plain DELETE on a versioned (e.g. Object Lock) bucket only hides the object behind a
        delete marker; retention and shredding policies need the bytes gone. A version still
        under Object Lock retention cannot be removed and raises SiteError.
        """
        self._delete_every_version(self.key_of(name))

    def _delete_every_version(self, key: str) -> None:
        versioning = self._call("GetBucketVersioning", "get_bucket_versioning", Bucket=self.bucket)
        if not versioning.get("Status"):
            self._call(f"DeleteObject {key}", "delete_object", Bucket=self.bucket, Key=key)
            return
        versions: list[str] = []
        try:
            pages = self._client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key)
            for page in pages:
                for entry in [*page.get("Versions", ()), *page.get("DeleteMarkers", ())]:
                    if entry["Key"] == key:
                        versions.append(entry["VersionId"])
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc, f"ListObjectVersions {key}")
        try:
            self.object_lock_enabled()  # only to explain a refusal ("under Object Lock retention")
        except SiteError:
            pass
        for version in versions:
            self._call(f"DeleteObject {key} version {version}", "delete_object",
                       Bucket=self.bucket, Key=key, VersionId=version)

    # -- key records: ``<prefix>/keys/<key id>``, never locked, every version deletable --------

    def _key_record_key(self, name: str) -> str:
        valid_key_name(name)
        return f"{self.prefix}/keys/{name}" if self.prefix else f"keys/{name}"

    def put_key(self, name: str, data: bytes) -> None:
        """PutObject without retention, whatever ``object_lock_days`` says: a key record must
        stay deletable (it is what a deletion shreds). A bucket whose default retention locks
        it anyway makes that deletion fail loudly, and ``status`` says so."""
        key = self._key_record_key(name)
        self._call(f"PutObject {key}", "put_object", Bucket=self.bucket, Key=key, Body=data,
                   ChecksumAlgorithm="SHA256", ChecksumSHA256=_sha256_b64(data),
                   ContentType="application/octet-stream")

    def get_key(self, name: str) -> bytes:
        return self._download(name, self._key_record_key(name), "key record")[0]

    def _names_under(self, folder: str) -> "builtins.list[str]":
        """Names of the keys under ``<prefix>/<folder>/`` (key records, snapshots), sorted."""
        folder = f"{self.prefix}/{folder}/" if self.prefix else f"{folder}/"
        names: builtins.list[str] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
                names += [item["Key"][len(folder):] for item in page.get("Contents", ())]
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc, f"ListObjectsV2 {folder}")
        return sorted(names)

    def list_keys(self) -> "builtins.list[str]":
        return [name for name in self._names_under("keys") if KEY_NAME.match(name)]

    def delete_key(self, name: str) -> None:
        """Every version goes: an older version wrapped by a retired site key is a copy too."""
        self._delete_every_version(self._key_record_key(name))

    # -- catalog snapshots: ``<prefix>/snapshots/<name>``, locked like the objects -------------

    def _snapshot_key(self, name: str) -> str:
        valid_snapshot_name(name)
        return f"{self.prefix}/snapshots/{name}" if self.prefix else f"snapshots/{name}"

    def put_snapshot(self, name: str, data: bytes) -> None:
        key = self._snapshot_key(name)
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket, "Key": key, "Body": data, "IfNoneMatch": "*",
            "ChecksumAlgorithm": "SHA256", "ChecksumSHA256": _sha256_b64(data),
            "ContentType": "application/octet-stream",
        }
        if self.object_lock_days > 0 and self.object_lock_enabled():
            kwargs["ObjectLockMode"] = self.object_lock_mode
            kwargs["ObjectLockRetainUntilDate"] = (
                dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=self.object_lock_days)
            )
        taken = SiteError(f"catalog snapshot {name} already exists on {self.url}: names are never reused")
        if self._no_conditional_put:
            del kwargs["IfNoneMatch"]
            try:
                self._client.head_object(Bucket=self.bucket, Key=key)
                raise taken
            except ClientError as exc:
                if self._code(exc) not in _MISSING_CODES:
                    self._fail(exc, f"HeadObject {key}")
            except BotoCoreError as exc:
                self._fail(exc, f"HeadObject {key}")
        try:
            self._client.put_object(**kwargs)
        except ClientError as exc:
            code = self._code(exc)
            if code == "PreconditionFailed":
                raise taken from exc
            if code == "NotImplemented" and not self._no_conditional_put:
                with self._state_lock:
                    self._no_conditional_put = True  # the store ignores If-None-Match: check first
                return self.put_snapshot(name, data)
            self._fail(exc, f"PutObject {key}")
        except BotoCoreError as exc:
            self._fail(exc, f"PutObject {key}")

    def get_snapshot(self, name: str) -> bytes:
        return self._download(name, self._snapshot_key(name), "catalog snapshot")[0]

    def list_snapshots(self) -> "builtins.list[str]":
        return [name for name in self._names_under("snapshots") if "/" not in name and name.startswith("catalog-")]

    def delete_snapshot(self, name: str) -> None:
        key = self._snapshot_key(name)
        self._call(f"DeleteObject {key}", "delete_object", Bucket=self.bucket, Key=key)

    def object_lock_enabled(self) -> bool:
        """Whether the bucket was created with Object Lock (cached: it can never be turned off)."""
        if self._lock_enabled is not None:
            return self._lock_enabled
        try:
            answer = self._client.get_object_lock_configuration(Bucket=self.bucket)
            enabled = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except ClientError as exc:
            if self._code(exc) != "ObjectLockConfigurationNotFoundError":
                self._fail(exc, "GetObjectLockConfiguration")
            enabled = False
        except BotoCoreError as exc:
            self._fail(exc, "GetObjectLockConfiguration")
        self._lock_enabled = enabled
        return enabled

    def health(self) -> dict[str, object]:
        """Can we reach the bucket right now? Never raises: the dashboard shows ``error``."""
        info: dict[str, object] = {"url": self.url, "kind": "s3", "endpoint": self.endpoint, "ok": False, "error": None}
        try:
            self._head_bucket()
            self._bucket_seen = True
            if self.object_lock_days > 0:
                locked = self.object_lock_enabled()
                info["object_lock"] = locked
                if not locked:
                    info["warning"] = (f"object_lock_days = {self.object_lock_days} but bucket {self.bucket} has no "
                                       "Object Lock: copies there can be deleted or overwritten")
            info["ok"] = True
        except SiteError as exc:
            info["error"] = str(exc)
        return info
