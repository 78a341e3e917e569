"""DKIM: is each signing key published, strong enough, and does a signature verify?

The keys are the server's: ``data_dir/dkim/<domain>/<selector>.pem``
(policy/signer.py), each signing all mail of its domain. For each key:

- the TXT record at ``<selector>._domainkey.<domain>`` (rfc6376:3.6.2.1)
  must carry this key's public key (``p=``, compared with what
  ``policy.dkim.txt_record`` makes of the private key) and its type (``k=``);
- RSA keys of fewer than 2048 bits are weak (rfc8301:3.2: 1024 is the floor,
  2048 recommended); a domain with only Ed25519 keys (rfc8463) signs for the
  verifiers that know Ed25519 only;
- a test message signed with the key (``policy.dkim.sign``) must verify
  against DNS (``policy.dkim.verify``, dkimpy underneath), exactly as a
  receiver would check it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import dkim as dkimpy  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from estafeta.doctor.context import Context
from estafeta.doctor.findings import Finding, Problems
from estafeta.policy import dkim

RECOMMENDED_RSA_BITS = 2048  # rfc8301:3.2


def _tags(record: str) -> dict[str, str] | None:
    try:
        tags = dkimpy.parse_tag_value(record.encode("utf-8", "surrogateescape"))
    except Exception:  # dkimpy raises InvalidTagValueList and codec errors
        return None
    return {
        k.decode("ascii", "replace").lower(): re.sub(r"\s+", "", v.decode("ascii", "replace"))
        for k, v in tags.items()
    }


def _keys(ctx: Context, domain: str) -> tuple[list[tuple[Path, dkim.SigningKey]], list[Finding]]:
    """The domain's keys, and a finding for each key file that cannot be used."""
    if ctx.dkim_dir is None:
        return [], []
    folder = ctx.dkim_dir / domain
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix == ".pem")
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        return [], [
            Finding(
                "dkim",
                f"*._domainkey.{domain}",
                "fail",
                f"cannot read the key directory {folder}: {exc.strerror or exc}",
                "run estafeta doctor as root or as the user the server runs as",
                domain,
            )
        ]
    keys: list[tuple[Path, dkim.SigningKey]] = []
    broken: list[Finding] = []
    for path in files:
        try:
            keys.append((path, dkim.load_key(path, domain, path.stem)))
        except ValueError as exc:
            broken.append(
                Finding(
                    "dkim",
                    f"{path.stem}._domainkey.{domain}",
                    "fail",
                    f"the key file cannot be used: {exc}",
                    f"replace it: estafeta dkim keygen {domain} --selector {path.stem} --force, "
                    "then publish the record it prints",
                    domain,
                )
            )
    return keys, broken


def selectors(ctx: Context, domain: str) -> list[str]:
    """The selectors of the domain's key files (for the dns-views check)."""
    if ctx.dkim_dir is None:
        return []
    try:
        return sorted(p.stem for p in (ctx.dkim_dir / domain).iterdir() if p.suffix == ".pem")
    except OSError:
        return []


async def check(ctx: Context) -> list[Finding]:
    findings: list[Finding] = []
    for domain in ctx.domains:
        keys, broken = _keys(ctx, domain)
        findings += broken
        if not keys and not broken:
            findings.append(
                Finding(
                    "dkim",
                    f"*._domainkey.{domain}",
                    "warn",
                    f"no DKIM key for {domain}: its mail is not signed, and DMARC rests on SPF "
                    "alone, which forwarding breaks",
                    f"estafeta dkim keygen {domain} --selector s1, then publish the record "
                    "it prints",
                    domain,
                )
            )
        with_rsa = any(key.algorithm == "rsa" for _, key in keys)
        for path, key in keys:
            findings.append(await _key(ctx, path, key, with_rsa))
    return findings


def _published(problems: Problems, key: dkim.SigningKey, path: Path, records: list[str]) -> None:
    name = f"{key.selector}._domainkey.{key.domain}"
    ours = dkim.txt_record(key)
    publish = f'publish "{ours}" as the TXT record {name} (estafeta dkim list prints it)'
    if not records:
        problems.fail(f"{name} has no TXT record: the key is not published", publish)
        return
    wanted = (_tags(ours) or {}).get("p", "")
    parsed = [(record, _tags(record)) for record in records]
    matching = [tags for _, tags in parsed if tags is not None and tags.get("p") == wanted]
    if not matching:
        revoked = any(tags is not None and tags.get("p") == "" for _, tags in parsed)
        what = "a revoked key (empty p=)" if revoked else "another public key"
        problems.fail(f"{name} publishes {what}, not the key in {path}", publish)
        return
    kind = matching[0].get("k", "rsa").lower()
    if kind != key.algorithm:
        problems.fail(f"{name} says k={kind}, the key is {key.algorithm}", publish)
        return
    problems.ok(f"the published key is the one in {path}")
    if len(records) > 1:
        problems.warn(
            f"{name} has {len(records)} TXT records: a verifier may take another one",
            f"leave only the key record at {name}",
        )


def _strength(problems: Problems, key: dkim.SigningKey, with_rsa: bool) -> None:
    fix = (
        f"make a new key under a new selector (estafeta dkim keygen {key.domain} "
        "--selector NEW), publish it, then remove this one"
    )
    if key.algorithm == "ed25519":
        problems.ok("Ed25519 (rfc8463)")
        if not with_rsa:
            problems.warn(
                f"{key.domain} has Ed25519 keys only: verifiers without Ed25519 see no "
                "valid signature",
                f"add an RSA key: estafeta dkim keygen {key.domain} --selector NEW --algorithm rsa",
            )
        return
    private = serialization.load_pem_private_key(key.private_pem, password=None)
    bits = private.key_size if isinstance(private, rsa.RSAPrivateKey) else 0
    if bits < RECOMMENDED_RSA_BITS:
        problems.warn(
            f"RSA key of {bits} bits; {RECOMMENDED_RSA_BITS} are recommended (rfc8301:3.2)", fix
        )
    else:
        problems.ok(f"RSA key of {bits} bits")


async def _key(ctx: Context, path: Path, key: dkim.SigningKey, with_rsa: bool) -> Finding:
    name = f"{key.selector}._domainkey.{key.domain}"
    problems = Problems("dkim", name, key.domain)
    records = await ctx.records(problems, name, "TXT")
    if records is None:
        return problems.finding()
    _published(problems, key, path, [str(r) for r in records])
    _strength(problems, key, with_rsa)
    now = time.time()  # dkimpy checks t= against the clock
    message = (
        f"From: <doctor@{key.domain}>\r\n"
        f"To: <doctor@{key.domain}>\r\n"
        "Subject: estafeta doctor test signature\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime(now))}\r\n"
        f"Message-ID: <doctor.{int(now)}@{key.domain}>\r\n"
        "\r\n"
        "This message is signed and verified, never sent.\r\n"
    ).encode("ascii")
    signed = dkim.sign(message, [key], timestamp=int(now)) + message
    results = await dkim.verify(ctx.resolver, signed)
    result = results[0] if results else None
    if result is not None and result.result == "pass":
        problems.ok("a test signature verifies against DNS")
    else:
        why = f"{result.result} ({result.reason})" if result else "no result"
        problems.fail(
            f"a test signature does not verify: {why}",
            f'publish "{dkim.txt_record(key)}" as the TXT record {name}',
        )
    return problems.finding()
