"""Client autoconfiguration documents, built from the ``[listen]`` table.

Three documents tell a mail client which servers, ports and TLS modes to use:

- :func:`thunderbird`: Mozilla's autoconfig XML, fetched by Thunderbird (and
  Evolution, KMail, K-9/Thunderbird for Android, ...) from
  ``https://autoconfig.<domain>/mail/config-v1.1.xml`` and
  ``https://<domain>/.well-known/autoconfig/mail/config-v1.1.xml``;
- :func:`autodiscover`: the answer to Outlook's "plain old XML" (POX)
  autodiscover request, ``POST /autodiscover/autodiscover.xml`` on
  ``autodiscover.<domain>``;
- :func:`mobileconfig`: an Apple configuration profile with a Mail payload,
  which a logged-in user downloads and installs on macOS or iOS.

Everything here is a pure function of its arguments: no sockets, files or
clocks. Inputs that come from HTTP clients (an address, a domain, a request
body) are validated here; bad input raises :class:`BadInput` (the caller
answers 400), a server that offers nothing a client could use raises
:class:`NotOffered` (the caller answers 404). :func:`autodiscover` never
raises: it returns the status, body and content type to send.

All XML is built with ``xml.etree.ElementTree`` or ``plistlib``, which escape
what they write; nothing untrusted is formatted into markup by hand. Text
that XML 1.0 cannot carry at all (control characters) is refused first.

Ordering: implicit TLS before STARTTLS for each protocol, as rfc8314:3
recommends implicit TLS for submission and mail access; IMAP before POP3.
Plaintext is never offered; port 25 ("smtp") is for other MTAs, not clients.
"""

from __future__ import annotations

import plistlib
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from xml.parsers import expat

from estafeta.address import AddressError, normalize_address, normalize_domain

if TYPE_CHECKING:
    from estafeta.config import Endpoint

Protocol = Literal["imap", "pop3", "smtp", "managesieve"]
TLSMode = Literal["implicit", "starttls"]

# What each [listen] key offers to clients, in order of preference
# (rfc8314:3: implicit TLS first). "smtp" (port 25, MX), "http" and "https"
# are deliberately absent: they are not client mail services.
_LISTENERS: tuple[tuple[str, Protocol, TLSMode], ...] = (
    ("imaps", "imap", "implicit"),  # rfc8314:3.3, port 993
    ("imap", "imap", "starttls"),  # rfc9051:6.2.1 / rfc2595, port 143
    ("pop3s", "pop3", "implicit"),  # rfc8314:3.3, port 995
    ("pop3", "pop3", "starttls"),  # rfc2595:4, port 110
    ("submissions", "smtp", "implicit"),  # rfc8314:3.3, port 465
    ("submission", "smtp", "starttls"),  # rfc6409 + rfc3207, port 587
    ("managesieve", "managesieve", "starttls"),  # rfc5804:2.2, port 4190
)

# Content types for the caller's response headers.
# draft-ietf-mailmaint-autoconfig, "Data format": "The MIME type is text/xml".
THUNDERBIRD_CONTENT_TYPE = "text/xml; charset=utf-8"
# Exchange answers POX autodiscover as text/xml too.
AUTODISCOVER_CONTENT_TYPE = "text/xml; charset=utf-8"
# The media type Apple devices open as a profile (the usual choice of servers
# that hand out .mobileconfig files; served as text/plain, iOS shows text).
MOBILECONFIG_CONTENT_TYPE = "application/x-apple-aspen-config"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"

# Bounds for the autodiscover request: a real one is about 400 bytes.
MAX_AUTODISCOVER_BODY = 64 * 1024
_MAX_DEPTH = 8
_MAX_ELEMENTS = 64
_MAX_TEXT = 1024

_MAX_EMAIL_INPUT = 320  # 64 + 1 + 255: anything longer is not an address
_MAX_DOMAIN_INPUT = 260
_MAX_DISPLAY_NAME = 200

