"""Client autoconfiguration documents (estafeta.web.clientconfig).

Every document is parsed back (ElementTree, plistlib) and the servers, ports
and TLS modes are compared exactly, for several sets of listeners. The
Thunderbird output is also checked against the rules of Thunderbird's own
reader (comm-central readFromXML.sys.mjs), restated in ``_thunderbird_read``.
"""

from __future__ import annotations

import plistlib
import re
import xml.etree.ElementTree as ET

import pytest

from estafeta.config import Endpoint
from estafeta.web import clientconfig
from estafeta.web.clientconfig import (
    AUTODISCOVER_CONTENT_TYPE,
    MAX_AUTODISCOVER_BODY,
    BadInput,
    ClientSettings,
    NotOffered,
    Service,
    autodiscover,
    mobileconfig,
    thunderbird,
)

HOST = "mx1.example.test"
DOMAIN = "example.test"
EMAIL = "alice@example.test"

ALL = {
    "smtp": 25,
    "submission": 587,
    "submissions": 465,
    "imap": 143,
    "imaps": 993,
    "pop3": 110,
    "pop3s": 995,
    "managesieve": 4190,
    "http": 80,
    "https": 443,
}
IMPLICIT_ONLY = {"imaps": 993, "submissions": 465}
STARTTLS_ONLY = {"imap": 143, "pop3": 110, "submission": 587, "smtp": 25}
NO_POP3 = {"imaps": 993, "imap": 143, "submissions": 465, "submission": 587}


def listen(ports: dict[str, int]) -> dict[str, tuple[Endpoint, ...]]:
    # A second endpoint on another port: only the first one is described.
    return {
        key: (Endpoint("::", port), Endpoint("127.0.0.1", port + 10000))
        for key, port in ports.items()
    }


def settings(ports: dict[str, int], display_name: str | None = None) -> ClientSettings:
    return ClientSettings.from_listen(HOST, listen(ports), display_name)


def parse_xml(body: bytes) -> ET.Element:
    # Our own output, never a DOCTYPE (asserted first), so nothing to expand.
    assert b"<!DOCTYPE" not in body
    return ET.fromstring(body)  # noqa: S314


# -- ClientSettings -----------------------------------------------------------


def test_from_listen_orders_implicit_tls_first_and_skips_mx_and_http() -> None:
    s = settings(ALL)
    assert [(x.protocol, x.port, x.tls, x.listener) for x in s.services] == [
        ("imap", 993, "implicit", "imaps"),
        ("imap", 143, "starttls", "imap"),
        ("pop3", 995, "implicit", "pop3s"),
        ("pop3", 110, "starttls", "pop3"),
        ("smtp", 465, "implicit", "submissions"),
        ("smtp", 587, "starttls", "submission"),
        ("managesieve", 4190, "starttls", "managesieve"),
    ]
    assert {x.host for x in s.services} == {HOST}
    assert all(x.port != 25 for x in s.services)


def test_from_listen_normalises_the_host_name() -> None:
    s = ClientSettings.from_listen("MX1.Example.TEST.", listen(IMPLICIT_ONLY))
    assert s.hostname == HOST
    assert s.services[0] == Service("imap", HOST, 993, "implicit", "imaps")


def test_from_listen_without_tls_offers_no_starttls_listener() -> None:
    s = ClientSettings.from_listen(HOST, listen(ALL), starttls=False)
    assert [x.listener for x in s.services] == ["imaps", "pop3s", "submissions"]


@pytest.mark.parametrize("hostname", ["", "bad host", "a..b", "x" * 64 + ".test"])
def test_from_listen_refuses_a_bad_host_name(hostname: str) -> None:
    with pytest.raises(ValueError):
        ClientSettings.from_listen(hostname, listen(ALL))


# -- Thunderbird ----------------------------------------------------------------

_HOSTNAME = re.compile(r"^[a-z0-9.-]+$")


