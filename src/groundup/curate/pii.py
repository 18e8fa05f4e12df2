"""PII redaction: emails, public IP addresses, phone numbers, credit-card numbers -> placeholders.

- emails: an RFC 5322-style local part, ``@``, a dotted host name;
- IPv4 and IPv6 addresses that are globally routable (``ipaddress``'s ``is_global``); private,
  loopback, link-local and documentation ranges are kept, as they identify no one;
- phone numbers: ``phonenumbers``' matcher (valid numbers only) for a default region, plus
  numbers written in international form (``+44 ...``) for any region;
- credit cards: 13 to 19 digits (spaces or dashes allowed) that pass the Luhn check.

Each kind is counted. Cheap pre-checks (is there an ``@``, a run of digits) skip the
expensive matchers on the many documents that hold nothing to redact.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from groundup.curate.steps import Formatter
from groundup.curate.text import Document

PLACEHOLDERS = {
    "email": "<EMAIL>",
    "ip_address": "<IP_ADDRESS>",
    "phone_number": "<PHONE_NUMBER>",
    "credit_card": "<CREDIT_CARD>",
}
KINDS = tuple(PLACEHOLDERS)

EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\b"
)
IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.]\w)")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})(?![\w:])")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_DIGIT_RUN = re.compile(r"\d[\d ().+-]{5,}\d")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_public(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_global
    except ValueError:
        return False


@dataclass
class PIIRedactor(Formatter):
    """Replace PII with placeholders (``<EMAIL>``, ``<IP_ADDRESS>``, ``<PHONE_NUMBER>``, ``<CREDIT_CARD>``)."""

    name = "pii"

    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    """Which PII kinds to redact: email, ip_address, phone_number, credit_card."""
    phone_region: str = "US"
    """Region assumed for phone numbers written without a country code."""

    def __post_init__(self) -> None:
        self._kinds = frozenset(self.kinds)
        unknown = self._kinds - set(KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)} (known: {', '.join(KINDS)})")
        if "phone_number" in self._kinds:
            try:
                import phonenumbers  # noqa: F401
            except ImportError as e:
                raise ImportError("phone-number redaction needs phonenumbers: pip install 'groundup[data]'") from e

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        counts: dict[str, int] = {}
        kinds = self._kinds
        if "email" in kinds and "@" in text:
            text, n = EMAIL.subn(PLACEHOLDERS["email"], text)
            if n:
                counts["email"] = n
        has_digits = _DIGIT_RUN.search(text) is not None
        if "credit_card" in kinds and has_digits:
            text = self._sub(CARD, text, lambda s: luhn_valid(re.sub(r"\D", "", s)), "credit_card", counts)
        if "ip_address" in kinds:
            if "." in text and has_digits:
                text = self._sub(IPV4, text, _is_public, "ip_address", counts)
            if "::" in text or text.count(":") >= 7:
                text = self._sub(IPV6, text, lambda s: s.count(":") >= 2 and _is_public(s), "ip_address", counts)
        if "phone_number" in kinds and has_digits:
            text = self._phones(text, counts)
        return text, counts

    @staticmethod
    def _sub(pattern: re.Pattern, text: str, accept, kind: str, counts: dict[str, int]) -> str:
        def replace(m: re.Match) -> str:
            if accept(m.group(0)):
                counts[kind] = counts.get(kind, 0) + 1
                return PLACEHOLDERS[kind]
            return m.group(0)

        return pattern.sub(replace, text)

    def _phones(self, text: str, counts: dict[str, int]) -> str:
        import phonenumbers

        pieces, last, n = [], 0, 0
        for match in phonenumbers.PhoneNumberMatcher(text, self.phone_region, leniency=phonenumbers.Leniency.VALID):
            pieces.append(text[last:match.start])
            pieces.append(PLACEHOLDERS["phone_number"])
            last = match.end
            n += 1
        if not n:
            return text
        pieces.append(text[last:])
        counts["phone_number"] = counts.get("phone_number", 0) + n
        return "".join(pieces)

    def format(self, doc: Document) -> dict[str, int] | None:
        text, counts = self.redact(doc.text)
        if counts:
            doc.text = text
        return counts or None