# XML 1.0 section 2.2 Char: everything else cannot appear in a document, not
# even escaped; ElementTree would write it raw and produce broken XML.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class BadInput(ValueError):
    """An address, domain or name from a client that is not acceptable (400)."""


class NotOffered(LookupError):
    """The listeners offer nothing this document could describe (404)."""


@dataclass(frozen=True)
class Service:
    """One way for a client to reach one protocol."""

    protocol: Protocol
    host: str
    port: int
    tls: TLSMode
    listener: str  # the [listen] key it came from

    @property
    def implicit_tls(self) -> bool:
        return self.tls == "implicit"


@dataclass(frozen=True)
class ClientSettings:
    """What clients are told: the host name and every offered service."""

    hostname: str
    # The provider's name as clients show it; None: the mail domain.
    display_name: str | None
    # Most preferred first within each protocol.
    services: tuple[Service, ...]

    @classmethod
    def from_listen(
        cls,
        hostname: str,
        listen: Mapping[str, Sequence[Endpoint]],
        display_name: str | None = None,
        *,
        starttls: bool = True,
    ) -> ClientSettings:
        """Settings from the ``[listen]`` table (``Config.listen``).

        Each listener is described by the port of its first endpoint, at
        ``hostname`` (the name in the server's certificate: the bind address
        may be a wildcard or private). ``starttls=False`` (no ``[tls]``
        configured) leaves the STARTTLS listeners out: they would be
        plaintext, and clients are never told to send passwords in clear.
        Unknown keys are ignored. Raises ValueError for a bad host name.
        """
        host = normalize_domain(hostname)
        if display_name is not None:
            display_name = _check_text(display_name, "display name", _MAX_DISPLAY_NAME)
        services = []
        for key, protocol, tls in _LISTENERS:
            endpoints = listen.get(key)
            if not endpoints or (tls == "starttls" and not starttls):
                continue
            port = endpoints[0].port
            if not 0 < port < 65536:
                raise ValueError(f"listen.{key}: port {port} is out of range")
            services.append(Service(protocol, host, port, tls, key))
        return cls(hostname=host, display_name=display_name, services=tuple(services))

    def offered(self, protocol: Protocol) -> tuple[Service, ...]:
        return tuple(s for s in self.services if s.protocol == protocol)

    @property
    def incoming(self) -> tuple[Service, ...]:
        """IMAP services, then POP3 services."""
        return self.offered("imap") + self.offered("pop3")

    @property
    def outgoing(self) -> tuple[Service, ...]:
        return self.offered("smtp")


# -- input validation ---------------------------------------------------------


def _check_text(text: str, what: str, limit: int) -> str:
    if len(text) > limit:
        raise BadInput(f"{what} longer than {limit} characters")
    bad = _NOT_XML_CHAR.search(text)
    if bad or any(ch in text for ch in "\r\n\t"):
        raise BadInput(f"{what} holds a control character")
    return text


def validate_domain(domain: str) -> str:
    """The A-label form of a mail domain from a client; raises BadInput.

    rfc1123:2.1 / rfc5321:4.1.2 host names: letters, digits and hyphens in
    labels of 1 to 63 octets, at most 253 octets, at least two labels.
    """
    if not isinstance(domain, str) or len(domain) > _MAX_DOMAIN_INPUT:
        raise BadInput("not a valid domain")
    try:
        ascii_domain = normalize_domain(domain)
    except AddressError as exc:
        raise BadInput(f"not a valid domain: {exc}") from None
    if "." not in ascii_domain:
        raise BadInput("not a valid domain: a mail domain has at least two labels")
    return ascii_domain


def validate_email(email: str) -> str:
    """The canonical ``local@domain`` of an address from a client; raises BadInput.

    Only a dot-atom local part (rfc5321:4.1.2 Dot-string) is accepted: a
    quoted local part is valid SMTP but never a login name here.
    """
    if not isinstance(email, str) or len(email) > _MAX_EMAIL_INPUT:
        raise BadInput("not a valid email address")
    try:
        canonical = normalize_address(email.strip())
    except AddressError as exc:
        raise BadInput(f"not a valid email address: {exc}") from None
    local, _, domain = canonical.rpartition("@")
    if local.startswith('"'):
        raise BadInput("not a valid email address: quoted local parts are not accepted")
    validate_domain(domain)
    _check_text(canonical, "email address", _MAX_EMAIL_INPUT)
    return canonical