def _thunderbird_read(body: bytes) -> dict[str, object]:
    """What Thunderbird's readFromXML would take from the document, or an
    AssertionError where it would throw."""
    root = parse_xml(body)
    assert root.tag == "clientConfig"
    provider = root.find("emailProvider")
    assert provider is not None, "no emailProvider: Thunderbird throws"
    assert _HOSTNAME.match(provider.get("id", ""))
    domains = [d.text or "" for d in provider.findall("domain")]
    assert domains and all(_HOSTNAME.match(d) for d in domains)

    def server(element: ET.Element, auths: set[str]) -> tuple[str, str, int, str, str, str]:
        hostname = element.findtext("hostname", "")
        port = int(element.findtext("port", "0"))
        socket_type = element.findtext("socketType", "")
        username = element.findtext("username")
        auth = element.findtext("authentication", "")
        assert _HOSTNAME.match(hostname)
        assert 1 <= port <= 65535
        assert socket_type in ("plain", "SSL", "STARTTLS")
        assert username is not None
        assert auth in auths
        return (element.get("type", ""), hostname, port, socket_type, username, auth)

    incoming = []
    for element in provider.findall("incomingServer"):
        assert element.get("type") in ("pop3", "imap", "nntp", "exchange")
        incoming.append(server(element, {"password-cleartext", "password-encrypted"}))
    outgoing = []
    for element in provider.findall("outgoingServer"):
        assert element.get("type") == "smtp"
        outgoing.append(server(element, {"password-cleartext", "password-encrypted", "none"}))
    assert incoming, "no incomingServer: Thunderbird throws"
    assert outgoing, "no outgoingServer: Thunderbird throws"
    return {
        "version": root.get("version"),
        "id": provider.get("id"),
        "domains": domains,
        "displayName": provider.findtext("displayName"),
        "displayShortName": provider.findtext("displayShortName"),
        "incoming": [(t, p, s) for t, _, p, s, _, _ in incoming],
        "outgoing": [(p, s) for _, _, p, s, _, _ in outgoing],
        "hosts": {h for _, h, *_ in incoming + outgoing},
        "usernames": {u for *_, u, _ in incoming + outgoing},
        "auth": {a for *_, a in incoming + outgoing},
        "setup": [
            (e.get("type"), int(e.findtext("port", "0")), e.findtext("socketType"))
            for e in root.findall("setupServer")
        ],
    }


@pytest.mark.parametrize(
    ("ports", "incoming", "outgoing", "setup"),
    [
        (
            ALL,
            [
                ("imap", 993, "SSL"),
                ("imap", 143, "STARTTLS"),
                ("pop3", 995, "SSL"),
                ("pop3", 110, "STARTTLS"),
            ],
            [(465, "SSL"), (587, "STARTTLS")],
            [("managesieve", 4190, "STARTTLS")],
        ),
        (IMPLICIT_ONLY, [("imap", 993, "SSL")], [(465, "SSL")], []),
        (
            STARTTLS_ONLY,
            [("imap", 143, "STARTTLS"), ("pop3", 110, "STARTTLS")],
            [(587, "STARTTLS")],
            [],
        ),
        (
            NO_POP3,
            [("imap", 993, "SSL"), ("imap", 143, "STARTTLS")],
            [(465, "SSL"), (587, "STARTTLS")],
            [],
        ),
    ],
    ids=["all", "implicit-only", "starttls-only", "no-pop3"],
)
def test_thunderbird_servers_ports_and_socket_types(
    ports: dict[str, int],
    incoming: list[tuple[str, int, str]],
    outgoing: list[tuple[int, str]],
    setup: list[tuple[str, int, str]],
) -> None:
    read = _thunderbird_read(thunderbird(settings(ports), DOMAIN, EMAIL))
    assert read["version"] == "1.1"
    assert read["id"] == DOMAIN
    assert read["domains"] == [DOMAIN]
    assert read["displayName"] == DOMAIN
    assert read["displayShortName"] == DOMAIN
    assert read["incoming"] == incoming
    assert read["outgoing"] == outgoing
    assert read["setup"] == setup
    assert read["hosts"] == {HOST}
    assert read["usernames"] == {"%EMAILADDRESS%"}
    assert read["auth"] == {"password-cleartext"}


def test_thunderbird_writes_a_labels_for_an_idn_domain() -> None:
    read = _thunderbird_read(thunderbird(settings(ALL), "BÜCHER.example"))
    assert read["id"] == "xn--bcher-kva.example"
    assert read["domains"] == ["xn--bcher-kva.example"]


