"""JWT connection tokens: the :class:`JWT` settings of a server and how a token is checked.

``Server(jwt=JWT(key=..., algorithms=["HS256"]))`` admits an upgrade only with a valid
signed token (``Authorization: Bearer``, ``?token=`` or the ``Sec-WebSocket-Protocol``
offer ``bearer.<token>``: docs/security.md). Its ``sub`` claim becomes the connection's
uid, ``exp`` (required) bounds the connection's life unless the client refreshes the
token over the open socket (``chsk/refresh``, feature ``refresh``: docs/protocol.md), and
an optional ``info`` object is kept on the connection (``conn.info``).

Checking is PyJWT's (``jwt.decode``; keys from a JWKS file through ``jwt.PyJWKSet``), an
optional extra: ``pip install 'sente-lite[jwt]'``. The ``none`` algorithm is never
accepted. Refusals carry a short reason (``token expired``, ``bad signature``, ...), never
the token.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..wire import protocol as p

log = logging.getLogger("sente_lite.core.security")

MISSING_JWT = "JWT tokens need PyJWT: pip install 'sente-lite[jwt]'"
#: Algorithms a :class:`JWT` may list (never ``none``).
SUPPORTED_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384",
                        "PS512", "ES256", "ES384", "ES512", "EdDSA")
#: Longest token read (upgrade or refresh); a longer one is refused unread.
MAX_TOKEN_CHARS = p.MAX_TOKEN_CHARS
#: Largest ``info`` claim kept on a connection, as compact JSON.
MAX_INFO_BYTES = 4096
#: Longest uid (``sub``), as for an ``authenticate`` hook's answer.
MAX_SUB_CHARS = 256
#: Largest ``leeway`` (seconds of clock skew accepted on ``exp``, ``nbf`` and ``iat``).
MAX_LEEWAY_S = 300.0
#: How often a ``jwks_file`` is looked at again (a new mtime reloads it: key rotation).
JWKS_RECHECK_S = 5.0

KeyLike = Union[str, bytes, Any]


class TokenRejected(Exception):
    """A token that does not pass; ``reason`` is short and never holds the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Grant:
    """What a valid token grants: ``uid`` (its ``sub``), ``exp`` (seconds since the epoch),
    ``info`` (its ``info`` object, or None) and ``deadline_in_s``: seconds from the check
    until ``exp + leeway``, when a connection that did not refresh is closed (4002)."""

    uid: str
    exp: float
    info: Optional[Dict[str, Any]]
    deadline_in_s: float
    #: its ``channels`` claim: the server subscribes the connection to them (``server-subs``)
    channels: Tuple[str, ...] = ()
    #: a subscription token's ``channel`` claim (None: a connection token)
    channel: Optional[str] = None


def _pyjwt() -> Any:
    try:
        import jwt
    except ImportError:
        raise ImportError(MISSING_JWT) from None
    return jwt