def _serialize(root: ET.Element) -> bytes:
    ET.indent(root)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body


def _sub(parent: ET.Element, tag: str, text: str | int) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = str(text)
    return element


# -- Thunderbird autoconfig ---------------------------------------------------
#
# Format: https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat
# (version 1.1) and draft-ietf-mailmaint-autoconfig (version 1.2, which keeps
# 1.1 compatible). What Thunderbird accepts is what its parser reads:
# comm-central mail/components/accountcreation/modules/readFromXML.sys.mjs:
# - only clientConfig/emailProvider is read; <emailProvider id> and each
#   <domain> go through Sanitizer.hostname (ASCII letters, digits, "-", ".";
#   no IDN), so A-labels are written;
# - incomingServer type must be one of pop3, imap, nntp, exchange; the first
#   valid one is used, later ones become alternatives;
# - outgoingServer type must be smtp;
# - socketType: "plain", "SSL" (TLS from the first byte) or "STARTTLS";
# - authentication: "password-cleartext" is SASL PLAIN/LOGIN or the
#   protocol's own login, here always inside TLS;
# - username may be a placeholder: %EMAILADDRESS% is the address the user
#   typed;
# - the file is rejected without at least one valid incoming and one valid
#   outgoing server, hence NotOffered.
#
# ManageSieve: Thunderbird has no Sieve support and reads nothing for it.
# draft-ietf-mailmaint-autoconfig section "type" registers
# <setupServer type="managesieve"> as a child of <clientConfig> (its RELAX NG
# grammar: clientConfig = (emailProvider | ... | setupServer | ...)*), beside
# <emailProvider>, where readFromXML never looks; it is written when a
# managesieve listener exists, for clients that implement the draft.

_SOCKET_TYPE: dict[TLSMode, str] = {"implicit": "SSL", "starttls": "STARTTLS"}


def _server(parent: ET.Element, tag: str, service: Service, type_: str) -> None:
    element = ET.SubElement(parent, tag, type=type_)
    _sub(element, "hostname", service.host)
    _sub(element, "port", service.port)
    _sub(element, "socketType", _SOCKET_TYPE[service.tls])
    _sub(element, "username", "%EMAILADDRESS%")
    _sub(element, "authentication", "password-cleartext")


def thunderbird(settings: ClientSettings, domain: str, email: str | None = None) -> bytes:
    """The ``config-v1.1.xml`` document for ``domain``.

    ``domain`` comes from the Host header (``autoconfig.<domain>``) or the
    URL; ``email`` from the ``emailaddress`` query parameter when the client
    sent one: it must be an address in ``domain``. The document names no
    user (``%EMAILADDRESS%`` is filled in by the client). Raises BadInput or
    NotOffered. The caller checks that ``domain`` is one of ours.
    """
    domain = validate_domain(domain)
    if email is not None:
        address = validate_email(email)
        if address.rpartition("@")[2] != domain:
            raise BadInput("the email address is not in this domain")
    incoming, outgoing = settings.incoming, settings.outgoing
    if not incoming or not outgoing:
        raise NotOffered("no IMAP or POP3 listener, or no submission listener")

    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    _sub(provider, "domain", domain)
    _sub(provider, "displayName", settings.display_name or domain)
    _sub(provider, "displayShortName", domain)
    for service in incoming:
        _server(provider, "incomingServer", service, service.protocol)
    for service in outgoing:
        _server(provider, "outgoingServer", service, "smtp")
    for service in settings.offered("managesieve"):
        _server(root, "setupServer", service, "managesieve")
    return _serialize(root)


