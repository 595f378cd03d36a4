"""Object storage through fsspec: the one place that turns a URL (s3://, gs://, az://, hf://,
https://) into a file system, pins each object's version, and says every store failure in one line.

`ObjectPath` is the small part of `pathlib.Path` that sources, the cache and outputs use (name,
suffix, parent, `/`, exists, glob, open, read/write bytes), over a URL. A source file is *pinned*
when the planner resolves it: its ETag, version id, size and mtime are kept, its fingerprint is
made from them (never from a download), and every later open checks the object is still that one;
an object replaced mid-run is an error, never a run that mixes two versions. Credentials come only
from each store's standard environment (AWS_* and AWS_ENDPOINT_URL, profiles,
GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*, HF_TOKEN); a recipe holds none.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Any

from selectkit.errors import DataError, MissingExtraError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

# scheme -> the extra that brings its fsspec implementation (None: built into fsspec)
SCHEMES: dict[str, str | None] = {
    "s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure",
    "hf": "hf", "http": "http", "https": "http", "memory": None,
}
PACKAGES = {"s3": "s3fs", "gcs": "gcsfs", "azure": "adlfs", "hf": "huggingface_hub", "http": "aiohttp"}
_SECRET_QUERY = re.compile(r"[?&](token|sig|signature|x-amz-signature|x-amz-credential|access_token|"
                           r"key|secret|password|sas)=", re.IGNORECASE)


class ObjectError(DataError):
    """A store said no: missing bucket or object, no credentials, access denied, unreachable endpoint,
    or an object that changed during the run."""


def is_url(text: Any) -> bool:
    """True for a URL that names object storage (anything with a scheme but file://)."""
    if isinstance(text, ObjectPath):
        return True
    match = _URL.match(str(text)) if isinstance(text, str) else None
    return match is not None and match.group(1).lower() != "file"


def embedded_secret(url: str) -> str | None:
    """What secret a URL carries, if any (`user:pass@host`, a token or signature query), for validate's warning."""
    rest = url.split("://", 1)[-1]
    authority = rest.split("/", 1)[0]
    if "@" in authority and ":" in authority.split("@", 1)[0]:
        return "a user name and password"
    if _SECRET_QUERY.search(url):
        return "a token in its query"
    return None


def redact(url: str) -> str:
    """The URL without user info or query, fit for messages and manifests."""
    scheme, _, rest = url.partition("://")
    head, slash, tail = rest.partition("/")
    head = head.rsplit("@", 1)[-1]
    return f"{scheme}://{head}{slash}{tail.split('?', 1)[0]}"


def storage_options(protocol: str) -> dict[str, Any]:
    """Options for the store, from the standard environment only. s3 honours AWS_ENDPOINT_URL
    (and AWS_ENDPOINT_URL_S3) and retries a few times with backoff, then gives up."""
    if SCHEMES.get(protocol) == "s3":
        options: dict[str, Any] = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                                                     "retries": {"max_attempts": 3, "mode": "standard"}}}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
        return options
    return {}


def filesystem(protocol: str):
    """The fsspec file system for a scheme; a missing implementation names its extra in one line."""
    protocol = protocol.lower()
    if protocol not in SCHEMES:
        raise ObjectError(f"unknown storage scheme {protocol}:// (known: {', '.join(sorted(SCHEMES))})")
    extra = SCHEMES[protocol]
    try:
        import fsspec

        if extra is not None:
            __import__(PACKAGES[extra])
    except ImportError as exc:
        raise MissingExtraError(PACKAGES.get(extra or "", "fsspec"), extra or "s3", f"{protocol}:// URLs") from exc
    options = storage_options(protocol)
    if SCHEMES.get(protocol) == "s3":
        protocol = "s3"
    return fsspec.filesystem(protocol, **options)


