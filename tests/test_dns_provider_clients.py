"""The Cloudflare and Hetzner DNS clients (module_utils/dns_cloudflare.py,
dns_hetzner.py, dns_providers.py) against
local stand-ins of the providers' HTTP APIs (tests/standins/).

For each provider: the zone is found by name; TXT, MX, CNAME and TLSA values
are added and read back equal (as dnspython compares rdata) to what was
asked; one value of a multi-value TXT set is deleted and the others, someone
else's, stay; a 2048-bit DKIM key (more than 255 octets) goes out in strings
of at most 255 octets and comes back equal; more than a page of records is
read; a wrong token and an unknown zone give a ProviderError that says what
the provider said and never holds the token; a 429 is retried after its
Retry-After, a failure that persists ends after a bounded number of tries, and
a POST is not repeated after an error that may have created the record.
Waits go through an injected ``sleep`` that records them: nothing here times
anything.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ansible.module_utils  # type: ignore[import-untyped]
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.standins.cloudflare import CloudflareStandIn
from tests.standins.hetzner import HetznerStandIn

ROOT = Path(__file__).resolve().parent.parent
# What ansible.cfg's module_utils= does when Ansible packs a module.
if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))

from ansible.module_utils.dns_cloudflare import (  # type: ignore[import-untyped]  # noqa: E402
    CloudflareClient,
)
from ansible.module_utils.dns_hetzner import HetznerClient  # type: ignore[import-untyped]  # noqa: E402
from ansible.module_utils.dns_providers import (  # type: ignore[import-untyped]  # noqa: E402
    ProviderError,
    canonical,
    txt_strings,
    txt_text,
)

ZONE = "example.test"
TLSA_HASH = "8CB0FC6C527506A053F4F14C8464BEBBD6DEDE2738D11468DD953D7D6A3021F1"


def rdata(rtype: str, text: str) -> Any:
    return dns.rdata.from_text(
        dns.rdataclass.IN, rtype, text, origin=dns.name.root, relativize=False
    )


def split_txt(text: str) -> str:
    """``text`` as dns_rrset_sync.txt_rdata presents it: strings of at most 255 octets."""
    data = text.encode()
    return " ".join(f'"{data[i : i + 255].decode()}"' for i in range(0, len(data), 255))


@dataclass
class Provider:
    name: str
    api: Any  # CloudflareStandIn | HetznerStandIn
    make: Callable[..., Any]
    sleeps: list[float]

    def client(self, token: str | None = None, **options: Any) -> Any:
        options.setdefault("sleep", self.sleeps.append)
        return self.make(self.api.token if token is None else token, self.api.base_url, **options)

    def seed(self, rtype: str, name: str, value: str, **fields: Any) -> str:
        """A record someone else made (the name relative to the zone, ``@`` the apex)."""
        if self.name == "hetzner":
            return str(self.api.seed(ZONE, rtype, name, value, **fields))
        full = ZONE if name == "@" else f"{name}.{ZONE}"
        return str(self.api.seed(ZONE, rtype, full, value, **fields))


@pytest.fixture(params=["cloudflare", "hetzner"])
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    api: CloudflareStandIn | HetznerStandIn
    if request.param == "cloudflare":
        api, make = CloudflareStandIn(), CloudflareClient
    else:
        api, make = HetznerStandIn(), HetznerClient
    with api:
        api.add_zone(ZONE)
        api.add_zone("example.net")
        yield Provider(request.param, api, make, [])


@pytest.fixture(scope="module")
def dkim_value() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


# -- presentation format ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '"v=spf1 mx -all"',
        '"one" "two words" three',
        r'"a \"quoted\" word and a \\ backslash"',
        '"caf\\195\\169 \\009tab"',
        '"Grüße aus Köln"',
        '""',
    ],
)
def test_txt_text_is_dnspython_presentation(text: str) -> None:
    assert txt_text(txt_strings(text)) == rdata("TXT", text).to_text()


def test_txt_strings_split_long_strings_like_dns_rrset_sync(dkim_value: str) -> None:
    strings = txt_strings(f'"{dkim_value}"')
    assert [len(s) for s in strings[:-1]] == [255] * (len(strings) - 1)
    assert b"".join(strings) == dkim_value.encode()
    assert txt_text(strings) == rdata("TXT", split_txt(dkim_value)).to_text()
    with pytest.raises(ValueError, match="unterminated quote"):
        txt_strings('"v=spf1 mx')


@pytest.mark.parametrize(
    ("rtype", "value", "origin", "expected"),
    [
        ("MX", "10 MX1.Example.Test", "", "10 mx1.example.test."),
        ("MX", "10 mx1", "example.test", "10 mx1.example.test."),
        ("MX", "0 .", "", "0 ."),
        ("CNAME", "@", "example.test", "example.test."),
        ("TLSA", f"3 1 1 {TLSA_HASH[:32]} {TLSA_HASH[32:]}", "", f"3 1 1 {TLSA_HASH.lower()}"),
        ("AAAA", "2001:DB8:0:0::1", "", "2001:db8::1"),
        ("SRV", "0 1 587 mx1.example.test", "", "0 1 587 mx1.example.test."),
        ("CAA", '0 ISSUE "letsencrypt.org"', "", '0 issue "letsencrypt.org"'),
    ],
)
def test_canonical_values(rtype: str, value: str, origin: str, expected: str) -> None:
    assert canonical(rtype, value, origin) == expected
    assert rdata(rtype, expected) == rdata(rtype, canonical(rtype, expected))


# -- zones -----------------------------------------------------------------------------------


def test_zone_is_found_by_name_once(provider: Provider) -> None:
    client = provider.client()
    zone_id = client.zone_id(ZONE)
    assert zone_id == client.zone_id(ZONE + ".")
    assert zone_id != client.zone_id("example.net")
    assert zone_id in provider.api.zones
    lookups = provider.api.calls("GET", "/zones")
    assert [r.query["name"] for r in lookups] == [ZONE, "example.net"]


def test_unknown_zone_is_a_clear_error(provider: Provider) -> None:
    client = provider.client()
    with pytest.raises(ProviderError, match=r"zone(s are named)? example\.invalid"):
        client.rrset("example.invalid", "example.invalid", "TXT")
    with pytest.raises(ProviderError, match=r"is not in the zone example\.test"):
        client.add(ZONE, "mail.example.net", "A", "192.0.2.1", 300)


# -- records ---------------------------------------------------------------------------------


RECORDS = [
    ("example.test", "TXT", '"v=spf1 mx -all"'),
    ("example.test", "MX", "10 mx1.example.test."),
    ("autoconfig.example.test", "CNAME", "mx1.example.test."),
    ("_25._tcp.mx1.example.test", "TLSA", f"3 1 1 {TLSA_HASH}"),
]


@pytest.mark.parametrize(("name", "rtype", "value"), RECORDS)
def test_add_and_read_back(provider: Provider, name: str, rtype: str, value: str) -> None:
    client = provider.client()
    record_id = client.add(ZONE, name + ".", rtype, value, 3600)
    [record] = client.rrset(ZONE, name, rtype)
    assert record.id == record_id
    assert record.ttl == 3600
    assert rdata(rtype, record.value) == rdata(rtype, value)
    # What went over the wire, in each provider's own terms.
    [post] = provider.api.calls("POST")
    if provider.name == "cloudflare":
        assert post.body["name"] == name and post.body["ttl"] == 3600
        if rtype == "MX":
            assert (post.body["priority"], post.body["content"]) == (10, "mx1.example.test")
        if rtype == "CNAME":
            assert post.body["content"] == "mx1.example.test" and post.body["proxied"] is False
        if rtype == "TLSA":
            assert post.body["data"] == {
                "usage": 3,
                "selector": 1,
                "matching_type": 1,
                "certificate": TLSA_HASH.lower(),
            }
    else:
        relative = "@" if name == ZONE else name[: -len(ZONE) - 1]
        assert post.body["name"] == relative
        assert post.body["zone_id"] == client.zone_id(ZONE)
        assert rdata(rtype, post.body["value"]) == rdata(rtype, value)


def test_multi_value_txt_delete_keeps_the_others(provider: Provider) -> None:
    client = provider.client()
    provider.seed("TXT", "@", '"google-site-verification=abc123"')
    provider.seed("TXT", "@", "MS=ms12345678")  # entered without quotes
    client.add(ZONE, ZONE, "TXT", '"v=spf1 mx -all"', 300)
    before = {r.value for r in client.rrset(ZONE, ZONE, "TXT")}
    assert before == {
        '"google-site-verification=abc123"',
        '"MS=ms12345678"',
        '"v=spf1 mx -all"',
    }
    assert client.delete(ZONE, ZONE, "TXT", '"v=spf1 mx -all"') == 1
    assert client.delete(ZONE, ZONE, "TXT", '"v=spf1 mx -all"') == 0
    after = {r.value for r in client.rrset(ZONE, ZONE, "TXT")}
    assert after == before - {'"v=spf1 mx -all"'}
    assert len(provider.api.calls("DELETE")) == 1


def test_delete_matches_values_not_spelling(provider: Provider) -> None:
    client = provider.client()
    client.add(ZONE, ZONE, "MX", "10 mx1.example.test.", 300)
    client.add(ZONE, ZONE, "MX", "20 mx2.example.net.", 300)
    assert client.delete(ZONE, ZONE.upper(), "mx", "10 MX1.EXAMPLE.TEST") == 1
    assert [r.value for r in client.rrset(ZONE, ZONE, "MX")] == ["20 mx2.example.net."]


def test_long_dkim_txt_round_trip(provider: Provider, dkim_value: str) -> None:
    client = provider.client()
    name = "s2026._domainkey.example.test"
    presented = split_txt(dkim_value)
    client.add(ZONE, name, "TXT", presented, 3600)
    [record] = client.rrset(ZONE, name, "TXT")
    assert record.value == rdata("TXT", presented).to_text()
    assert b"".join(rdata("TXT", record.value).strings) == dkim_value.encode()
    # The provider holds strings of at most 255 octets.
    [stored] = provider.api.zone_records(ZONE)
    field = "content" if provider.name == "cloudflare" else "value"
    assert [len(s) for s in rdata("TXT", stored[field]).strings] == [255, len(dkim_value) - 255]
    assert client.delete(ZONE, name, "TXT", presented) == 1
    assert client.rrset(ZONE, name, "TXT") == []


def test_one_long_string_is_split_before_sending(provider: Provider, dkim_value: str) -> None:
    client = provider.client()
    client.add(ZONE, "s1._domainkey.example.test", "TXT", f'"{dkim_value}"', 3600)
    [record] = client.rrset(ZONE, "s1._domainkey.example.test", "TXT")
    assert record.value == rdata("TXT", split_txt(dkim_value)).to_text()


def test_more_than_one_page(provider: Provider) -> None:
    client = provider.client()
    if provider.name == "cloudflare":  # the name filter is the server's: many values at one name
        for index in range(130):
            provider.seed("TXT", "_verify", f'"token-{index}"')
    else:  # the client filters: many names, ours on the last page
        for index in range(230):
            provider.seed("A", f"host{index}", f"192.0.2.{index % 250}")
        for index in range(130):
            provider.seed("TXT", "_verify", f'"token-{index}"', ttl=600)
    records = client.rrset(ZONE, "_verify.example.test", "TXT")
    assert sorted(r.value for r in records) == sorted(f'"token-{i}"' for i in range(130))
    path = "/zones/" if provider.name == "cloudflare" else "/records"
    pages = [r.query["page"] for r in provider.api.calls("GET", path)]
    assert pages == (["1", "2"] if provider.name == "cloudflare" else ["1", "2", "3", "4"])


def test_set_ttl(provider: Provider) -> None:
    client = provider.client()
    client.add(ZONE, ZONE, "MX", "10 mx1.example.test.", 300)
    client.add(ZONE, ZONE, "MX", "20 mx2.example.test.", 300)
    assert client.set_ttl(ZONE, ZONE, "MX", 3600) == 2
    assert {r.ttl for r in client.rrset(ZONE, ZONE, "MX")} == {3600}
    assert client.set_ttl(ZONE, ZONE, "MX", 3600) == 0


# -- errors ----------------------------------------------------------------------------------


def test_wrong_token_is_a_clear_error_without_the_token(provider: Provider) -> None:
    secret = "wrong-secret-token-4f9a2c"
    client = provider.client(token=secret)
    with pytest.raises(ProviderError) as failure:
        client.rrset(ZONE, ZONE, "TXT")
    message = str(failure.value)
    expected = {
        "cloudflare": "Cloudflare: Authentication error (10000) for zone example.test",
        "hetzner": "Hetzner DNS: Invalid authentication credentials (HTTP 401) for zone"
        " example.test",
    }[provider.name]
    assert message == expected
    assert secret not in repr(client) and secret not in repr(failure.value)
    # The token travels in its header only.
    for request in provider.api.requests:
        assert secret not in request.path and secret not in str(request.query)
    assert not provider.sleeps  # an authentication failure is not retried


def test_rate_limit_is_retried_after_retry_after(provider: Provider) -> None:
    client = provider.client()
    provider.api.fail_next(429, retry_after="7")
    assert client.zone_id(ZONE) in provider.api.zones
    assert provider.sleeps == [7.0]
    assert len(provider.api.calls("GET", "/zones")) == 2


def test_server_errors_back_off_and_give_up(provider: Provider) -> None:
    client = provider.client(attempts=3, max_delay=5)
    provider.api.fail_next(503, times=2)
    client.zone_id(ZONE)
    assert provider.sleeps == [1.0, 2.0]
    provider.sleeps.clear()
    provider.api.fail_next(429, times=3, retry_after="3600")
    with pytest.raises(ProviderError, match=r"example\.test"):
        client.rrset(ZONE, ZONE, "TXT")
    assert provider.sleeps == [5.0, 5.0]  # Retry-After capped at max_delay


def test_a_failed_post_is_not_repeated(provider: Provider) -> None:
    client = provider.client()
    client.zone_id(ZONE)
    provider.api.fail_next(500, methods=("POST",))
    with pytest.raises(ProviderError, match=r"adding example\.test TXT"):
        client.add(ZONE, ZONE, "TXT", '"v=spf1 mx -all"', 300)
    assert len(provider.api.calls("POST")) == 1
    provider.api.fail_next(429, methods=("POST",))
    client.add(ZONE, ZONE, "TXT", '"v=spf1 mx -all"', 300)
    assert len(provider.api.calls("POST")) == 3
    assert len(client.rrset(ZONE, ZONE, "TXT")) == 1


def test_redirects_are_not_followed(provider: Provider) -> None:
    client = provider.client()
    with CloudflareStandIn() as elsewhere:
        provider.api.fail_next(307, headers={"Location": elsewhere.base_url + "/zones"})
        with pytest.raises(ProviderError, match=r"HTTP 307"):
            client.zone_id(ZONE)
        assert elsewhere.requests == []  # the token went nowhere else


def test_hetzner_reads_a_zone_once() -> None:
    with HetznerStandIn() as api:
        api.add_zone(ZONE)
        client = HetznerClient(api.token, api.base_url)
        client.add(ZONE, ZONE, "MX", "10 mx1.example.test.", 300)
        record_id = client.add(ZONE, ZONE, "TXT", '"v=spf1 mx -all"', 300)
        assert [r.id for r in client.rrset(ZONE, ZONE, "TXT")] == [record_id]
        assert client.delete(ZONE, ZONE, "MX", "10 mx1.example.test.") == 1
        assert client.set_ttl(ZONE, ZONE, "TXT", 600) == 1
        assert client.rrset(ZONE, ZONE, "MX") == []
        assert [r.ttl for r in client.rrset(ZONE, ZONE, "TXT")] == [600]
        assert len(api.calls("GET", "/records")) == 1
        # What the client remembers is what the API has.
        api.seed(ZONE, "TXT", "@", '"foreign"')
        client.forget()
        assert len(client.rrset(ZONE, ZONE, "TXT")) == 2
        assert len(api.calls("GET", "/records")) == 2


def test_unreachable_api_is_a_clear_error() -> None:
    with CloudflareStandIn() as api:
        url = api.base_url
    sleeps: list[float] = []
    client = CloudflareClient("t0ken-not-shown", url, attempts=2, sleep=sleeps.append, timeout=5)
    with pytest.raises(ProviderError, match=r"Cloudflare: GET .* failed") as failure:
        client.zone_id(ZONE)
    assert "t0ken-not-shown" not in str(failure.value)
    assert sleeps == [1.0]


def test_provider_validation_errors_are_reported(provider: Provider) -> None:
    client = provider.client()
    if provider.name == "cloudflare":
        client.add(ZONE, "autoconfig.example.test", "CNAME", "mx1.example.test.", 300)
        with pytest.raises(ProviderError, match=r"A CNAME record with that host already exists"):
            client.add(ZONE, "autoconfig.example.test", "TXT", '"x"', 300)
        with pytest.raises(ProviderError, match=r"DNS Validation Error.*BOGUS"):
            client.add(ZONE, ZONE, "BOGUS", "x", 300)
        with pytest.raises(ProviderError, match=r"TTL must be between"):
            client.add(ZONE, ZONE, "TXT", '"x"', 5)
    else:
        with pytest.raises(ProviderError, match=r"invalid type PTR \(HTTP 422\)"):
            client.add(ZONE, "10.example.test", "PTR", "mx1.example.test.", 300)
    # A value that does not fit its type is refused before anything is sent.
    with pytest.raises(ProviderError, match=r"'not-an-address' is not a valid A value"):
        client.add(ZONE, ZONE, "A", "not-an-address", 300)
    assert not [r for r in provider.api.calls("POST") if r.body.get("type") == "A"]


def raw(api: Any, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
    """One request to a stand-in, without the client."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 (http://127.0.0.1)
        api.base_url + path, data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (as above)
            status, text = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    return status, json.loads(text) if text else None