# -- Outlook POX autodiscover -------------------------------------------------
#
# Request (https://learn.microsoft.com/en-us/exchange/client-developer/
# web-service-reference/pox-autodiscover-request-for-exchange):
#   <Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/
#                        outlook/requestschema/2006">
#     <Request>
#       <EMailAddress>user@contoso.com</EMailAddress>
#       <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/
#         autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
#     </Request>
#   </Autodiscover>
# (Microsoft's pages print the namespaces with https://; Outlook sends
# http://. Both are accepted; elements are matched by local name.)
#
# Response: Autodiscover (ns responseschema/2006) / Response (ns
# outlook/responseschema/2006a) / Account / AccountType "email", Action
# "settings", one Protocol per protocol ("Account (POX)", "Protocol (POX)"
# in the same reference). Protocol children used here:
# - Type: IMAP, POP3 or SMTP (the Internet-protocol types of [MS-OXDSCLI]
#   Protocol, section 2.2.3.1.1.2.5 in its 2009 edition; the Exchange POX
#   pages list only the Exchange types EXCH, EXPR, EXHTTP, WEB);
# - Server, Port; LoginName (the login, the full address); DomainRequired
#   "off" (no DOMAIN\user);
# - SPA "off": Secure Password Authentication is Microsoft's NTLM, which we do
#   not offer, and SPA defaults to on ("SPA (POX)");
# - SSL "on": "specifies whether secure logon is required", default on
#   ("SSL (POX)"); AuthRequired "on" ("AuthRequired (POX)");
# - Encryption: None, SSL, TLS or Auto; when present it overrides SSL
#   ([MS-OXDSCLI]; the Outlook 2010 planning guide cc511507(v=office.14),
#   "The Autodiscover XML schema"). As in Outlook's account dialog, "SSL" is
#   TLS from the first byte and "TLS" is STARTTLS, which is how most
#   published autodiscover.xml templates use it (port 587 with "TLS"). mox
#   and Stalwart write "TLS" for implicit TLS instead: if Outlook is seen
#   to fail on 465/993, this mapping is the first thing to check.
# Errors (https://learn.microsoft.com/en-us/openspecs/exchange_server_protocols/
# ms-oxdscli/713ef4f4-83b2-4375-9d64-60c97ee5b166, ErrorCode): 500 the address
# cannot be found, 600 invalid request, 601 no configuration of the requested
# type. A request that is not well-formed, too large or unsafe gets a plain
# HTTP 400 (or 413) instead: it is not an autodiscover client talking.

_RESPONSE_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
_OUTLOOK_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
_ACCEPTED_SCHEMAS = frozenset({_OUTLOOK_SCHEMA, _OUTLOOK_SCHEMA.replace("http://", "https://", 1)})
_POX_TYPE: dict[Protocol, str] = {"imap": "IMAP", "pop3": "POP3", "smtp": "SMTP"}
_ENCRYPTION: dict[TLSMode, str] = {"implicit": "SSL", "starttls": "TLS"}


class _Refused(Exception):
    """The request body is unsafe or malformed; the message says why."""


@dataclass
class _PoxRequest:
    email: str | None = None
    schema: str | None = None


