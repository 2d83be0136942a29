"""The codebook on disk: an authenticated JSON file and, beside it, a key file.

Two files, on purpose:

* ``PATH`` (mode 0644: it holds nothing secret) — format, version 2, the layout (redundancy;
  protected leaves; groups with K, n, columns, dtype, segments; tree; skipped), the fingerprint
  of the model tree the codebook was made for (path, shape and dtype of *every* leaf) with, since
  kinds are recorded, each leaf's kind and the tree's params root (``kinds``, ``root``: optional,
  so files written before load as they did), the seal if there is one (its sketch values
  encrypted under a key derived from the secret; exact copies of the inference state in the
  clear), a public key id, and a MAC: HMAC-SHA256, under ``derive(secret, "codebook-mac")``, of
  the canonical JSON of everything else.
* ``PATH.key`` (or ``key_path``; mode 0600, set explicitly, not left to the umask) — the secret.
  Keep it off the deployment: with it an attacker can compute A and forge the seal.

Loading checks, in this order, and refuses with a ``ValueError`` that says which: the file is JSON
of this format and a known version; the key file's key id is the codebook's ("wrong key"); the MAC
("tampered"); the schema (types, ranges, 1 ≤ n < K, floating dtypes, segments of protected
leaves, every protected leaf in the model fingerprint with its shape and dtype); then the layout's
own consistency (every protected entry in exactly one group, ``Codebook.__init__``).
``check_model`` compares the fingerprint with a params tree ("other model: leaf X …").

Each file is written to a temporary file in its directory, flushed, fsynced and renamed into
place, so a reader sees the old file or the new one, never a partial one; both temporary files are
complete before either is renamed (the key first), and if the codebook's rename fails the key file
is put back as it was: a failed ``save`` leaves nothing behind.  A destination that is a directory,
or a directory that does not exist, is refused before anything is written.

Version-1 files (key words inside the JSON, no MAC, no fingerprint) are unauthenticated: anyone
can write one, with their own key and layout, for a model they re-encoded.  They are refused
unless the caller opts in by name (``allow_legacy=True``); then they load with a
:class:`LegacyCodebookWarning`, ``Codebook.legacy`` is True (purify's report says so), and a key
file given explicitly must hold the key written in the file.  Saving them again writes version 2.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import stat
import tempfile
import warnings
from typing import Any, cast

import jax.numpy as jnp
import numpy as np

from jaxpurify import _keys
from jaxpurify._numerics import leaf_shape
from jaxpurify.tree import KINDS, PARAM, ROOT_KEY, leaves_with_paths

FORMAT = "jaxpurify.codebook"
KEY_FORMAT = "jaxpurify.codebook-key"
VERSION = 2
CODEBOOK_MODE = 0o644
KEY_MODE = 0o600

Fingerprint = tuple[tuple[str, tuple[int, ...], str], ...]


class LegacyCodebookWarning(UserWarning):
    """A version-1 codebook file: key inside, no MAC, no model fingerprint."""


# -- model fingerprint -----------------------------------------------------------------------
def fingerprint(params: Any) -> Fingerprint:
    """(path, shape, dtype) of every leaf of a tree, in tree order."""
    out = []
    for path, leaf in leaves_with_paths(params)[0]:
        # no np.asarray of a leaf that has .dtype/.shape: typed PRNG keys cannot become NumPy arrays
        dtype = getattr(leaf, "dtype", None)
        dtype = str(dtype) if dtype is not None else np.asarray(leaf).dtype.name
        out.append((path, leaf_shape(leaf), dtype))
    return tuple(out)


def check_model(model: Fingerprint, params: Any) -> None:
    """Raise ``ValueError`` naming the first leaf where ``params`` is not the model ``model`` describes."""
    have = {p: (s, d) for p, s, d in fingerprint(params)}
    for path, shape, dtype in model:
        if path not in have:
            raise ValueError(f"other model: leaf {path!r} of the codebook's model is missing from params")
        s, d = have.pop(path)
        if s != tuple(shape) or d != dtype:
            raise ValueError(
                f"other model: leaf {path!r} differs: params has {d}{list(s)}, "
                f"the codebook was made for {dtype}{list(shape)}"
            )
    if have:
        raise ValueError(f"other model: params has leaf {next(iter(have))!r}, which the codebook's model does not")


# -- canonical form and MAC ------------------------------------------------------------------
def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _mac(secret: bytes, doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "mac"}
    return hmac.new(_keys.derive(secret, "codebook-mac"), _canonical(body), "sha256").hexdigest()


def document(
    body: dict[str, Any], secret: bytes, model: Fingerprint | None, seal: dict[str, Any] | None
) -> dict[str, Any]:
    """The version-2 document: layout ``body`` + fingerprint + seal + key id, then its MAC."""
    doc = {"format": FORMAT, "version": VERSION, "key_id": _keys.key_id(secret)}
    doc.update(body)
    doc.update(model=None if model is None else [[p, list(s), d] for p, s, d in model], seal=seal)
    doc["mac"] = _mac(secret, doc)
    return doc


# -- schema ----------------------------------------------------------------------------------
def _int(v: Any, what: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"malformed codebook file: {what} must be an int ≥ {lo}, got {v!r}")
    return v


def _floating(dtype: Any, what: str) -> str:
    try:  # jnp.dtype knows bfloat16 and the other ml_dtypes floats
        ok = isinstance(dtype, str) and bool(jnp.issubdtype(jnp.dtype(dtype), jnp.floating))
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"malformed codebook file: {what} has dtype {dtype!r}, expected a floating dtype")
    return cast(str, dtype)  # ok: a str


def _shape(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, list):
        raise ValueError(f"malformed codebook file: {what} shape must be a list, got {v!r}")
    return tuple(_int(d, f"{what} shape entry") for d in v)


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise ValueError(f"malformed codebook file: {what} must be a list, got {type(v).__name__}")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"malformed codebook file: {what} must be a string, got {v!r}")
    return v


def _check_leaves(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    leaves = _list(doc.get("leaves"), "'leaves'")
    if not leaves:
        raise ValueError("malformed codebook file: 'leaves' must be a non-empty list")
    out = {}
    for i, d in enumerate(leaves):
        if not isinstance(d, dict):
            raise ValueError(f"malformed codebook file: leaves[{i}] must be an object")
        what = f"leaf {_str(d.get('path'), f'leaves[{i}] path')!r}"
        if d["path"] in out:
            raise ValueError(f"malformed codebook file: {what} appears twice")
        shape = _shape(d.get("shape"), what)
        _floating(d.get("dtype"), what)
        axis = d.get("axis")
        if axis is not None and _int(axis, f"{what} axis") >= len(shape):
            raise ValueError(f"malformed codebook file: {what}: axis {axis} out of range for shape {list(shape)}")
        if doc.get("version") == 1:  # one group per leaf along its axis, K and n in the leaf
            K, n = _int(d.get("K"), f"{what} K"), _int(d.get("n"), f"{what} n")
            if axis is None or shape[axis] != K or not 1 <= n < K:
                raise ValueError(
                    f"malformed codebook file: {what}: need K = shape[axis] and 1 ≤ n < K "
                    f"(axis {axis}, shape {list(shape)}, K {K}, n {n})"
                )
        out[d["path"]] = d
    return out


def _check_groups(doc: dict[str, Any], leaves: dict[str, dict[str, Any]]) -> None:
    for i, g in enumerate(_list(doc.get("groups"), "'groups'")):
        if not isinstance(g, dict):
            raise ValueError(f"malformed codebook file: groups[{i}] must be an object")
        what = f"group {_str(g.get('name'), f'groups[{i}] name')!r}"
        K, n = _int(g.get("K"), f"{what} K", 1), _int(g.get("n"), f"{what} n", 1)
        _int(g.get("columns"), f"{what} columns", 1)
        if not n < K:
            raise ValueError(f"malformed codebook file: {what}: need 1 ≤ n < K, got K={K}, n={n}")
        _floating(g.get("dtype"), what)
        for seg in _list(g.get("segments"), f"{what} segments"):
            if not (isinstance(seg, list) and len(seg) == 3 and seg[0] in leaves):
                raise ValueError(
                    f"malformed codebook file: {what}: segment {seg!r} is not [protected leaf, start, stop]"
                )
            _int(seg[1], f"{what} segment start"), _int(seg[2], f"{what} segment stop")
    for ks in _list(doc.get("tree"), "'tree'"):
        if not isinstance(ks, list) or not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in ks):
            raise ValueError(f"malformed codebook file: tree entry {ks!r} is not a list of str/int keys")
    for x in _list(doc.get("skipped"), "'skipped'"):
        if not (isinstance(x, list) and len(x) == 3 and isinstance(x[0], str) and isinstance(x[2], str)):
            raise ValueError(f"malformed codebook file: skipped entry {x!r} is not [path, size, reason]")
        _int(x[1], f"skipped {x[0]!r} size")


def check_layout(doc: dict[str, Any]) -> tuple[float, Fingerprint | None]:
    """Types and ranges of the layout and fingerprint fields (the layout's own consistency —
    every entry in exactly one group — is checked when the codebook is built); returns
    (redundancy, model fingerprint or None)."""
    red = doc.get("redundancy")
    if isinstance(red, bool) or not isinstance(red, (int, float)) or not (math.isfinite(red) and red > 1):
        raise ValueError(f"malformed codebook file: redundancy must be a finite number > 1, got {red!r}")
    leaves = _check_leaves(doc)
    if doc.get("version") != 1:
        _check_groups(doc, leaves)
    model = doc.get("model")
    if model is None:
        return float(red), None
    fp = []
    for e in _list(model, "'model'"):
        if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[2], str)):
            raise ValueError(f"malformed codebook file: model entry {e!r} is not [path, shape, dtype]")
        fp.append((e[0], _shape(e[1], f"model leaf {e[0]!r}"), e[2]))
    known = {p: (s, d) for p, s, d in fp}
    for d in leaves.values():
        if known.get(d["path"]) != (tuple(d["shape"]), d["dtype"]):
            raise ValueError(
                f"malformed codebook file: leaf {d['path']!r} is not in the model fingerprint with its shape and dtype"
            )
    _check_kinds(doc, known)
    return float(red), tuple(fp)


def _check_kinds(doc: dict[str, Any], model: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """``kinds`` (every model leaf's kind) and ``root`` (a chain of "params/"): both or neither."""
    if "kinds" not in doc and "root" not in doc:
        return
    root, kinds = doc.get("root"), doc.get("kinds")
    if not isinstance(root, str) or root != (ROOT_KEY + "/") * root.count("/"):
        raise ValueError(f"malformed codebook file: root must be a chain of {ROOT_KEY + '/'!r}, got {root!r}")
    if not isinstance(kinds, dict) or set(kinds) != set(model):
        raise ValueError("malformed codebook file: 'kinds' must give the kind of every leaf of the model fingerprint")
    for path, kind in kinds.items():
        if kind not in KINDS:
            raise ValueError(f"malformed codebook file: leaf {path!r} has kind {kind!r}, expected one of {KINDS}")
    for d in _list(doc.get("leaves"), "'leaves'"):
        if kinds.get(d.get("path")) != PARAM:
            raise ValueError(
                f"malformed codebook file: protected leaf {d.get('path')!r} is not recorded as a parameter"
            )


# -- files -----------------------------------------------------------------------------------
def key_path_for(path: str | os.PathLike[str], key_path: str | os.PathLike[str] | None) -> str:
    kp = os.fspath(key_path) if key_path is not None else os.fspath(path) + ".key"
    if os.path.abspath(kp) == os.path.abspath(os.fspath(path)):
        raise ValueError("key_path must differ from the codebook path (the key lives in its own file)")
    return kp


def _check_destination(dest: str, what: str) -> None:
    """Refuse, before anything is written, a destination that cannot take a file."""
    folder = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what} {dest!r}: directory {folder!r} does not exist")
    if os.path.isdir(dest):
        raise IsADirectoryError(f"{what} {dest!r} is a directory; name a file")


