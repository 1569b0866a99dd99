"""The operator files in accounting/ (schemas and queries are run on real servers in test_accounting_servers)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(*parts):
    with open(os.path.join(ROOT, "accounting", *parts)) as stream:
        return stream.read()


def test_radius_dictionary_defines_mediaproxy_attributes():
    text = read("radius", "dictionary")
    for name, number in [("Media-Codecs", 233), ("Media-Info", 234), ("Sip-User-Agents", 235), ("Sip-Applications", 236)]:
        assert f"ATTRIBUTE\t{name}" in text and f"\t{number}\tstring" in text
    assert "VALUE\tAcct-Status-Type\tUpdate\t\t3" in text