def _describe(exc: BaseException) -> str:
    """A store exception as a short reason (the first line of its text)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


@contextmanager
def store_errors(url: str, doing: str = "read"):
    """Turn whatever a store raises into one ObjectError line naming the URL."""
    shown = redact(url)
    try:
        yield
    except ObjectError:
        raise
    except MissingExtraError:
        raise
    except FileNotFoundError as exc:
        bucket = shown.split("://", 1)[-1].split("/", 1)[0]
        reason = _describe(exc)
        if "bucket" in reason.lower() and "not" in reason.lower():
            raise ObjectError(f"cannot {doing} {shown}: bucket {bucket!r} does not exist") from None
        raise ObjectError(f"cannot {doing} {shown}: no such object") from None
    except PermissionError as exc:
        raise ObjectError(f"cannot {doing} {shown}: access denied ({_describe(exc)})",
                          hint="check the credentials in the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, "
                               "AZURE_STORAGE_*, HF_TOKEN)") from None
    except Exception as exc:  # noqa: BLE001 - every store failure becomes one line
        name = type(exc).__name__
        reason = _describe(exc)
        if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
            raise ObjectError(f"cannot {doing} {shown}: no credentials found",
                              hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE") from None
        if "PreconditionFailed" in reason or "412" in reason or name == "PreconditionFailed":
            raise ObjectError(f"{shown} changed during the run; rerun to read the new version") from None
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionError", "ClientConnectorError",
                    "ConnectionRefusedError", "ReadTimeoutError", "ServerTimeoutError", "TimeoutError") \
                or "Could not connect" in reason or "Connect timeout" in reason:
            raise ObjectError(f"cannot {doing} {shown}: the endpoint does not answer ({reason})",
                              hint="check AWS_ENDPOINT_URL or the network") from None
        raise ObjectError(f"cannot {doing} {shown}: {reason}") from None


class ObjectPath:
    """A file or prefix in object storage, addressed by URL; `meta` (when pinned) is the object's
    identity as the planner saw it: {etag, version, size, mtime, type}."""

    __slots__ = ("url", "meta")

    def __init__(self, url: str | ObjectPath, meta: dict | None = None):
        url = url.url if isinstance(url, ObjectPath) else str(url)
        self.url = url.rstrip("/") if url.count("/") > 3 or not url.endswith("://") else url
        self.meta = meta

    # ------------------------------------------------------------ naming (no network)

    @property
    def protocol(self) -> str:
        return self.url.split("://", 1)[0].lower()

    @property
    def fs(self):
        return filesystem(self.protocol)

    @property
    def key(self) -> str:
        """The path the file system takes (the URL without its scheme, or the whole URL for http)."""
        if SCHEMES.get(self.protocol) == "http":
            return self.url
        return self.url.split("://", 1)[1]

    @property
    def name(self) -> str:
        return self.url.split("?", 1)[0].split("://", 1)[1].rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind("."):] if "." in name.lstrip(".") else ""

    @property
    def stem(self) -> str:
        return self.name[: len(self.name) - len(self.suffix)] if self.suffix else self.name

    @property
    def parent(self) -> ObjectPath:
        scheme, rest = self.url.split("://", 1)
        return ObjectPath(f"{scheme}://{rest.rsplit('/', 1)[0]}") if "/" in rest else self

    def __truediv__(self, other: str) -> ObjectPath:
        return ObjectPath(f"{self.url}/{str(other).lstrip('/')}")

    joinpath = __truediv__

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    def relative_to(self, other: ObjectPath | str) -> str:
        base = (other.url if isinstance(other, ObjectPath) else str(other)).rstrip("/") + "/"
        if not self.url.startswith(base):
            raise ValueError(f"{self.url} is not under {base}")
        return self.url[len(base):]

    def is_absolute(self) -> bool:
        return True

    def expanduser(self) -> ObjectPath:
        return self

    def resolve(self) -> ObjectPath:
        return self

    absolute = resolve

    def __str__(self) -> str:
        return redact(self.url)

    def __repr__(self) -> str:
        return f"ObjectPath({redact(self.url)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __reduce__(self):
        return (ObjectPath, (self.url, self.meta))

    # ------------------------------------------------------------ what the store says

    def info(self, fresh: bool = True) -> dict:
        fs = self.fs
        with store_errors(self.url, "read"):
            if fresh:
                fs.invalidate_cache(self.key)
            return fs.info(self.key)

    def exists(self) -> bool:
        if self.meta is not None:
            return True
        try:
            self.info()
            return True
        except ObjectError as exc:
            if exc.message.endswith("no such object"):
                return False
            raise

    def is_dir(self) -> bool:
        if self.meta is not None:
            return self.meta.get("type") == "directory"
        try:
            return self.info().get("type") == "directory"
        except ObjectError as exc:
            if exc.message.endswith("no such object"):
                return False
            raise

    def is_file(self) -> bool:
        return self.exists() and not self.is_dir()

    def pinned(self) -> ObjectPath:
        """This object with its identity as the store reports it now (raises when it does not exist)."""
        return ObjectPath(self.url, identity(self.info()))

    def glob(self, pattern: str) -> list[ObjectPath]:
        """The objects under this prefix that match `pattern`, pinned, sorted by name."""
        fs = self.fs
        target = f"{self.key.rstrip('/')}/{pattern}"
        with store_errors(self.url, "list"):
            self._bucket_exists(fs)
            fs.invalidate_cache(self.key)
            found = fs.glob(target, detail=True)
        scheme = self.protocol
        out = []
        for key, info in sorted(found.items()):
            if info.get("type") == "directory":
                continue
            url = key if SCHEMES.get(scheme) == "http" else f"{scheme}://{key}"
            out.append(ObjectPath(url, identity(info)))
        return out

    def _bucket_exists(self, fs, doing: str = "read") -> None:
        """A missing bucket is its own error (a glob over it would just match nothing)."""
        if SCHEMES.get(self.protocol) != "s3":
            return
        bucket = self.key.split("/", 1)[0]
        try:
            fs.info(bucket)
        except FileNotFoundError:
            raise ObjectError(f"cannot {doing} {redact(self.url)}: bucket {bucket!r} does not exist") from None

    def check_bucket(self, doing: str = "write") -> None:
        """Raise now (one line) when the bucket is missing or the store cannot be reached, before any work."""
        fs = self.fs
        with store_errors(self.url, doing):
            self._bucket_exists(fs, doing)

    def files(self) -> list[ObjectPath]:
        """Every object under this prefix (a folder's files), pinned, sorted."""
        return self.glob("**") if self.is_dir() else [self.pinned()]

    def verify(self) -> None:
        """Raise when a pinned object is no longer the version the run started with."""
        if self.meta is None:
            return
        now = identity(self.info())
        if not same_object(self.meta, now):
            raise ObjectError(f"{redact(self.url)} changed during the run (was {describe_identity(self.meta)}, "
                              f"now {describe_identity(now)}); rerun to read the new version")

    def fingerprint(self) -> str:
        """The object's identity as a digest (the one rule in selectkit.storage.digest)."""
        from selectkit.storage.digest import object_fingerprint

        meta = self.meta if self.meta is not None else identity(self.info())
        return object_fingerprint(self.name, meta)

    # ------------------------------------------------------------ bytes

    def open(self, mode: str = "rb", **kwargs: Any):
        """A file object; reading a pinned object first checks it is still that version (s3 then
        holds each range read to that ETag too)."""
        if "r" in mode:
            self.verify()
        with store_errors(self.url, "read" if "r" in mode else "write"):
            handle = self.fs.open(self.key, mode, **kwargs)
        return _Guarded(handle, self.url)

    def read_bytes(self) -> bytes:
        with self.open("rb") as handle:
            return handle.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        with store_errors(self.url, "write"):
            self.fs.pipe_file(self.key, data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def upload(self, local: os.PathLike | str) -> None:
        with store_errors(self.url, "write"):
            self.fs.put_file(os.fspath(local), self.key)

    def download(self, local: os.PathLike | str) -> None:
        self.verify()
        with store_errors(self.url, "read"):
            self.fs.get_file(self.key, os.fspath(local))

    def delete(self, recursive: bool = False) -> None:
        with store_errors(self.url, "delete"):
            try:
                self.fs.rm(self.key, recursive=recursive)
            except FileNotFoundError:
                pass

    def list(self) -> list[ObjectPath]:
        """The entries directly under this prefix (no error when there are none)."""
        with store_errors(self.url, "list"):
            self.fs.invalidate_cache(self.key)
            try:
                names = self.fs.ls(self.key, detail=False)
            except FileNotFoundError:
                return []
        scheme = self.protocol
        return [ObjectPath(n if SCHEMES.get(scheme) == "http" else f"{scheme}://{n}") for n in sorted(names)]


class _Guarded:
    """A store's file object whose failures are one-line ObjectErrors (a read of a replaced object included)."""

    def __init__(self, handle: Any, url: str):
        self._handle, self._url = handle, url

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._handle, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with store_errors(self._url, "read"):
                return attr(*args, **kwargs)

        return call

    def __iter__(self):
        with store_errors(self._url, "read"):
            yield from self._handle

    def __enter__(self) -> _Guarded:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.close()


def identity(info: dict) -> dict:
    """The parts of a store's object info that say which version it is."""
    lfs = info.get("lfs") if isinstance(info.get("lfs"), dict) else {}
    etag = (info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("content_md5")
            or lfs.get("sha256") or info.get("blob_id"))
    version = info.get("VersionId") or info.get("version_id") or info.get("generation") or info.get("last_commit")
    mtime = info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("last_modified") \
        or info.get("Last-Modified")
    return {"etag": str(etag).strip('"') if etag else None, "version": str(version) if version else None,
            "size": info.get("size"), "mtime": str(mtime) if mtime is not None else None,
            "type": info.get("type", "file")}


def same_object(a: dict, b: dict) -> bool:
    """Two identities name one version: equal ETag (and version id where both have one) and size;
    mtime decides only where the store gives no ETag."""
    if a.get("size") != b.get("size"):
        return False
    if a.get("version") and b.get("version") and a["version"] != b["version"]:
        return False
    if a.get("etag") or b.get("etag"):
        return a.get("etag") == b.get("etag")
    return a.get("mtime") == b.get("mtime")


def describe_identity(meta: dict) -> str:
    parts = [f"ETag {meta['etag']}" if meta.get("etag") else None,
             f"version {meta['version']}" if meta.get("version") else None, f"{meta.get('size')} bytes"]
    return ", ".join(p for p in parts if p)


def as_path(text: str | os.PathLike):
    """A URL as an ObjectPath, anything else as a pathlib.Path."""
    from pathlib import Path

    return ObjectPath(str(text)) if is_url(text) else Path(text)
