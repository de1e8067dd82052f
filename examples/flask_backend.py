"""Your Flask backend in front of tokenbridge: it holds the API key, the browser gets a stream token.

    pip install flask ./clients/python
    TOKENBRIDGE_URL=http://127.0.0.1:8000 TOKENBRIDGE_API_KEY=dev-… flask --app examples/flask_backend run

Then open http://127.0.0.1:5000/ (the page is examples/chat.html). The browser reads the answer from
tokenbridge directly, so tokenbridge needs this page's origin in CORS_ORIGINS (``CORS_ORIGINS=http://127.0.0.1:5000``).
TOKENBRIDGE_PUBLIC_URL is tokenbridge's address as browsers reach it, when it differs from TOKENBRIDGE_URL.
The README shows the part between the ``--8<--`` marks; a test keeps the two the same.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, Response, redirect, request
from flask.typing import ResponseReturnValue
from tokenbridge_client import TokenbridgeAPIError, TokenbridgeClient

CHAT_PAGE = Path(__file__).with_name("chat.html")


def create_app(tokenbridge_url: str | None = None, api_key: str | None = None) -> Flask:
    app = Flask(__name__)
    url = tokenbridge_url or os.environ["TOKENBRIDGE_URL"]
    key = api_key or os.environ["TOKENBRIDGE_API_KEY"]
    public_url = (os.environ.get("TOKENBRIDGE_PUBLIC_URL") or url).rstrip("/")
    model = os.environ.get("TOKENBRIDGE_MODEL", "echo")

    @app.get("/")
    def chat() -> Response:
        return Response(CHAT_PAGE.read_text(), mimetype="text/html")

    # --8<-- [start:backend]
    tokenbridge = TokenbridgeClient(url, key)  # one connection pool for every request

    @app.get("/tokenbridge.js")
    def js_client() -> ResponseReturnValue:
        # The page loads the JS client from tokenbridge, at the address browsers reach it by.
        return redirect(f"{public_url}/static/tokenbridge.js")

    @app.post("/answers")
    def start_answer() -> tuple[dict[str, Any], int]:
        body = request.get_json(silent=True) or {}
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return {"error": {"code": "prompt_required", "message": "Type a question first."}}, 422
        # Here: who is signed in, which conversation this is (session_id), which model they may use.
        created = tokenbridge.submit(model, prompt, session_id=body.get("conversation_id"))
        # Everything the browser needs to read this one answer, and nothing else: never the API key.
        return {
            "id": created["id"],
            "events_url": public_url + created["events_url"],
            "ws_url": public_url + created["ws_url"],
            "stream_token": created["stream_token"],
        }, 201

    @app.post("/answers/<generation_id>/token")
    def fresh_token(generation_id: str) -> dict[str, Any]:
        # Here: check that this generation belongs to the signed-in user before minting a token for it.
        return tokenbridge.token(generation_id)  # {"stream_token": "…", "expires_at": …}

    @app.errorhandler(TokenbridgeAPIError)
    def tokenbridge_refused(error: TokenbridgeAPIError) -> tuple[dict[str, Any], int]:
        # Tokenbridge's 404 and 422 are the browser's to know; anything else is this backend's problem.
        status = error.status if error.status in (404, 422, 429) else 502
        return {"error": {"code": error.code, "message": error.message}}, status

    # --8<-- [end:backend]
    app.extensions["tokenbridge"] = tokenbridge  # tokenbridge.close() at exit
    return app
