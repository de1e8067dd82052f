"""The limits a submission is held to: its images, and token budgets and caps on running generations, of the API key
and of the end user it names (a request's ``user``), so that one user of a backend key cannot take what the others
need.

The caps are checked where the generation is stored (``scripts.SUBMIT`` on a single Redis, ``take_running_slots``
on a cluster) and released when it ends (``workers.commit``); the budgets are counted by the consumers
(``TokenBudgetProcessor``) and checked here before anything is stored.
"""

from __future__ import annotations

from flask import g

from app.errors import ApiError, invalid
from app.services import services
from bridge import budgets, keys, scripts, streams
from bridge.budgets import Budget
from bridge.content import ImagePart, data_uri
from bridge.generation import GenerationRequest


def check_images(req: GenerationRequest) -> None:
    """At most ``MAX_IMAGES_PER_REQUEST`` image parts (422), none inline above ``MAX_IMAGE_BYTES`` (413)."""
    settings = services().settings
    images = [
        (f"messages.{i}.content.{j}.image_url.url", part.image_url.url)
        for i, message in enumerate(req.messages or [])
        for j, part in enumerate(message.content if isinstance(message.content, list) else [])
        if isinstance(part, ImagePart)
    ]
    if len(images) > settings.max_images_per_request:
        message = f"at most {settings.max_images_per_request} image parts, not {len(images)}"
        raise invalid([{"field": "messages", "message": message, "type": "too_many_images"}])
    most = settings.max_image_bytes
    too_large = [
        {"field": field, "message": f"{inline.size} bytes, more than {most}", "type": "image_too_large"}
        for field, url in images
        if (inline := data_uri(url)) is not None and inline.size > most
    ]
    if too_large:
        message = f"An inline image is larger than {most} bytes (MAX_IMAGE_BYTES): {too_large[0]['field']}."
        raise ApiError(413, "image_too_large", message, details=too_large)


def user_budget() -> Budget:
    """The token budget of each end user of a key (``TOKEN_BUDGET_PER_USER_PER_MINUTE``, ``_PER_DAY``)."""
    settings = services().settings
    return Budget(settings.token_budget_per_user_per_minute, settings.token_budget_per_user_per_day)


def check_budget(user: str) -> None:
    """429 while the key's token budget, or its end user's (``user`` as recorded; '' for none), is spent for this
    minute or day; both in one round trip."""
    principal = g.principal
    if principal.kind != "api_key":
        return
    spenders = [(principal.name, principal.budget)] if principal.budget.limited else []
    per_user = user_budget()
    if user and per_user.limited:
        spenders.append((keys.user_budget_name(principal.name, user), per_user))
    if not spenders:
        return
    for (name, budget), spent in zip(spenders, budgets.usages(services().redis, spenders), strict=True):
        window = spent.exceeded
        if window is None:
            continue
        limit = budget.per_day if window == "day" else budget.per_minute
        retry = {"Retry-After": str(spent.retry_after_s)}
        if name == principal.name:
            message = f"This API key has used its {limit} tokens for this {window}; retry in {spent.retry_after_s} s."
            raise ApiError(429, "token_budget_exceeded", message, headers=retry)
        message = f"The user {user!r} has used its {limit} tokens for this {window}; retry in {spent.retry_after_s} s."
        raise ApiError(429, "user_token_budget_exceeded", message, headers=retry)


def _expire_ms() -> int:
    # A slot is released when the generation ends; one whose end was never seen lapses after this long.
    settings = services().settings
    return int((settings.generation_max_duration_s + settings.queue_timeout_s + 60) * 1000)


def running_cap() -> streams.RunningCap | None:
    """The key's cap on generations that have not ended (``MAX_RUNNING_PER_KEY``), or None without one."""
    limit = services().settings.max_running_per_key
    if not limit or g.principal.kind != "api_key":
        return None
    return streams.RunningCap(keys.key_running(g.principal.name), limit, _expire_ms())


def user_running_cap(user: str) -> streams.RunningCap | None:
    """The cap of one end user of the key (``MAX_RUNNING_PER_USER``; ``user`` as recorded), or None."""
    limit = services().settings.max_running_per_user
    if not limit or not user or g.principal.kind != "api_key":
        return None
    return streams.RunningCap(keys.user_running(g.principal.name, user), limit, _expire_ms())


def too_many_running() -> ApiError:
    limit = services().settings.max_running_per_key
    return _running_refusal("too_many_running", f"This API key already has {limit} generations running")


def user_too_many_running() -> ApiError:
    limit = services().settings.max_running_per_user
    return _running_refusal(
        "user_too_many_running", f"This user already has {limit} generations running with this API key"
    )


def _running_refusal(code: str, what: str) -> ApiError:
    return ApiError(429, code, f"{what}; wait for one to finish.", headers={"Retry-After": "1"})


def take_running_slots(generation_id: str, user: str) -> tuple[str, ...]:
    """Count the generation against the running caps of its key and its end user, a round trip each (a cluster);
    429 when one is reached (and nothing is left taken). Returns the sorted sets it is counted in."""
    client = services().redis
    taken: list[str] = []
    for cap, refusal in ((running_cap(), too_many_running), (user_running_cap(user), user_too_many_running)):
        if cap is None:
            continue
        slot = scripts.take_slot(client, cap.key, generation_id, limit=cap.limit, expire_ms=cap.expire_ms)
        if slot is scripts.Status.FULL:
            for key in taken:
                client.zrem(key, generation_id)
            raise refusal()
        taken.append(cap.key)
    return tuple(taken)
