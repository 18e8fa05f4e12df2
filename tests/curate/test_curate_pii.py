"""PII redaction per kind (with counts) and Unicode fixing."""

from __future__ import annotations

import pytest

from groundup.curate import unicode as unicode_fix
from groundup.curate.pii import PIIRedactor, luhn_valid
from groundup.curate.text import Document


def test_pii_kinds_and_counts():
    text = ("Write to jane.doe+news@example.co.uk or bob@mail.example.com. Our server is 8.8.8.8, the router "
            "192.168.1.1 and 10.0.0.7 stay. IPv6 2001:4860:4860::8888 goes, fe80::1 and ::1 stay. Call "
            "(202) 456-1111 or +44 20 7946 0958. Card 4111 1111 1111 1111 goes, 4111 1111 1111 1112 stays. "
            "Version v1.2.3.4 and the time 12:30:45 stay.")
    redacted, counts = PIIRedactor().redact(text)
    assert counts == {"email": 2, "ip_address": 2, "phone_number": 2, "credit_card": 1}
    for gone in ("jane.doe", "bob@", "8.8.8.8", "2001:4860", "456-1111", "7946", "4111 1111 1111 1111 "):
        assert gone not in redacted
    for kept in ("192.168.1.1", "10.0.0.7", "fe80::1", "::1", "4111 1111 1111 1112", "v1.2.3.4", "12:30:45"):
        assert kept in redacted
    assert redacted.count("<EMAIL>") == 2 and redacted.count("<IP_ADDRESS>") == 2
    assert redacted.count("<PHONE_NUMBER>") == 2 and redacted.count("<CREDIT_CARD>") == 1


def test_pii_formatter_and_kinds():
    d = Document("Mail me at a@b.org please.")
    assert PIIRedactor().format(d) == {"email": 1} and d.text == "Mail me at <EMAIL> please."
    d = Document("Mail me at a@b.org please.")
    assert PIIRedactor(["ip_address"]).format(d) is None and "a@b.org" in d.text
    with pytest.raises(ValueError, match="unknown PII kinds"):
        PIIRedactor(["names"])


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize("use_ftfy", [True, False])
def test_unicode_fix(use_ftfy):
    assert unicode_fix.fix_text("CafÃ© â€œquotedâ€\x9d and naÃ¯ve", use_ftfy=use_ftfy) == "Café “quoted” and naïve"
    assert unicode_fix.fix_text("e\u0301cole", use_ftfy=use_ftfy) == "\u00e9cole"  # NFC
    assert unicode_fix.fix_text("ok\x00 text\x07", use_ftfy=use_ftfy) == "ok text"
    clean = "Привет, мир! — “fine” text\nline two"
    assert unicode_fix.fix_text(clean, use_ftfy=use_ftfy) == clean