def _parse_pox(body: bytes) -> _PoxRequest:
    """EMailAddress and AcceptableResponseSchema from a POX request.

    expat with every DTD feature refused: a DOCTYPE (which is where entities,
    internal or external, would be declared: billion laughs, XXE) ends the
    parse; without one, expat knows only the five predefined entities and
    character references, and an undefined entity is a parse error. Depth,
    element count and text size are bounded.
    """
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    request = _PoxRequest()
    path: list[str] = []
    text: list[str] = []
    count = 0

    def refuse_doctype(*_: object) -> None:
        raise _Refused("DOCTYPE and entity declarations are not accepted")

    def refuse_external(*_: object) -> int:
        raise _Refused("external entities are not accepted")

    def start(name: str, _attrs: object) -> None:
        nonlocal count
        count += 1
        if count > _MAX_ELEMENTS or len(path) >= _MAX_DEPTH:
            raise _Refused("too many or too deeply nested elements")
        local = name.rpartition(" ")[2]
        if not path and local != "Autodiscover":
            raise _Refused("the root element is not Autodiscover")
        path.append(local)
        text.clear()

    def characters(data: str) -> None:
        if sum(map(len, text)) + len(data) > _MAX_TEXT:
            raise _Refused("element text too long")
        text.append(data)

    def end(_name: str) -> None:
        if path[1:] == ["Request", "EMailAddress"]:
            if request.email is not None:
                raise _Refused("more than one EMailAddress")
            request.email = "".join(text).strip()
        elif path[1:] == ["Request", "AcceptableResponseSchema"]:
            if request.schema is not None:
                raise _Refused("more than one AcceptableResponseSchema")
            request.schema = "".join(text).strip()
        path.pop()
        text.clear()

    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_doctype
    parser.ExternalEntityRefHandler = refuse_external
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    try:
        parser.Parse(bytes(body), True)
    except expat.ExpatError as exc:
        raise _Refused(f"not well-formed XML ({expat.ErrorString(exc.code)})") from None
    return request


def _pox_error(code: int, message: str, response_ns: str | None) -> tuple[int, bytes, str]:
    root = ET.Element("Autodiscover", xmlns=_RESPONSE_SCHEMA)
    response = ET.SubElement(root, "Response")
    if response_ns is not None:
        response.set("xmlns", response_ns)
    error = ET.SubElement(response, "Error")
    _sub(error, "ErrorCode", code)
    _sub(error, "Message", message)
    ET.SubElement(error, "DebugData")
    return 200, _serialize(root), AUTODISCOVER_CONTENT_TYPE


def _bad_request(reason: str, status: int = 400) -> tuple[int, bytes, str]:
    return status, f"bad autodiscover request: {reason}\n".encode(), TEXT_CONTENT_TYPE


def autodiscover(
    settings: ClientSettings,
    request_body: bytes,
    *,
    domains: Collection[str] | None = None,
) -> tuple[int, bytes, str]:
    """Answer an Outlook POX autodiscover request: (status, body, content type).

    Never raises. 413 for a body over MAX_AUTODISCOVER_BODY, 400 with a
    short text for anything that is not a well-formed, safe POX request with
    a valid address; 200 with a POX Error for an unsupported response schema
    (601), an address outside ``domains`` when given (500), or no usable
    listener (601); 200 with the settings otherwise.
    """
    if len(request_body) > MAX_AUTODISCOVER_BODY:
        return _bad_request(f"body larger than {MAX_AUTODISCOVER_BODY} bytes", 413)
    try:
        request = _parse_pox(request_body)
    except _Refused as exc:
        return _bad_request(str(exc))
    except (ValueError, TypeError):  # not bytes, or nothing expat can decode
        return _bad_request("unreadable XML")
    if request.schema is None:
        return _bad_request("no AcceptableResponseSchema")
    if request.schema not in _ACCEPTED_SCHEMAS:
        return _pox_error(601, "Requested schema version not supported", None)
    if not request.email:
        return _bad_request("no EMailAddress (LegacyDN is not supported)")
    try:
        email = validate_email(request.email)
    except BadInput as exc:
        return _bad_request(str(exc))
    if domains is not None and email.rpartition("@")[2] not in domains:
        return _pox_error(500, "The email address cannot be found", _OUTLOOK_SCHEMA)

    if not settings.incoming or not settings.outgoing:
        return _pox_error(601, "No mail configuration is offered", _OUTLOOK_SCHEMA)
    # One Protocol per Type, the preferred service of each.
    protocols = [s[0] for s in (settings.offered(p) for p in _POX_TYPE) if s]
    root = ET.Element("Autodiscover", xmlns=_RESPONSE_SCHEMA)
    response = ET.SubElement(root, "Response", xmlns=_OUTLOOK_SCHEMA)
    account = ET.SubElement(response, "Account")
    _sub(account, "AccountType", "email")
    _sub(account, "Action", "settings")
    for service in protocols:
        protocol = ET.SubElement(account, "Protocol")
        _sub(protocol, "Type", _POX_TYPE[service.protocol])
        _sub(protocol, "Server", service.host)
        _sub(protocol, "Port", service.port)
        _sub(protocol, "LoginName", email)
        _sub(protocol, "DomainRequired", "off")
        _sub(protocol, "SPA", "off")
        _sub(protocol, "SSL", "on")
        _sub(protocol, "Encryption", _ENCRYPTION[service.tls])
        _sub(protocol, "AuthRequired", "on")
    return 200, _serialize(root), AUTODISCOVER_CONTENT_TYPE