def test_cloudflare_standin_checks_input() -> None:
    with CloudflareStandIn() as api:
        zone_id = api.add_zone(ZONE)
        auth = {"Authorization": f"Bearer {api.token}"}
        status, answer = raw(api, "GET", "/zones")
        assert (status, answer["errors"][0]["code"]) == (400, 6003)
        assert answer["errors"][0]["error_chain"][0]["code"] == 6111
        status, answer = raw(api, "GET", "/zones/0123/dns_records", **auth)
        assert (status, answer["errors"][0]["code"]) == (400, 7003)
        records = f"/zones/{zone_id}/dns_records"
        for body in (
            {"name": "x", "content": "y"},
            {"type": "A", "content": "192.0.2.1"},
            {"type": "TXT", "name": "x"},
            {"type": "MX", "name": "@", "content": "mx"},
            {"type": "TLSA", "name": "_25._tcp", "content": "3 1 1 ab"},
        ):
            status, answer = raw(api, "POST", records, body, **auth)
            assert (status, answer["success"]) == (400, False), body
            assert answer["errors"][0]["code"] == 1004, body
        status, answer = raw(
            api, "POST", records, {"type": "A", "name": "@", "content": "x"}, **auth
        )
        assert answer["errors"][0]["code"] == 9005
        status, answer = raw(api, "DELETE", records + "/" + "0" * 32, **auth)
        assert (status, answer["errors"][0]["code"]) == (404, 81044)
        long = "a" * 300
        status, answer = raw(
            api, "POST", records, {"type": "TXT", "name": "@", "content": long}, **auth
        )
        assert answer["result"]["content"] == f'"{"a" * 255}" "{"a" * 45}"'
        assert not api.zone_records("example.test")[0]["proxied"]


