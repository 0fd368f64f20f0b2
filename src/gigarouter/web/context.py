"""Per-request web state (who is signed in, the CSRF token, cookies to set) and the app-wide services.

``WebDep`` is the dependency every page takes. It reads the session cookie
(one indexed query when present, none otherwise) and makes sure the browser
holds a CSRF cookie. ``check_csrf`` guards every state-changing request.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from gigarouter.accounts import keys
from gigarouter.settings import Settings
from gigarouter.web import security
from gigarouter.web.accounts import AccountsPort, accounts_port
from gigarouter.web.errors import WebError
from gigarouter.web.users import WebStore, WebUser

#: Messages a redirect may ask a page to show (``?done=<name>``); fixed text, so nothing can be injected.
FLASH = {
    "signed-out": "You are signed out.",
    "key-revoked": "The key is revoked; requests that use it now get 401.",
    "voted": "Thanks: your vote is counted.",
    "unvoted": "Your vote is withdrawn.",
}


@dataclass
class WebServices:
    """Built once, on the first web request (the gate exists only once the app's lifespan has started)."""

    key: bytes
    accounts: AccountsPort | None

    @property
    def store(self) -> WebStore | None:
        return self.accounts.store if self.accounts else None

    @property
    def onboarding(self):
        """Onboarding runs and model statuses (same database as the accounts); None in open mode."""
        from gigarouter.onboarding.store import OnboardingStore

        if self.accounts is None:
            return None
        return OnboardingStore(self.accounts.gate.engine, liveness=self.accounts.gate.liveness)


def services(app: FastAPI) -> WebServices:
    built = getattr(app.state, "web_services", None)
    if built is None:
        settings = app.state.settings
        accounts = accounts_port(getattr(app.state, "gate", None), settings)
        built = WebServices(key=security.web_key(_secret(settings, accounts)), accounts=accounts)
        app.state.web_services = built
    return built


def _secret(settings: Settings, accounts: AccountsPort | None) -> bytes:
    """The accounts' server secret when accounts are on (shared by every worker); in open mode the
    configured secret, else a per-process one (open mode is one loopback process: only try-it posts)."""
    if accounts is not None or settings.server_secret:
        return keys.server_secret(settings)
    return secrets.token_bytes(32)


@dataclass
class WebContext:
    services: WebServices
    secure: bool
    csrf_cookie: str
    user: WebUser | None = None
    session_token: str | None = None
    flash: str | None = None
    _cookies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def csrf_token(self) -> str:
        return security.csrf_for(self.services.key, self.csrf_cookie)

    @property
    def accounts_enabled(self) -> bool:
        return self.services.accounts is not None

    def set_cookie(self, name: str, value: str, *, max_age: int | None) -> None:
        # Lax, not Strict: a Strict CSRF cookie is missing on arrival from another site, and replacing it
        # then would void the forms open in other tabs. The HMAC, not SameSite, is what stops forgery.
        self._cookies.append(dict(key=name, value=value, max_age=max_age, httponly=True, secure=self.secure,
                                  samesite="lax", path="/"))

    def delete_cookie(self, name: str) -> None:
        self._cookies.append(dict(key=name, value="", max_age=0, httponly=True, secure=self.secure,
                                  samesite="lax", path="/"))

    def rotate_csrf(self) -> None:
        """A fresh CSRF cookie on sign-in and sign-out, so a token seen before cannot be reused after."""
        self.csrf_cookie = security.new_token()
        self.set_cookie(security.CSRF_COOKIE, self.csrf_cookie, max_age=None)

    def apply_cookies(self, response: Response) -> None:
        for cookie in self._cookies:
            response.set_cookie(**cookie)


async def get_web(request: Request) -> WebContext:
    svc = services(request.app)
    secure = request.url.scheme == "https"
    cookie = request.cookies.get(security.CSRF_COOKIE, "")
    fresh = not (20 <= len(cookie) <= 100)
    web = WebContext(services=svc, secure=secure, csrf_cookie=security.new_token() if fresh else cookie,
                     flash=FLASH.get(request.query_params.get("done", "")))
    if fresh:
        web.set_cookie(security.CSRF_COOKIE, web.csrf_cookie, max_age=None)
    token = request.cookies.get(security.SESSION_COOKIE)
    if token and svc.store is not None and len(token) <= 100:
        web.user = await run_in_threadpool(svc.store.session_user, token)
        web.session_token = token if web.user else None
    request.state.web = web
    return web


async def check_csrf(request: Request, web: WebContext) -> None:
    """Refuse a state-changing request that does not carry this browser's CSRF token (403)."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.url.netloc:
        raise WebError(403, "Request refused", "Forms on this site only accept submissions from this site.")
    submitted = request.headers.get(security.CSRF_HEADER)
    if submitted is None and "form" in request.headers.get("content-type", ""):
        submitted = (await request.form()).get(security.CSRF_FIELD)
    if not security.csrf_valid(web.services.key, request.cookies.get(security.CSRF_COOKIE),
                               submitted if isinstance(submitted, str) else None):
        raise WebError(403, "Form expired", "The form expired or did not come from this site. "
                                            "Reload the page and try again.")


WebDep = Annotated[WebContext, Depends(get_web)]