def test_thunderbird_escapes_the_display_name() -> None:
    name = 'Ex & <Co> "mail" ]]>'
    body = thunderbird(settings(ALL, display_name=name), DOMAIN)
    assert b"<Co>" not in body
    assert _thunderbird_read(body)["displayName"] == name


@pytest.mark.parametrize(
    "ports",
    [{"imaps": 993}, {"submissions": 465}, {"smtp": 25, "managesieve": 4190}, {}],
    ids=["no-outgoing", "no-incoming", "mx-and-sieve-only", "nothing"],
)
def test_thunderbird_not_offered_without_incoming_and_outgoing(ports: dict[str, int]) -> None:
    with pytest.raises(NotOffered):
        thunderbird(settings(ports), DOMAIN)


@pytest.mark.parametrize(
    "domain",
    [
        "",
        "localhost",
        'example.test"><x',
        "exa mple.test",
        "-a.test",
        "a" * 64 + ".test",
        "[127.0.0.1]",
    ],
)
def test_thunderbird_refuses_a_bad_domain(domain: str) -> None:
    with pytest.raises(BadInput):
        thunderbird(settings(ALL), domain)


@pytest.mark.parametrize(
    "email",
    [
        "<script>@example.test",
        '"<x>&"@example.test',
        "alice@example.test<x>",
        "alice@example.test\r\nX: y",
        "alice",
        "a@b@example.test",
        "x" * 65 + "@example.test",
        "a@" + "b" * 300 + ".test",
        "alice@other.test",
    ],
)
def test_thunderbird_refuses_a_hostile_or_foreign_email(email: str) -> None:
    with pytest.raises(BadInput):
        thunderbird(settings(ALL), DOMAIN, email)


# -- Outlook autodiscover -------------------------------------------------------

REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
OUTLOOK_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"


def outlook_request(
    email: str = EMAIL, schema: str = OUTLOOK_SCHEMA, ns: str = REQUEST_NS
) -> bytes:
    # The shape of Microsoft's "POX Autodiscover request for Exchange" example.
    return (
        '<?xml version="1.0" encoding="utf-8"?>\r\n'
        f'<Autodiscover xmlns="{ns}">\r\n'
        "  <Request>\r\n"
        f"    <EMailAddress>{email}</EMailAddress>\r\n"
        f"    <AcceptableResponseSchema>{schema}</AcceptableResponseSchema>\r\n"
        "  </Request>\r\n"
        "</Autodiscover>\r\n"
    ).encode()


def _protocols(body: bytes) -> list[dict[str, str]]:
    root = parse_xml(body)
    assert root.tag == f"{{{RESPONSE_NS}}}Autodiscover"
    assert root.find(f"{{{RESPONSE_NS}}}Response") is None
    response = root.find(f"{{{OUTLOOK_SCHEMA}}}Response")
    assert response is not None
    account = response.find(f"{{{OUTLOOK_SCHEMA}}}Account")
    assert account is not None
    assert account.findtext(f"{{{OUTLOOK_SCHEMA}}}AccountType") == "email"
    assert account.findtext(f"{{{OUTLOOK_SCHEMA}}}Action") == "settings"
    return [
        {child.tag.rpartition("}")[2]: child.text or "" for child in protocol}
        for protocol in account.findall(f"{{{OUTLOOK_SCHEMA}}}Protocol")
    ]


def _error_code(body: bytes) -> str | None:
    root = parse_xml(body)
    assert root.tag == f"{{{RESPONSE_NS}}}Autodiscover"
    for error in root.iter():
        if error.tag.endswith("}ErrorCode"):
            return error.text
    return None