def test_hetzner_standin_checks_input() -> None:
    with HetznerStandIn() as api:
        zone_id = api.add_zone(ZONE)
        status, answer = raw(api, "GET", "/zones", **{"Auth-API-Token": "nope"})
        assert (status, answer) == (401, {"message": "Invalid authentication credentials"})
        auth = {"Auth-API-Token": api.token}
        status, answer = raw(api, "GET", "/zones?name=example.invalid", **auth)
        assert (status, answer["error"]["code"]) == (404, 404)
        status, answer = raw(api, "GET", "/records?zone_id=nope", **auth)
        assert (status, answer["error"]["message"]) == (404, "zone not found")
        base = {"zone_id": zone_id, "type": "TXT", "name": "@", "value": '"x"'}
        for field in ("zone_id", "type", "name", "value"):
            status, answer = raw(api, "POST", "/records", {**base, field: ""}, **auth)
            assert status == 422 and f"missing field {field}" in answer["error"]["message"]
        status, answer = raw(
            api, "POST", "/records", {**base, "value": '"' + "a" * 256 + '"'}, **auth
        )
        assert status == 422 and "longer than 255" in answer["error"]["message"]
        status, answer = raw(api, "POST", "/records", {**base, "value": '"open'}, **auth)
        assert status == 422
        status, answer = raw(api, "POST", "/records", {**base, "type": "PTR"}, **auth)
        assert status == 422
        status, answer = raw(api, "POST", "/records", base, **auth)
        assert status == 200 and answer["record"]["name"] == "@" and "ttl" not in answer["record"]
        status, answer = raw(api, "DELETE", "/records/" + answer["record"]["id"], **auth)
        assert (status, answer) == (200, None)


