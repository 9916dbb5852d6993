"""public_base on real Tornado requests: which URL wins, and whose forwarded headers count."""

from __future__ import annotations

import pytest
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from server_extension.handlers.public_url import (
    HUB_PREFIX_ENV,
    HUB_PUBLIC_URL_ENV,
    PUBLIC_URL,
    TRUSTED_PROXIES,
    parse_networks,
    public_base,
)
from workbench_core.discovery import PAGE_ORIGIN_HEADER


class _Context:
    def __init__(self, peer: str) -> None:
        self.address = (peer, 40000)
        self.remote_ip = peer
        self.protocol = "http"


class _Connection:
    def __init__(self, peer: str) -> None:
        self.context = _Context(peer)


def request(peer: str = "127.0.0.1", **headers: str) -> HTTPServerRequest:
    """A Tornado request as the HTTP server builds it, from ``peer``."""
    return HTTPServerRequest(
        start_line=RequestStartLine("GET", "/user/alice/agents/api/agents", "HTTP/1.1"),
        headers=HTTPHeaders({"Host": "127.0.0.1:41234", **headers}),
        connection=_Connection(peer))  # type: ignore[arg-type]


SETTINGS = {"base_url": "/user/alice/", TRUSTED_PROXIES: parse_networks(["127.0.0.1"])}


@pytest.fixture(autouse=True)
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HUB_PUBLIC_URL_ENV, raising=False)
    monkeypatch.delenv(HUB_PREFIX_ENV, raising=False)


def test_the_request_host_by_default() -> None:
    assert public_base(SETTINGS, request()) == "http://127.0.0.1:41234/user/alice/"


def test_first_forwarded_proto_from_a_trusted_proxy() -> None:
    assert public_base(SETTINGS, request(**{"X-Forwarded-Proto": "https, http"})).startswith(
        "https://")
    assert public_base(SETTINGS, request(**{"X-Scheme": "https"})).startswith("https://")


def test_forwarded_headers_from_anyone_else_do_not_count() -> None:
    forged = request("203.0.113.9", **{"X-Forwarded-Proto": "https",
                                       "X-Forwarded-Host": "evil.example"})
    assert public_base(SETTINGS, forged) == "http://127.0.0.1:41234/user/alice/"


def test_the_hub_public_url_and_service_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HUB_PUBLIC_URL_ENV, "https://hub.example.org/")
    monkeypatch.setenv(HUB_PREFIX_ENV, "/user/alice/")
    assert public_base(SETTINGS, request()) == "https://hub.example.org/user/alice/"


def test_an_explicit_public_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HUB_PUBLIC_URL_ENV, "https://hub.example.org/")
    page = request(**{PAGE_ORIGIN_HEADER: "https://page.example.org"})
    origin_only = {**SETTINGS, PUBLIC_URL: "https://lab.example.org"}
    assert public_base(origin_only, page, page_origin=True) == (
        "https://lab.example.org/user/alice/")
    with_path = {**SETTINGS, PUBLIC_URL: "https://example.org/workbench"}
    assert public_base(with_path, page) == "https://example.org/workbench/"


def test_the_page_origin_only_when_allowed() -> None:
    page = request(**{PAGE_ORIGIN_HEADER: "https://page.example.org"})
    assert public_base(SETTINGS, page, page_origin=True) == (
        "https://page.example.org/user/alice/")
    assert public_base(SETTINGS, page).startswith("http://127.0.0.1:41234/")