def _expected(type_: str, port: int, encryption: str, login: str = EMAIL) -> dict[str, str]:
    return {
        "Type": type_,
        "Server": HOST,
        "Port": str(port),
        "LoginName": login,
        "DomainRequired": "off",
        "SPA": "off",
        "SSL": "on",
        "Encryption": encryption,
        "AuthRequired": "on",
    }


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        (ALL, [("IMAP", 993, "SSL"), ("POP3", 995, "SSL"), ("SMTP", 465, "SSL")]),
        (IMPLICIT_ONLY, [("IMAP", 993, "SSL"), ("SMTP", 465, "SSL")]),
        (STARTTLS_ONLY, [("IMAP", 143, "TLS"), ("POP3", 110, "TLS"), ("SMTP", 587, "TLS")]),
        (NO_POP3, [("IMAP", 993, "SSL"), ("SMTP", 465, "SSL")]),
    ],
    ids=["all", "implicit-only", "starttls-only", "no-pop3"],
)
def test_autodiscover_answers_an_outlook_request(
    ports: dict[str, int], expected: list[tuple[str, int, str]]
) -> None:
    status, body, content_type = autodiscover(settings(ports), outlook_request())
    assert (status, content_type) == (200, AUTODISCOVER_CONTENT_TYPE)
    assert _protocols(body) == [_expected(*e) for e in expected]


def test_autodiscover_accepts_the_https_namespaces_of_microsofts_pages() -> None:
    request = outlook_request(
        schema=OUTLOOK_SCHEMA.replace("http:", "https:"), ns=REQUEST_NS.replace("http:", "https:")
    )
    status, body, _ = autodiscover(settings(ALL), request)
    assert status == 200
    assert [p["Type"] for p in _protocols(body)] == ["IMAP", "POP3", "SMTP"]


def test_autodiscover_normalises_and_escapes_the_login_name() -> None:
    status, body, _ = autodiscover(settings(NO_POP3), outlook_request(" A&amp;B@Example.TEST "))
    assert status == 200
    assert b"<LoginName>a&amp;b@example.test</LoginName>" in body
    assert {p["LoginName"] for p in _protocols(body)} == {"a&b@example.test"}


def test_autodiscover_reads_a_utf16_request() -> None:
    text = outlook_request().decode().replace('encoding="utf-8"', 'encoding="utf-16"')
    status, body, _ = autodiscover(settings(ALL), text.encode("utf-16"))
    assert status == 200
    assert _protocols(body)[0]["LoginName"] == EMAIL


def test_autodiscover_answers_an_unknown_domain_with_error_500() -> None:
    status, body, _ = autodiscover(
        settings(ALL), outlook_request("bob@elsewhere.test"), domains={DOMAIN}
    )
    assert status == 200
    assert _error_code(body) == "500"
    status, body, _ = autodiscover(settings(ALL), outlook_request(), domains={DOMAIN})
    assert status == 200
    assert _error_code(body) is None


def test_autodiscover_answers_a_wrong_schema_with_error_601() -> None:
    mobilesync = "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
    status, body, content_type = autodiscover(settings(ALL), outlook_request(schema=mobilesync))
    assert (status, content_type) == (200, AUTODISCOVER_CONTENT_TYPE)
    assert _error_code(body) == "601"
    assert b"<Protocol>" not in body


def test_autodiscover_without_mail_listeners_answers_error_601() -> None:
    status, body, _ = autodiscover(settings({"imaps": 993}), outlook_request())
    assert status == 200
    assert _error_code(body) == "601"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Autodiscover><Request><EMailAddress>&lol9;@example.test</EMailAddress>