def test_cloudflare_identical_record_is_not_an_error() -> None:
    with CloudflareStandIn() as api:
        api.add_zone(ZONE)
        client = CloudflareClient(api.token, api.base_url)
        first = client.add(ZONE, ZONE, "TXT", '"v=spf1 mx -all"', 300)
        assert client.add(ZONE, ZONE, "TXT", '"v=spf1 mx -all"', 300) == first
        assert len(api.zone_records(ZONE)) == 1


def test_cloudflare_automatic_ttl_and_legacy_content() -> None:
    with CloudflareStandIn() as api:
        api.add_zone(ZONE)
        api.seed(ZONE, "TXT", ZONE, "v=spf1 include:_spf.example.net ~all", ttl=1)
        api.seed(ZONE, "SRV", "_submission._tcp." + ZONE, "1\t587\tmx1.example.test", priority=0)
        client = CloudflareClient(api.token, api.base_url)
        [txt] = client.rrset(ZONE, ZONE, "TXT")
        assert (txt.value, txt.ttl) == ('"v=spf1 include:_spf.example.net ~all"', 300)
        [srv] = client.rrset(ZONE, "_submission._tcp." + ZONE, "SRV")
        assert rdata("SRV", srv.value) == rdata("SRV", "0 1 587 mx1.example.test.")


def test_hetzner_relative_names_and_zone_ttl() -> None:
    with HetznerStandIn() as api:
        api.add_zone(ZONE, ttl=7200)
        api.seed(ZONE, "MX", "@", "10 mx1")  # relative to the zone, as in a zone file
        client = HetznerClient(api.token, api.base_url)
        [mx] = client.rrset(ZONE, ZONE, "MX")
        assert (mx.value, mx.ttl) == ("10 mx1.example.test.", 7200)


def test_clients_refuse_bad_settings() -> None:
    with pytest.raises(ProviderError, match="must be http"):
        CloudflareClient("token", "file:///etc/passwd")
    with pytest.raises(ProviderError, match="token is required"):
        HetznerClient("")
    assert CloudflareClient("abcd").base_url == "https://api.cloudflare.com/client/v4"
    assert HetznerClient("abcd").base_url == "https://dns.hetzner.com/api/v1"
