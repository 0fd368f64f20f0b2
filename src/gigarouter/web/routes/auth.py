"""Sign up, sign in, sign out: email + password, a server-side session, CSRF on every form."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from gigarouter.accounts.limits import Limit
from gigarouter.catalog.cards import ModelCard, find_card, load_cards
from gigarouter.errors import Conflict, Forbidden, GigarouterError, Overloaded, RateLimited
from gigarouter.web import catalog, security, snippets
from gigarouter.web.catalog import example_model
from gigarouter.web.context import WebContext, WebDep, check_csrf
from gigarouter.web.errors import WebError
from gigarouter.web.flash import flash_store
from gigarouter.web.limits import SlidingWindow
from gigarouter.web.templating import render
from gigarouter.web.users import EmailTaken, WebUser

router = APIRouter(include_in_schema=False)


def safe_next(value: str | None, default: str = "/dashboard") -> str:
    """Only same-site paths: ``/models/x#want`` yes, ``//evil.example`` or ``https://...`` no."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value


def redirect(web: WebContext, url: str) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    web.apply_cookies(response)
    return response


def accounts_on(web: WebContext):
    if web.services.accounts is None:
        raise WebError(404, "Accounts are off", "This server runs without accounts (open mode): "
                                                "no sign-up is needed to call its API.")
    return web.services.accounts


async def sign_in_as(web: WebContext, user: WebUser) -> None:
    """Start a fresh session (a new token, never one the browser brought) and rotate the CSRF cookie."""
    token = security.new_token()
    await run_in_threadpool(web.services.store.start_session, user.id, token)
    if web.session_token:
        await run_in_threadpool(web.services.store.end_session, web.session_token)
    web.user, web.session_token = user, token
    web.set_cookie(security.SESSION_COOKIE, token, max_age=security.SESSION_DAYS * 86400)
    web.rotate_csrf()


def model_of(next_url: str | None) -> ModelCard | None:
    """The catalog model a ``/models/<slug>...`` path is about (where a visitor came from), if any."""
    match = re.match(r"/models/([^/?#]+)", safe_next(next_url, ""))
    return load_cards().get(match.group(1)) if match else None


@router.get("/signup")
async def signup_form(request: Request, web: WebDep, next: str | None = None) -> HTMLResponse:
    accounts_on(web)
    if web.user:
        return redirect(web, "/dashboard")
    credit = request.app.state.settings.signup_credit_micro
    return render(request, "signup.html", {"email": "", "errors": [], "credit": credit,
                                           "next": safe_next(next, ""), "from_model": model_of(next)})


@router.post("/signup")
async def signup(request: Request, web: WebDep, email: Annotated[str, Form(max_length=320)] = "",
                 password: Annotated[str, Form(max_length=security.MAX_PASSWORD + 1)] = "",
                 next: Annotated[str, Form(max_length=500)] = "") -> Response:
    await check_csrf(request, web)
    accounts = accounts_on(web)
    email = security.normalize_email(email)
    errors = [e for e in (security.email_problem(email), security.password_problem(password, email)) if e]
    credit = request.app.state.settings.signup_credit_micro
    if not errors:
        try:
            user, key = await accounts.sign_up(email=email, password=password,
                                               client=request.client.host if request.client else None)
        except (EmailTaken, Conflict):
            errors.append("An account with this email exists already. Sign in instead.")
        except RateLimited:
            errors.append("Too many sign-ups from your network just now. Try again in an hour.")
        except Overloaded as exc:
            return render(request, "signup.html", {"email": email, "errors": [exc.message[:1].upper() +
                                                                             exc.message[1:] + "."],
                                                   "credit": credit}, status_code=503)
        except Forbidden as exc:
            errors.append(exc.message[:1].upper() + exc.message[1:] + ".")
        except GigarouterError as exc:
            errors.append(exc.message)
    next = safe_next(next, "")
    if errors:
        return render(request, "signup.html", {"email": email, "errors": errors, "credit": credit, "next": next,
                                               "from_model": model_of(next)}, status_code=400)
    await sign_in_as(web, user)
    # POST/redirect/GET: the key waits on the server for the page below, which shows it once;
    # reloading that page does not post the form again.
    flash_store(request.app).put(web.session_token, "signup", key)
    return redirect(web, "/signup/done" + (f"?next={quote(next, safe='/')}" if next else ""))


