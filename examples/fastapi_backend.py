"""Your FastAPI backend in front of tokenbridge: it holds the API key, the browser gets a stream token.

    pip install fastapi uvicorn ./clients/python
    export TOKENBRIDGE_URL=http://127.0.0.1:8000 TOKENBRIDGE_API_KEY=dev-…
    uvicorn --factory --app-dir examples fastapi_backend:create_app --port 5000

Then open http://127.0.0.1:5000/ (the page is examples/chat.html). The browser reads the answer from
tokenbridge directly, so tokenbridge needs this page's origin in CORS_ORIGINS (``CORS_ORIGINS=http://127.0.0.1:5000``).
TOKENBRIDGE_PUBLIC_URL is tokenbridge's address as browsers reach it, when it differs from TOKENBRIDGE_URL.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel
from tokenbridge_client import AsyncTokenbridgeClient, TokenbridgeAPIError

CHAT_PAGE = Path(__file__).with_name("chat.html")


class Question(BaseModel):
    prompt: str
    conversation_id: str | None = None


def create_app(tokenbridge_url: str | None = None, api_key: str | None = None) -> FastAPI:
    url = tokenbridge_url or os.environ["TOKENBRIDGE_URL"]
    public_url = (os.environ.get("TOKENBRIDGE_PUBLIC_URL") or url).rstrip("/")
    tokenbridge = AsyncTokenbridgeClient(url, api_key or os.environ["TOKENBRIDGE_API_KEY"])
    model = os.environ.get("TOKENBRIDGE_MODEL", "echo")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await tokenbridge.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse)
    async def chat() -> str:
        return CHAT_PAGE.read_text()

    @app.get("/tokenbridge.js")
    async def js_client() -> RedirectResponse:
        # The page loads the JS client from tokenbridge, at the address browsers reach it by.
        return RedirectResponse(f"{public_url}/static/tokenbridge.js")

    @app.post("/answers", status_code=201)
    async def start_answer(question: Question) -> dict[str, Any]:
        if not question.prompt.strip():
            raise HTTPException(422, "Type a question first.")
        # Here: who is signed in, which conversation this is (session_id), which model they may use.
        created = await tokenbridge.submit(model, question.prompt, session_id=question.conversation_id)
        # Everything the browser needs to read this one answer, and nothing else: never the API key.
        return {
            "id": created["id"],
            "events_url": public_url + created["events_url"],
            "ws_url": public_url + created["ws_url"],
            "stream_token": created["stream_token"],
        }

    @app.post("/answers/{generation_id}/token")
    async def fresh_token(generation_id: str) -> dict[str, Any]:
        # Here: check that this generation belongs to the signed-in user before minting a token for it.
        return await tokenbridge.token(generation_id)  # {"stream_token": "…", "expires_at": …}

    @app.exception_handler(TokenbridgeAPIError)
    async def tokenbridge_refused(request: Request, error: TokenbridgeAPIError) -> JSONResponse:
        # Tokenbridge's 404 and 422 are the browser's to know; anything else is this backend's problem.
        status = error.status if error.status in (404, 422, 429) else 502
        return JSONResponse({"error": {"code": error.code, "message": error.message}}, status_code=status)

    return app
