"""What the DNS provider clients share: the interface, value presentation, and HTTP.

``module_utils/dns_cloudflare.py`` (``CloudflareClient``) and
``module_utils/dns_hetzner.py`` (``HetznerClient``) talk to the providers'
HTTP APIs for ``library/dns_rrset_sync.py``. Both offer the same small
interface, value by value, so that the module can keep the values it does not
own (issue 19 §2):

- ``zone_id(zone)``: the provider's id of the zone (cached);
- ``rrset(zone, name, rtype)``: the records of one name and type, as
  ``Record(value, ttl, id)`` with the value in presentation format (RFC 1035
  5.1): domain names absolute and in lower case, TXT exactly as dnspython
  prints it (every character-string quoted, ``"`` and ``\\`` escaped, other
  octets outside printable ASCII as ``\\DDD``);
- ``add(zone, name, rtype, value, ttl)``: publish one value, return its id;
- ``delete(zone, name, rtype, value)``: remove every record with that value,
  return how many went;
- ``set_ttl(zone, name, rtype, ttl)``: give every record of the set that TTL,
  return how many changed.

Names go in absolute (final dot optional); the clients turn them into what each
API wants. Values go in presentation format, as ``dns_rrset_sync`` has them
(TXT quoted). A TXT character-string longer than 255 octets (RFC 1035 3.3) is
split into strings of 255 octets, the way ``dns_rrset_sync.txt_rdata`` splits
them, so that both compare equal. A value that does not fit its type, and every
refusal of the provider, is a ``ProviderError`` whose message says what the
provider said.

Only the standard library is used, so the clients run on any controller.
Requests time out (``timeout``); a 429 or a 5xx answer is retried up to
``attempts`` times, waiting what the answer's ``Retry-After`` says (RFC 9110
10.2.3) or else 1, 2, 4, ... seconds, never more than ``max_delay`` at once.
A POST (which creates a record) is retried only on 429 and 503, the answers
that say the request was not processed; after another failure the next run
reads the zone again and adds what is still missing.

The API token is sent in a header only: it is never part of an error message
or of a client's repr.

Import from a module as ``from ansible.module_utils.dns_providers import ...``
(``module_utils = module_utils`` in ansible.cfg).
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

# Record types whose data is one domain name.
NAME_TYPES = frozenset({"CNAME", "NS", "PTR", "DNAME"})


class ProviderError(Exception):
    """A request the provider refused or could not answer (a message for fail_json)."""


class Record(NamedTuple):
    """One published value of a record set."""

    value: str
    ttl: int
    id: str


# -- presentation format ---------------------------------------------------------------------


def txt_strings(text: str, *, unquoted_is_one_string: bool = False) -> list[bytes]:
    """The character-strings of a TXT value in presentation format (RFC 1035 5.1).

    Quoted strings may hold spaces; outside quotes, white space separates
    strings. ``\\X`` is X and ``\\DDD`` the octet DDD (decimal). With
    ``unquoted_is_one_string``, a value that does not start with a quote is one
    text, spaces included (how Cloudflare reads such content). Strings longer
    than 255 octets are split into strings of 255 octets. Raises ValueError
    on an unterminated quote or escape.
    """
    if unquoted_is_one_string and not text.strip().startswith('"'):
        return split255([text.strip().encode("utf-8")])
    strings: list[bytes] = []
    current: bytearray | None = None
    quoted = False
    index = 0
    while index < len(text):
        char = text[index]
        index += 1
        if char == "\\":
            if index >= len(text):
                raise ValueError(f"TXT value ends in a backslash: {text!r}")
            if text[index : index + 3].isdigit() and len(text[index : index + 3]) == 3:
                octet = int(text[index : index + 3])
                if octet > 255:
                    raise ValueError(f"\\{text[index : index + 3]} is not an octet")
                data = bytes([octet])
                index += 3
            else:
                data = text[index].encode("utf-8")
                index += 1
            if current is None:
                current = bytearray()
            current += data
        elif char == '"':
            if quoted:
                strings.append(bytes(current or b""))
                current, quoted = None, False
            else:
                if current is not None:
                    strings.append(bytes(current))
                current, quoted = bytearray(), True
        elif char.isspace() and not quoted:
            if current is not None:
                strings.append(bytes(current))
                current = None
        else:
            if current is None:
                current = bytearray()
            current += char.encode("utf-8")
    if quoted:
        raise ValueError(f"TXT value has an unterminated quote: {text!r}")
    if current is not None:
        strings.append(bytes(current))
    return split255(strings or [b""])


def split255(strings: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for data in strings:
        out += [data[start : start + 255] for start in range(0, len(data), 255)] or [b""]
    return out


def txt_text(strings: list[bytes]) -> str:
    """TXT character-strings as dnspython prints them: each quoted, ``"`` and ``\\``
    escaped, octets outside printable ASCII as ``\\DDD``."""
    return " ".join('"' + _escape(data, keep_utf8=False) + '"' for data in strings)


def _escape(data: bytes, *, keep_utf8: bool) -> str:
    """``data`` for inside quotes. With ``keep_utf8``, a string that is valid UTF-8
    keeps its non-ASCII characters as they are (what the provider's UI shows)."""
    if keep_utf8:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return "".join(
                "\\" + c
                if c in '"\\'
                else (f"\\{ord(c):03d}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                for c in text
            )
    out = []
    for octet in data:
        if octet in (0x22, 0x5C):
            out.append("\\" + chr(octet))
        elif 0x20 <= octet < 0x7F:
            out.append(chr(octet))
        else:
            out.append(f"\\{octet:03d}")
    return "".join(out)


def txt_quoted(strings: list[bytes]) -> str:
    """TXT character-strings for an API that takes them quoted, UTF-8 kept."""
    return " ".join('"' + _escape(data, keep_utf8=True) + '"' for data in strings)


def absolute_name(name: str, origin: str = "") -> str:
    """``name`` absolute, lower case, with the final dot (RFC 4343: names compare
    without regard to case). A name without the final dot is relative to
    ``origin`` when one is given (zone-file rules, RFC 1035 5.1), else absolute."""
    name = name.strip()
    origin = origin.strip().rstrip(".").lower()
    if name == "@":
        return (origin + ".") if origin else "."
    if name.endswith(".") or not origin:
        return name.lower().rstrip(".") + "."
    return f"{name.lower()}.{origin}."


def canonical(rtype: str, value: str, origin: str = "") -> str:
    """``value`` of type ``rtype`` in one presentation, for comparing values.

    Domain names in the data are made absolute (relative to ``origin`` when
    given) and lower case; TXT as :func:`txt_text`; IP addresses in their
    shortest form; TLSA data in lower-case hex. Raises ValueError when the
    value does not fit the type.
    """
    rtype = rtype.upper()
    if rtype == "TXT":
        return txt_text(txt_strings(value))
    fields = value.split()
    try:
        if rtype == "A":
            return str(ipaddress.IPv4Address(value.strip()))
        if rtype == "AAAA":
            return ipaddress.IPv6Address(value.strip()).compressed
        if rtype in NAME_TYPES:
            (target,) = fields
            return absolute_name(target, origin)
        if rtype == "MX":
            preference, target = fields
            return f"{int(preference)} {absolute_name(target, origin)}"
        if rtype == "SRV":
            priority, weight, port, target = fields
            return f"{int(priority)} {int(weight)} {int(port)} {absolute_name(target, origin)}"
        if rtype == "TLSA":
            usage, selector, matching, *data = fields
            return f"{int(usage)} {int(selector)} {int(matching)} {''.join(data).lower()}"
        if rtype == "CAA":
            flags, tag, rest = value.split(None, 2)
            return f"{int(flags)} {tag.lower()} {txt_text(txt_strings(rest)[:1])}"
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid {rtype} value: {exc}") from exc
    return " ".join(fields)


def checked_value(provider: str, rtype: str, value: str) -> str:
    """``canonical(rtype, value)``; ProviderError when the value does not fit the type."""
    try:
        return canonical(rtype, value)
    except ValueError as exc:
        raise ProviderError(f"{provider}: {exc}") from None


def relative_name(name: str, zone: str) -> str:
    """``name`` relative to ``zone`` (``@`` for the apex); ProviderError when outside it."""
    full = absolute_name(name).rstrip(".")
    origin = absolute_name(zone).rstrip(".")
    if full == origin:
        return "@"
    if full.endswith("." + origin):
        return full[: -len(origin) - 1]
    raise ProviderError(f"{full} is not in the zone {origin}")


# -- HTTP ------------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib would send the token along to wherever
    the redirect points. The APIs do not redirect; a 3xx is reported as it is."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class JsonApiClient:
    """JSON over HTTPS with a token, timeouts and bounded retries."""

    provider = ""
    default_url = ""

    def __init__(
        self,
        token: str,
        base_url: str = "",
        *,
        timeout: float = 30.0,
        attempts: int = 5,
        max_delay: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        url = (base_url or self.default_url).rstrip("/")
        if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
            raise ProviderError(f"{self.provider}: the API URL must be http(s): {url!r}")
        if not token:
            raise ProviderError(f"{self.provider}: an API token is required")
        self.base_url = url
        self._token = token
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.max_delay = max_delay
        self._sleep = sleep
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._zones: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _headers(self) -> dict[str, str]:
        raise NotImplementedError

    def rrset(self, zone: str, name: str, rtype: str) -> list[Record]:
        raise NotImplementedError

    def _deletions(self, zone: str, name: str, rtype: str, value: str) -> Iterator[tuple[str, str]]:
        """``(record id, what)`` of every record of the set with ``value``, for
        ``delete``: the value compared in canonical form, ``what`` for messages."""
        wanted = checked_value(self.provider, rtype, value)
        origin = absolute_name(zone).rstrip(".")
        for record in self.rrset(zone, name, rtype):
            if record.value == wanted:
                full = absolute_name(name).rstrip(".")
                yield record.id, f"deleting {full} {rtype} {value} from zone {origin}"

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "<token>") if len(self._token) >= 4 else text

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = float(2 ** (attempt - 1))
        if retry_after:
            retry_after = retry_after.strip()
            if retry_after.isdigit():
                delay = float(retry_after)
            else:
                try:
                    moment = email.utils.parsedate_to_datetime(retry_after)
                except (TypeError, ValueError):
                    pass
                else:
                    delay = max(0.0, moment.timestamp() - time.time())
        return min(delay, self.max_delay)

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        what: str,
    ) -> tuple[int, Any]:
        """``(status, decoded JSON or None)``; retries as the module docstring says."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {**self._headers(), "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            attempt += 1
            # The scheme is http(s): __init__ checked the base URL.
            request = urllib.request.Request(  # noqa: S310
                url, data=data, headers=headers, method=method
            )
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    status, raw, retry_after = response.status, response.read(), None
            except urllib.error.HTTPError as exc:
                status, raw = exc.code, exc.read()
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if method == "POST" or attempt >= self.attempts:
                    raise ProviderError(
                        self._scrub(f"{self.provider}: {method} {url} failed ({reason}) {what}")
                    ) from None
                self._sleep(self._delay(attempt, None))
                continue
            retry = status == 429 or (status >= 500 and (method != "POST" or status == 503))
            if retry and attempt < self.attempts:
                self._sleep(self._delay(attempt, retry_after))
                continue
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:
                payload = None
            return status, payload