<AcceptableResponseSchema>x</AcceptableResponseSchema></Request></Autodiscover>
"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Autodiscover [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Autodiscover><Request><EMailAddress>&xxe;</EMailAddress></Request></Autodiscover>
"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE Autodiscover SYSTEM "http://198.51.100.1/evil.dtd">
<Autodiscover><Request><EMailAddress>alice@example.test</EMailAddress></Request></Autodiscover>
"""


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (BILLION_LAUGHS, b"DOCTYPE"),
        (XXE, b"DOCTYPE"),
        (EXTERNAL_DTD, b"DOCTYPE"),
        (outlook_request("&lol;@example.test"), b"not well-formed"),
        (b"", b"not well-formed"),
        (b"not xml at all", b"not well-formed"),
        (outlook_request()[:-20], b"not well-formed"),
        (
            b"<Autodiscover><Request><EMailAddress>a@example.test</Request></Autodiscover>",
            b"not well-formed",
        ),
        (outlook_request().replace(b"Autodiscover", b"Discover"), b"root element"),
        (outlook_request().replace(b"<Request>", b"<Request><Request>" * 8), b"nested"),
        (outlook_request().replace(b"<Request>", b"<Request>" + b"<x/>" * 100), b"too many"),
        (outlook_request(email="a" * 2000 + "@example.test"), b"too long"),
        (
            outlook_request().replace(
                b"</Request>", b"<EMailAddress>b@example.test</EMailAddress></Request>"
            ),
            b"more than one",
        ),
        (outlook_request().replace(b"EMailAddress", b"LegacyDN"), b"EMailAddress"),
        (
            re.sub(
                rb"<AcceptableResponseSchema>.*</AcceptableResponseSchema>", b"", outlook_request()
            ),
            b"AcceptableResponseSchema",
        ),
        (outlook_request(email="&lt;script&gt;@example.test"), b"not a valid email address"),
        (outlook_request(email='"&lt;x&gt;"@example.test'), b"not a valid email address"),
        (outlook_request(email="alice@example.test&#x1;"), b"not well-formed"),
        (outlook_request(email="alice"), b"not a valid email address"),
    ],
    ids=[
        "billion-laughs",
        "xxe",
        "external-dtd",
        "undefined-entity",
        "empty",
        "not-xml",
        "truncated",
        "mismatched-tags",
        "wrong-root",
        "too-deep",
        "too-many-elements",
        "long-text",
        "two-addresses",
        "legacy-dn",
        "no-schema",
        "markup-in-address",
        "quoted-local-part",
        "control-character",
        "no-domain",
    ],
)
def test_autodiscover_refuses_bad_requests_with_400(body: bytes, reason: bytes) -> None:
    status, answer, content_type = autodiscover(settings(ALL), body)
    assert (status, content_type) == (400, "text/plain; charset=utf-8")
    assert answer.startswith(b"bad autodiscover request: ")
    assert reason in answer
    assert b"<" not in answer


def test_autodiscover_refuses_an_oversized_body_with_413() -> None:
    padding = b"<!--" + b"x" * MAX_AUTODISCOVER_BODY + b"-->"
    status, answer, _ = autodiscover(settings(ALL), outlook_request() + padding)
    assert status == 413
    assert b"larger than" in answer
    # Just under the limit is read.
    body = outlook_request()
    body += b"<!--" + b"x" * (MAX_AUTODISCOVER_BODY - len(body) - 7) + b"-->"
    assert len(body) == MAX_AUTODISCOVER_BODY
    assert autodiscover(settings(ALL), body)[0] == 200


def test_autodiscover_never_raises_on_any_prefix_or_corruption() -> None:
    # Every prefix and every single-byte corruption of a real request: the
    # answer is always one of the three documented kinds.
    request = outlook_request()
    bodies = [request[:n] for n in range(len(request))]
    bodies += [
        request[:n] + bytes([b]) + request[n + 1 :]
        for n in range(len(request))
        for b in b"<&\x00\xff"
    ]
    for body in bodies:
        status, answer, content_type = autodiscover(settings(ALL), body)
        assert status in (200, 400), body
        assert content_type in (AUTODISCOVER_CONTENT_TYPE, "text/plain; charset=utf-8")
        if status == 200:
            parse_xml(answer)


# -- Apple configuration profile ----------------------------------------------


def _profile(
    s: ClientSettings, email: str = EMAIL, name: str = "Alice Liddell"
) -> dict[str, object]:
    body = mobileconfig(s, email, name)
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    profile = plistlib.loads(body)
    assert isinstance(profile, dict)
    return profile


def _mail(profile: dict[str, object]) -> dict[str, object]:
    content = profile["PayloadContent"]
    assert isinstance(content, list) and len(content) == 1
    mail = content[0]
    assert isinstance(mail, dict)
    return mail


@pytest.mark.parametrize(
    ("ports", "account_type", "incoming_port", "outgoing_port"),
    [
        (ALL, "EmailTypeIMAP", 993, 465),
        (IMPLICIT_ONLY, "EmailTypeIMAP", 993, 465),
        (STARTTLS_ONLY, "EmailTypeIMAP", 143, 587),
        (NO_POP3, "EmailTypeIMAP", 993, 465),
        ({"pop3s": 995, "submission": 587}, "EmailTypePOP", 995, 587),
    ],
    ids=["all", "implicit-only", "starttls-only", "no-pop3", "pop3-only"],
)
def test_mobileconfig_mail_payload(
    ports: dict[str, int], account_type: str, incoming_port: int, outgoing_port: int
) -> None:
    profile = _profile(settings(ports))
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadVersion"] == 1
    mail = _mail(profile)
    assert mail == {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{profile['PayloadIdentifier']}.mail",
        "PayloadUUID": mail["PayloadUUID"],
        "PayloadDisplayName": f"Mail: {EMAIL}",
        "EmailAccountDescription": EMAIL,
        "EmailAccountName": "Alice Liddell",
        "EmailAccountType": account_type,
        "EmailAddress": EMAIL,
        "IncomingMailServerHostName": HOST,
        "IncomingMailServerPortNumber": incoming_port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerUsername": EMAIL,
        "OutgoingMailServerHostName": HOST,
        "OutgoingMailServerPortNumber": outgoing_port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerUsername": EMAIL,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    assert not any(
        "Password" in key and key != "OutgoingPasswordSameAsIncomingPassword" for key in mail
    )


def test_mobileconfig_identifiers_are_stable_per_host_and_address() -> None:
    uuid_shape = re.compile(
        r"^[0-9A-F]{8}-[0-9A-F]{4}-5[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$"
    )
    first = _profile(settings(ALL))
    again = _profile(settings(IMPLICIT_ONLY), name="")
    other_user = _profile(settings(ALL), "bob@example.test")
    other_host = _profile(ClientSettings.from_listen("mx2.example.test", listen(ALL)))
    ids = [
        (p["PayloadUUID"], _mail(p)["PayloadUUID"], p["PayloadIdentifier"])
        for p in (first, again, other_user, other_host)
    ]
    assert ids[0] == ids[1]
    assert len({i[0] for i in ids[1:]}) == 3
    assert len({i[1] for i in ids[1:]}) == 3
    for profile_uuid, mail_uuid, identifier in ids:
        assert isinstance(profile_uuid, str) and uuid_shape.match(profile_uuid)
        assert isinstance(mail_uuid, str) and uuid_shape.match(mail_uuid)
        assert profile_uuid != mail_uuid
        assert isinstance(identifier, str) and identifier.endswith(profile_uuid)
    assert str(first["PayloadIdentifier"]).startswith("test.example.mx1.estafeta.")
    assert "EmailAccountName" not in _mail(again)


def test_mobileconfig_escapes_markup_in_names_and_addresses() -> None:
    name = 'Al <b>&amp;</b> "Co" ]]> é'
    body = mobileconfig(settings(ALL), "o'neil&co@example.test", name)
    assert b"<b>" not in body
    mail = _mail(plistlib.loads(body))
    assert mail["EmailAccountName"] == name
    assert mail["EmailAddress"] == "o'neil&co@example.test"


@pytest.mark.parametrize(
    ("email", "name"),
    [
        ("<script>@example.test", "x"),
        ('"</string><key>x"@example.test', "x"),
        ("alice@example.test", "bell\x07"),
        ("alice@example.test", "two\nlines"),
        ("alice@example.test", "x" * 201),
        ("alice@exam ple.test", "x"),
    ],
)
def test_mobileconfig_refuses_hostile_input(email: str, name: str) -> None:
    with pytest.raises(BadInput):
        mobileconfig(settings(ALL), email, name)


def test_mobileconfig_not_offered_without_submission() -> None:
    with pytest.raises(NotOffered):
        mobileconfig(settings({"imaps": 993, "smtp": 25}), EMAIL, "")


# -- validation helpers -----------------------------------------------------------


def test_validate_email_canonical_form() -> None:
    assert clientconfig.validate_email("Alice@EXAMPLE.test") == EMAIL
    assert clientconfig.validate_email("jörg@bücher.example") == "jörg@xn--bcher-kva.example"