class JWT:
    """How a server checks JWT connection tokens.

    ``key``: the verification key (an HMAC secret as str/bytes, a PEM public key, or a
    key object of ``cryptography``), or a list of them for rotation (each is tried in
    turn); ``jwks_file``: a JWKS JSON file instead of or besides ``key`` (re-read when it
    changes, at most every ``JWKS_RECHECK_S``). ``algorithms``: those accepted, from
    :data:`SUPPORTED_ALGORITHMS` (``none`` raises ValueError). ``audience`` / ``issuer``:
    required ``aud`` / ``iss`` when set (a token with an ``aud`` is refused when no
    audience is set). ``leeway``: seconds of clock skew accepted (at most
    :data:`MAX_LEEWAY_S`). Claims: ``sub`` (the uid, 1-256 chars) and ``exp`` required;
    ``info`` optional (an object of at most :data:`MAX_INFO_BYTES` bytes as JSON).
    Raises ImportError naming the ``[jwt]`` extra when PyJWT is not installed.
    """

    def __init__(self, key: Union[KeyLike, Sequence[KeyLike], None] = None, *,
                 algorithms: Sequence[str] = ("HS256",), audience: Optional[str] = None,
                 issuer: Optional[str] = None, leeway: float = 0.0,
                 jwks_file: Optional[str] = None) -> None:
        self._jwt = _pyjwt()
        if isinstance(algorithms, str):
            raise TypeError("algorithms must be a list such as ['HS256'], not a string")
        algs = tuple(algorithms)
        if not algs:
            raise ValueError("algorithms: list at least one, e.g. ['HS256']")
        for alg in algs:
            if not isinstance(alg, str) or alg.lower() == "none":
                raise ValueError("the 'none' algorithm is never accepted: tokens must be signed")
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(f"algorithm {alg!r} is not supported: use some of "
                                 f"{', '.join(SUPPORTED_ALGORITHMS)}")
        self.algorithms: Tuple[str, ...] = algs
        if isinstance(key, (list, tuple)):
            keys: List[KeyLike] = list(key)
        else:
            keys = [] if key is None else [key]
        for k in keys:
            if isinstance(k, (str, bytes)) and not k:
                raise ValueError("key: an empty key accepts nothing")
        self.keys = tuple(keys)
        self.jwks_file = jwks_file
        if not keys and jwks_file is None:
            raise ValueError("JWT needs key= (one key or a list, for rotation) or jwks_file=")
        if not isinstance(leeway, (int, float)) or isinstance(leeway, bool) or not (
                0.0 <= leeway <= MAX_LEEWAY_S):
            raise ValueError(f"leeway must be a number of seconds in 0-{MAX_LEEWAY_S:g}, "
                             f"got {leeway!r}")
        self.leeway = float(leeway)
        self.audience = audience
        self.issuer = issuer
        self._jwks_lock = threading.Lock()
        self._jwks: List[Any] = []  # PyJWK of the file, as last read
        self._jwks_mtime: Optional[float] = None
        self._jwks_checked = 0.0
        if jwks_file is not None:
            self._load_jwks(strict=True)

    def __repr__(self) -> str:  # never the keys
        return (f"JWT(algorithms={list(self.algorithms)!r}, keys={len(self.keys)}, "
                f"jwks_file={self.jwks_file!r}, audience={self.audience!r}, "
                f"issuer={self.issuer!r}, leeway={self.leeway:g})")

    # -- JWKS ------------------------------------------------------------------------
    def _load_jwks(self, strict: bool) -> None:
        """Read ``jwks_file`` (strict: errors raise; else they are logged and the keys
        last read stay)."""
        assert self.jwks_file is not None
        try:
            mtime = os.stat(self.jwks_file).st_mtime
            if mtime == self._jwks_mtime:
                return
            with open(self.jwks_file, encoding="utf-8") as f:
                keyset = self._jwt.PyJWKSet.from_json(f.read())
        except (OSError, ValueError, self._jwt.PyJWTError) as exc:
            if strict:
                raise ValueError(f"jwks_file {self.jwks_file!r}: {exc}") from None
            log.warning("jwks_file %s could not be read again (%s): its last keys stay",
                        self.jwks_file, type(exc).__name__)
            return
        self._jwks, self._jwks_mtime = list(keyset.keys), mtime

    def _candidates(self, kid: Optional[str]) -> List[KeyLike]:
        """The keys to try: the JWKS key named ``kid`` (else every JWKS key), then ``key``."""
        out: List[KeyLike] = []
        if self.jwks_file is not None:
            with self._jwks_lock:
                now = time.monotonic()
                if now - self._jwks_checked >= JWKS_RECHECK_S:
                    self._jwks_checked = now
                    self._load_jwks(strict=False)
                jwks = self._jwks
            named = [k for k in jwks if kid is not None and k.key_id == kid]
            out.extend(k.key for k in (named or jwks))
        out.extend(self.keys)
        return out

    # -- checking --------------------------------------------------------------------
    def check(self, token: Optional[str], now: Optional[float] = None, *,
              channel_token: bool = False) -> Grant:
        """The :class:`Grant` of ``token``; :class:`TokenRejected` with a short reason when
        it does not pass. ``now``: the wall clock (``time.time()``) the grant's deadline is
        counted from. ``channel_token``: a subscription token is wanted (claim ``channel``
        required); else a connection token (a ``channel`` claim refuses it)."""
        jwt = self._jwt
        if not token:
            raise TokenRejected("no token")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise TokenRejected(f"token over {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise TokenRejected("algorithm not allowed")
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        claims = self._decode(token, alg, self._candidates(kid))
        grant = self._grant(claims, time.time() if now is None else now)
        if channel_token and grant.channel is None:
            raise TokenRejected("missing claim channel: not a subscription token")
        if not channel_token and grant.channel is not None:
            raise TokenRejected("a subscription token (claim channel) is not a connection token")
        return grant

    def _decode(self, token: str, alg: str, keys: List[KeyLike]) -> Dict[str, Any]:
        """The claims of ``token`` under the first of ``keys`` whose signature matches."""
        jwt = self._jwt
        signature_checked = False
        for key in keys:
            try:
                return jwt.decode(token, key, algorithms=list(self.algorithms),
                                  audience=self.audience, issuer=self.issuer, leeway=self.leeway,
                                  options={"require": ["exp", "sub"]})
            except jwt.InvalidSignatureError:
                signature_checked = True  # another key may match (rotation)
            except (jwt.InvalidKeyError, jwt.InvalidAlgorithmError, TypeError, ValueError):
                continue  # a key of another kind (an RSA key for an ES256 token)
            except jwt.ExpiredSignatureError:
                raise TokenRejected("token expired") from None
            except jwt.InvalidAudienceError:
                raise TokenRejected("wrong audience") from None
            except jwt.InvalidIssuerError:
                raise TokenRejected("wrong issuer") from None
            except jwt.ImmatureSignatureError:
                raise TokenRejected("token not yet valid (nbf or iat in the future)") from None
            except jwt.MissingRequiredClaimError as exc:
                raise TokenRejected(f"missing claim {exc.claim}") from None
            except jwt.DecodeError:
                raise TokenRejected("malformed token") from None
            except jwt.PyJWTError as exc:  # InvalidIssuedAtError, a bad sub type, ...
                raise TokenRejected(f"invalid token ({type(exc).__name__})") from None
        raise TokenRejected("bad signature" if signature_checked else f"no key for {alg}")

    def _grant(self, claims: Dict[str, Any], now: float) -> Grant:
        sub, exp, info = claims.get("sub"), claims.get("exp"), claims.get("info")
        channel = claims.get("channel")
        if channel is not None and (not isinstance(channel, str) or not channel):
            raise TokenRejected("claim channel must be a non-empty string")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_CHARS:
            raise TokenRejected(f"claim sub must be a string of 1-{MAX_SUB_CHARS} characters")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise TokenRejected("claim exp must be a number")
        if info is not None:
            if not isinstance(info, dict):
                raise TokenRejected("claim info must be an object")
            if len(json.dumps(info, separators=(",", ":")).encode("utf-8")) > MAX_INFO_BYTES:
                raise TokenRejected(f"claim info over {MAX_INFO_BYTES} bytes")
        channels = claims.get("channels", [])
        if not (isinstance(channels, list) and all(isinstance(ch, str) for ch in channels)):
            raise TokenRejected("claim channels must be a list of strings")
        return Grant(sub, exp, info, exp + self.leeway - now, tuple(channels),
                     channel)


def mint(sub: str, ttl_s: float, key: KeyLike, algorithm: str = "HS256", *,
         audience: Optional[str] = None, issuer: Optional[str] = None,
         info: Optional[Dict[str, Any]] = None, now: Optional[float] = None,
         kid: Optional[str] = None, channel: Optional[str] = None) -> str:
    """A signed token for ``sub`` valid ``ttl_s`` seconds (``iat``, ``exp``; ``aud``,
    ``iss``, ``info`` when given; ``channel``: a subscription token for that channel):
    for tests and ``sente-lite token``, never ``none``."""
    jwt = _pyjwt()
    if algorithm.lower() == "none":
        raise ValueError("the 'none' algorithm is never used: tokens must be signed")
    issued = int(time.time() if now is None else now)
    exp = issued + (int(ttl_s) if float(ttl_s).is_integer() else ttl_s)
    claims: Dict[str, Any] = {"sub": sub, "iat": issued, "exp": exp}
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    if info is not None:
        claims["info"] = info
    if channel is not None:
        claims["channel"] = channel
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


__all__ = ["JWT", "Grant", "TokenRejected", "mint", "SUPPORTED_ALGORITHMS", "MAX_TOKEN_CHARS",
           "MAX_INFO_BYTES", "MAX_SUB_CHARS", "MAX_LEEWAY_S", "JWKS_RECHECK_S", "MISSING_JWT"]