# -- Apple configuration profile ----------------------------------------------
#
# Keys: Apple's "Mail" payload, type com.apple.mail.managed
# (https://developer.apple.com/documentation/devicemanagement/mail, source
# apple/device-management mdm/profiles/com.apple.mail.managed.yaml):
# EmailAccountType (required: EmailTypeIMAP or EmailTypePOP),
# Incoming/OutgoingMailServerAuthentication (required; EmailAuthPassword),
# Incoming/OutgoingMailServerHostName (required), ...PortNumber,
# ...UseSSL, ...Username, OutgoingPasswordSameAsIncomingPassword (ask once, on
# interactive installs), EmailAddress, EmailAccountName (the name shown in
# sent mail), EmailAccountDescription. The top level is a profile with
# PayloadType "Configuration", PayloadVersion 1, PayloadIdentifier and
# PayloadUUID; installing a profile with the same identifier replaces the
# earlier one, so both are derived (uuid5) from the host name and address.
# The profile carries no password (IncomingPassword is "only for encrypted
# profiles"); the device asks for it.
#
# UseSSL: Apple only says "enables SSL". It is true for STARTTLS services
# too: a STARTTLS listener here refuses AUTH before TLS, and Mail-in-a-Box's
# profile (conf/ios-profile.xml) sets OutgoingMailServerUseSSL true with port
# 587, which Apple Mail uses with STARTTLS.


def mobileconfig(settings: ClientSettings, email: str, display_name: str) -> bytes:
    """A ``.mobileconfig`` profile for ``email`` (the logged-in user).

    ``display_name`` is the user's name for sent mail ("" for none). The
    first IMAP service is used, else the first POP3 service; the first
    submission service for sending. Raises BadInput or NotOffered.
    """
    address = validate_email(email)
    name = _check_text(display_name, "display name", _MAX_DISPLAY_NAME).strip()
    incoming, outgoing = settings.incoming, settings.outgoing
    if not incoming or not outgoing:
        raise NotOffered("no IMAP or POP3 listener, or no submission listener")
    receive, send = incoming[0], outgoing[0]

    # Stable per (host name, address): the same profile downloaded again
    # replaces the installed one instead of adding a second account.
    host_namespace = uuid.uuid5(uuid.NAMESPACE_DNS, settings.hostname)
    profile_uuid = str(uuid.uuid5(host_namespace, f"{address}\nprofile")).upper()
    mail_uuid = str(uuid.uuid5(host_namespace, f"{address}\nmail")).upper()
    prefix = ".".join(reversed(settings.hostname.split("."))) + ".estafeta"
    profile_id = f"{prefix}.profile.{profile_uuid}"

    mail: dict[str, object] = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{profile_id}.mail",
        "PayloadUUID": mail_uuid,
        "PayloadDisplayName": f"Mail: {address}",
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP" if receive.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerHostName": receive.host,
        "IncomingMailServerPortNumber": receive.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerUsername": address,
        "OutgoingMailServerHostName": send.host,
        "OutgoingMailServerPortNumber": send.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    if name:
        mail["EmailAccountName"] = name
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": profile_id,
        "PayloadUUID": profile_uuid,
        "PayloadDisplayName": f"{settings.display_name or settings.hostname}: {address}",
        "PayloadDescription": f"Mail settings for {address} on {settings.hostname}",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [mail],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)