@router.get("/signup/done")
async def signup_done(request: Request, web: WebDep, next: str | None = None) -> Response:
    accounts = accounts_on(web)
    if web.user is None:
        return redirect(web, "/signin?next=/dashboard")
    key = flash_store(request.app).take(web.session_token, "signup")     # None on a reload
    next_url = safe_next(next, "")
    account = await accounts.account(web.user)
    models = getattr(request.app.state, "router", None)
    card = model_of(next_url)
    view = catalog.view(card, models, {}) if card else None
    served = view.served_name if view else example_model(models)
    card = card or find_card(served)
    base_url = str(request.base_url).rstrip("/")
    secret = key.key if key else None
    return render(request, "signup_done.html", {
        "key": key, "account": account, "card": card, "view": view, "model": served, "back": next_url,
        "curl": snippets.curl(card, model=served, base_url=base_url, api_key=secret) if card else None,
        "python": snippets.python(card, model=served, base_url=base_url, api_key=secret) if card else None,
    })


@router.get("/signin")
async def signin_form(request: Request, web: WebDep, next: str | None = None) -> HTMLResponse:
    accounts_on(web)
    if web.user:
        return redirect(web, safe_next(next))
    return render(request, "signin.html", {"email": "", "errors": [], "next": safe_next(next)})


def _limiter(request: Request, limit: Limit) -> SlidingWindow:
    """This process's window of sign-in attempts (per address and per email), at the gate's ``signin_limit``."""
    limiter = getattr(request.app.state, "web_signin_limiter", None)
    if limiter is None:
        limiter = request.app.state.web_signin_limiter = SlidingWindow(limit.requests, limit.period_s)
    return limiter


@router.post("/signin")
async def signin(request: Request, web: WebDep, email: Annotated[str, Form(max_length=320)] = "",
                 password: Annotated[str, Form(max_length=security.MAX_PASSWORD + 1)] = "",
                 next: Annotated[str, Form(max_length=500)] = "") -> Response:
    await check_csrf(request, web)
    accounts = accounts_on(web)
    email = security.normalize_email(email)
    target = safe_next(next)
    client = request.client.host if request.client else "unknown"
    limiter = _limiter(request, accounts.gate.options.signin_limit)
    # The address first: a client over its limit must not add entries for every email it makes up.
    too_many = not (limiter.allow(f"client:{client}") and limiter.allow(f"email:{email}"))
    if not too_many:
        try:      # and in the gate's limiter: shared by every gateway when it is Redis
            await accounts.gate.admit_sign_in(email=email, client=client)
        except RateLimited:
            too_many = True
    if too_many:
        errors = ["Too many sign-in attempts. Wait a few minutes and try again."]
        return render(request, "signin.html", {"email": email, "errors": errors, "next": target}, status_code=429)
    # No lookup for what cannot be an email (Postgres refuses NUL); the dummy hash still takes the time.
    user = None if security.email_problem(email) else await run_in_threadpool(accounts.store.user_by_email, email)
    try:
        ok = await accounts.argon2(security.verify_password, user.password_hash if user else None, password)
        if ok and user is not None and security.needs_rehash(user.password_hash):
            await run_in_threadpool(accounts.store.set_password_hash, user.id,
                                    await accounts.argon2(security.hash_password, password))
    except Overloaded as exc:
        errors = [exc.message[:1].upper() + exc.message[1:] + "."]
        return render(request, "signin.html", {"email": email, "errors": errors, "next": target}, status_code=503)
    if not ok or user is None:
        errors = ["That email and password do not match an account."]
        return render(request, "signin.html", {"email": email, "errors": errors, "next": target}, status_code=400)
    await sign_in_as(web, user)
    return redirect(web, target)


@router.post("/signout")
async def signout(request: Request, web: WebDep) -> Response:
    await check_csrf(request, web)
    if web.session_token and web.services.store is not None:
        await run_in_threadpool(web.services.store.end_session, web.session_token)
    web.delete_cookie(security.SESSION_COOKIE)
    web.rotate_csrf()
    return redirect(web, "/models?done=signed-out")