def _staged(path: str, text: str | bytes, mode: int) -> str:
    """Write text (or bytes) to a complete, fsynced temporary file beside path, with the given mode."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".codebook-", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write(
    path: str | os.PathLike[str], key_path: str | os.PathLike[str] | None, doc: dict[str, Any], secret: bytes
) -> None:
    """Write the codebook document and its key file atomically (each file old or new, never
    partial); if the codebook cannot be put in place, the key file is restored as it was."""
    path = os.fspath(path)
    kp = key_path_for(path, key_path)
    _check_destination(path, "codebook path")
    _check_destination(kp, "key_path")
    key_doc = {"format": KEY_FORMAT, "version": 1, "key_id": doc["key_id"], "secret": secret.hex()}
    staged = []
    try:
        staged.append(_staged(kp, json.dumps(key_doc) + "\n", KEY_MODE))
        staged.append(_staged(path, json.dumps(doc, indent=1) + "\n", CODEBOOK_MODE))
        _replace_both(staged, kp, path)
    finally:
        for tmp in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _replace_both(staged: list[str], kp: str, path: str) -> None:
    """Rename the staged key, then the staged codebook, into place; if the second rename fails,
    undo the first (the old key file back, or no key file), so no new secret is left behind."""
    try:
        with open(kp, "rb") as f:
            old_key = f.read()
    except FileNotFoundError:
        old_key = None
    os.replace(staged[0], kp)
    try:
        os.replace(staged[1], path)
    except BaseException:
        if old_key is None:
            os.unlink(kp)
        else:
            os.replace(_staged(kp, old_key, KEY_MODE), kp)
        raise


def _read_json(path: str, what: str) -> Any:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: {what} is not JSON (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: {what} is not JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: {what} is JSON nested too deeply to read") from None


def read_secret(key_path: str) -> bytes:
    try:
        mode = os.stat(key_path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(
            f"codebook key file {key_path!r} not found: the codebook JSON holds no key; pass key_path= "
            "to name the file written beside it by save()"
        ) from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(
            f"codebook key file {key_path!r} is accessible to group/others (mode {oct(mode & 0o777)}); chmod 600 it",
            UserWarning,
            stacklevel=4,
        )
    d = _read_json(key_path, "the key file")
    if not isinstance(d, dict) or d.get("format") != KEY_FORMAT or not isinstance(d.get("secret"), str):
        raise ValueError(f"{key_path}: not a {KEY_FORMAT} file")
    try:
        secret = bytes.fromhex(d["secret"])
    except ValueError:
        raise ValueError(f"{key_path}: the secret is not hex") from None
    return _keys.check_secret(secret, f"{key_path}: the secret")


def read(
    path: str | os.PathLike[str], key_path: str | os.PathLike[str] | None = None, *, allow_legacy: bool = False
) -> tuple[dict[str, Any], bytes]:
    """Load and authenticate: (validated document, secret).  See the module doc for the checks."""
    path = os.fspath(path)
    doc = _read_json(path, "the codebook")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    version = doc.get("version")
    if version == 1:
        if allow_legacy is not True:
            raise ValueError(
                f"{path}: version-1 codebook (key inside the file, no MAC): unauthenticated, anyone can "
                "write one, so it is refused. If you made this file yourself, load it once with "
                "allow_legacy=True (command line: --allow-legacy) and save() it again as version 2"
            )
        doc, secret = _read_v1(path, doc)
        if key_path is not None and not hmac.compare_digest(read_secret(os.fspath(key_path)), secret):
            raise ValueError(f"{path}: wrong key: the key file {os.fspath(key_path)!r} does not hold this file's key")
        return doc, secret
    if version != VERSION:
        raise ValueError(f"{path}: unsupported codebook version {version!r} (this library reads 1 and {VERSION})")
    kp = key_path_for(path, key_path)
    secret = read_secret(kp)
    kid = _keys.key_id(secret)
    if doc.get("key_id") != kid:
        raise ValueError(
            f"{path}: wrong key: the key file {kp!r} (key id {kid}) is not this codebook's "
            f"(key id {doc.get('key_id')!r})"
        )
    mac = doc.get("mac")
    try:
        expected = _mac(secret, doc)
    except ValueError:  # non-finite numbers cannot be canonical JSON: not what save() wrote
        expected = None
    if not isinstance(mac, str) or expected is None or not hmac.compare_digest(mac.encode(), expected.encode()):
        raise ValueError(f"{path}: tampered: the MAC does not match; the file was changed after it was saved")
    check_layout(doc)
    return doc, secret


def _read_v1(path: str, doc: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    warnings.warn(
        f"{path}: version-1 codebook (key inside the file, no MAC, no model fingerprint): loaded "
        "unauthenticated; save() it again to get an authenticated version-2 file and a separate key file",
        LegacyCodebookWarning,
        stacklevel=4,
    )
    words = doc.get("key")
    if not (
        isinstance(words, list)
        and words
        and all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w < 2**32 for w in words)
    ):
        raise ValueError(f"{path}: malformed codebook file: 'key' must be a non-empty list of uint32 words")
    doc = dict(doc, model=None, seal=None)
    check_layout(doc)
    return doc, _keys.words_to_bytes(words)
