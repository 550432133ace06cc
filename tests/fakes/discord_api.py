"""A small fake Discord on 127.0.0.1: the REST routes svibot's bot uses plus a gateway websocket.

The real discord.py `Client` talks to it once `discord.http.Route.BASE` points at `api_base` and
the gateway URL (served by `GET /gateway/bot`) is used for the websocket. Like Discord it refuses
message content over 2000 characters, and it works out whom each message would ping from its
content and its `allowed_mentions` (none given: every mention in the content pings).
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import secrets
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

DISCORD_EPOCH_MS = 1420070400000
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # a guild without boosts
CONTENT_CHARS = 2000
USER_MENTION = re.compile(r"<@!?(\d+)>")
ROLE_MENTION = re.compile(r"<@&(\d+)>")


def pings(content: str, allowed_mentions: dict[str, Any] | None) -> set[str]:
    """Whom a new message pings: "everyone", "user:<id>", "role:<id>" (Discord's allowed_mentions rules)."""
    parse = {"users", "roles", "everyone"} if allowed_mentions is None else set(allowed_mentions.get("parse") or ())
    users = set((allowed_mentions or {}).get("users") or ())
    roles = set((allowed_mentions or {}).get("roles") or ())
    out = set()
    if "everyone" in parse and ("@everyone" in content or "@here" in content):
        out.add("everyone")
    out |= {f"user:{u}" for u in USER_MENTION.findall(content) if "users" in parse or u in users}
    out |= {f"role:{r}" for r in ROLE_MENTION.findall(content) if "roles" in parse or r in roles}
    return out


def content_error(content: str) -> dict[str, Any]:
    return {"message": "Invalid Form Body", "code": 50035, "errors": {"content": {"_errors": [
        {"code": "BASE_TYPE_MAX_LENGTH", "message": f"Must be {CONTENT_CHARS} or fewer in length."}]}}}


def too_long(content: object) -> bool:
    return isinstance(content, str) and len(content.encode("utf-16-le")) // 2 > CONTENT_CHARS

# Gateway opcodes (https://discord.com/developers/docs/topics/opcodes-and-status-codes)
OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_RESUME = 0, 1, 2, 6
OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK = 9, 10, 11


def snowflake_at(t: float, counter: int = 0) -> int:
    """A Discord id whose embedded timestamp is `t` (discord.py derives `created_at` from it)."""
    return ((int(t * 1000) - DISCORD_EPOCH_MS) << 22) | (counter & 0x3FFFFF)


@dataclass
class Upload:
    filename: str
    data: bytes
    content_type: str | None
    id: int = 0  # the attachment id Discord gives it, kept across edits

    @property
    def spoiler(self) -> bool:
        return self.filename.startswith("SPOILER_")


@dataclass
class FakeMessage:
    """One message the bot posted in a channel, with every later edit kept in `edits`."""

    id: int
    channel_id: int
    content: str
    uploads: list[Upload]
    components: list[dict[str, Any]]
    edits: list[dict[str, Any]] = field(default_factory=list)
    history: list[Upload] = field(default_factory=list)  # every file ever attached, in order
    via: str = "channel"  # or "followup" / "original"
    token: str | None = None  # the interaction token for webhook messages
    allowed_mentions: dict[str, Any] | None = None  # as sent when the message was created
    pinged: set[str] = field(default_factory=set)  # whom the message pinged when it was created

    def payload(self, fake: "FakeDiscord") -> dict[str, Any]:
        return {
            "id": str(self.id), "channel_id": str(self.channel_id), "guild_id": str(fake.guild_id),
            "author": fake.bot_user, "content": self.content, "timestamp": _iso(time.time()),
            "edited_timestamp": _iso(time.time()) if self.edits else None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [], "pinned": False, "type": 0,
            "embeds": [], "components": self.components, "flags": 0,
            "attachments": [{"id": str(u.id), "filename": u.filename, "size": len(u.data),
                             "url": f"{fake.http_base}/attachments/{u.id}/{u.filename}",
                             "proxy_url": f"{fake.http_base}/attachments/{u.id}/{u.filename}",
                             "content_type": u.content_type} for u in self.uploads],
        }


@dataclass
class Callback:
    """An interaction response (`POST /interactions/{id}/{token}/callback`)."""

    interaction_id: int
    type: int  # 4 message, 5 deferred, 6 deferred update, 7 update, 9 modal
    data: dict[str, Any]


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py only parses a body whose content-type is exactly "application/json" (no charset)
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={"Content-Type": "application/json", **(headers or {})})


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))


class FakeDiscord:
    """REST + gateway. Start with `async with FakeDiscord() as fake:`.

    Records what the bot did (`messages`, `callbacks`, `requests`) and can inject failures:
    oversize uploads get a 413 like the real API, `rate_limit(...)` answers one request with 429,
    and `expire_tokens()` makes every interaction token invalid as after 15 minutes.
    """

    def __init__(self, *, token: str = "fake-token.abc.xyz", upload_limit: int = DEFAULT_UPLOAD_LIMIT,
                 nsfw_channel: bool = False) -> None:
        self.token = token
        self.upload_limit = upload_limit
        now = time.time()
        ids = itertools.count(1)
        self._ids = ids
        self.application_id = snowflake_at(now - 86400, next(ids))
        self.guild_id = snowflake_at(now - 86400, next(ids))
        self.channel_id = snowflake_at(now - 86400, next(ids))
        self.bot_user = {"id": str(self.application_id), "username": "svibot", "discriminator": "0",
                         "global_name": "svibot", "avatar": None, "bot": True, "flags": 0}
        self.nsfw_channel = nsfw_channel
        self.messages: dict[int, FakeMessage] = {}
        self.callbacks: list[Callback] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.request_times: list[float] = []  # time.monotonic() of each entry in `requests`
        self.commands: dict[str, list[dict[str, Any]]] = {}  # scope ("global" or guild id) -> commands
        self.user_locales: dict[int, str] = {}  # user id -> their client's locale (default en-US)
        self.attachments: dict[str, bytes] = {}
        self.rejected_uploads: list[int] = []  # sizes of uploads refused with 413
        self.rejected_content: list[int] = []  # lengths of contents refused as too long
        self.writes: list[dict[str, Any]] = []  # every message body the bot sent (create, edit, callback)
        self._rate_limits: list[tuple[str, re.Pattern[str], float]] = []
        self._refusals: list[tuple[str, re.Pattern[str], int]] = []
        self._tokens_expired = False
        self._interaction_tokens: dict[str, int] = {}  # token -> interaction id
        self._sockets: list[web.WebSocketResponse] = []
        self._seq = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> "FakeDiscord":
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{a}/{name}", self._cdn)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.http_base}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # -- knobs for tests -----------------------------------------------------------------------
    def rate_limit(self, method: str, path_regex: str, retry_after: float = 0.3) -> None:
        """Answer the next matching request with a 429 (the client must wait and retry)."""
        self._rate_limits.append((method, re.compile(path_regex), retry_after))

    def refuse(self, method: str, path_regex: str, status: int = 400) -> None:
        """Answer the next matching request with an error `status` (e.g. a refused edit)."""
        self._refusals.append((method, re.compile(path_regex), status))

    def expire_tokens(self) -> None:
        """Every interaction token from now on is invalid (as after Discord's 15 minutes)."""
        self._tokens_expired = True

    def add_attachment(self, filename: str, data: bytes, content_type: str | None) -> dict[str, Any]:
        """Host a user's upload on the fake CDN; returns its attachment payload."""
        att_id = snowflake_at(time.time(), next(self._ids))
        self.attachments[f"{att_id}/{filename}"] = data
        url = f"{self.http_base}/attachments/{att_id}/{filename}"
        payload = {"id": str(att_id), "filename": filename, "size": len(data), "url": url, "proxy_url": url}
        if content_type is not None:
            payload["content_type"] = content_type
        return payload

    @property
    def connected(self) -> bool:
        """A client has identified on the gateway."""
        return bool(self._sockets)

    def channel_messages(self) -> list[FakeMessage]:
        return [m for m in self.messages.values() if m.via == "channel"]

    async def wait_for(self, predicate: Any, timeout: float = 20.0) -> None:
        """Wait until `predicate()` holds (polled; the bot's work is spread over REST and gateway)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake Discord: condition not met within {timeout} s; "
                                   f"last requests {self.requests[-5:]}")
            await asyncio.sleep(0.02)

    # -- gateway -------------------------------------------------------------------------------
    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        for ws in list(self._sockets):
            await self._send(ws, {"op": OP_DISPATCH, "t": event, "d": data})

    async def _send(self, ws: web.WebSocketResponse, payload: dict[str, Any]) -> None:
        if payload["op"] == OP_DISPATCH:
            self._seq += 1
            payload["s"] = self._seq
        else:
            payload.setdefault("s", None)
        payload.setdefault("t", None)
        # zlib-stream, as discord.py asks for: one deflate stream per connection, each
        # message ending in a sync flush (the 00 00 ff ff suffix the client waits for).
        compressor = ws._svibot_zlib  # type: ignore[attr-defined]
        await ws.send_bytes(compressor.compress(json.dumps(payload).encode()) + compressor.flush(zlib.Z_SYNC_FLUSH))

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        ws._svibot_zlib = zlib.compressobj()  # type: ignore[attr-defined]
        await self._send(ws, {"op": OP_HELLO, "d": {"heartbeat_interval": 41250}})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            op = frame["op"]
            if op == OP_HEARTBEAT:
                await self._send(ws, {"op": OP_HEARTBEAT_ACK, "d": None})
            elif op == OP_IDENTIFY:
                if frame["d"]["token"] != self.token:
                    await ws.close(code=4004, message=b"Authentication failed.")
                    break
                self._sockets.append(ws)
                await self._send(ws, {"op": OP_DISPATCH, "t": "READY", "d": self._ready()})
                await self._send(ws, {"op": OP_DISPATCH, "t": "GUILD_CREATE", "d": self._guild()})
            elif op == OP_RESUME:
                await self._send(ws, {"op": OP_INVALID_SESSION, "d": False})
        if ws in self._sockets:
            self._sockets.remove(ws)
        return ws

    def _ready(self) -> dict[str, Any]:
        return {"v": 10, "user": self.bot_user, "guilds": [{"id": str(self.guild_id), "unavailable": True}],
                "session_id": "fake-session", "resume_gateway_url": self.gateway_url,
                "application": {"id": str(self.application_id), "flags": 0}}

    def channel_payload(self) -> dict[str, Any]:
        return {"id": str(self.channel_id), "type": 0, "name": "stories", "position": 0,
                "guild_id": str(self.guild_id), "permission_overwrites": [], "nsfw": self.nsfw_channel,
                "parent_id": None, "topic": None, "last_message_id": None, "rate_limit_per_user": 0}

    def _guild(self) -> dict[str, Any]:
        return {"id": str(self.guild_id), "name": "test guild", "owner_id": "1", "unavailable": False,
                "large": False, "member_count": 2, "premium_tier": 0, "features": [], "emojis": [],
                "stickers": [], "members": [], "voice_states": [], "presences": [], "threads": [],
                "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
                "roles": [{"id": str(self.guild_id), "name": "@everyone", "permissions": str(0x800 | 0x400 | 0x8000),
                           "position": 0, "color": 0, "hoist": False, "managed": False, "mentionable": False}],
                "channels": [self.channel_payload()]}

    # -- REST ----------------------------------------------------------------------------------
    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        response = await self._route(request, path)
        self.requests.append((request.method, path, response.status))
        self.request_times.append(time.monotonic())
        return response

    async def _route(self, request: web.Request, path: str) -> web.StreamResponse:
        for i, (method, pattern, retry_after) in enumerate(self._rate_limits):
            if method == request.method and pattern.fullmatch(path):
                del self._rate_limits[i]
                return _json(
                    {"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
                    status=429, headers={"Retry-After": str(retry_after), "X-RateLimit-Scope": "user",
                             # without a Via header discord.py takes a 429 for a Cloudflare ban
                             "Via": "1.1 google"})
        for i, (method, pattern, status) in enumerate(self._refusals):
            if method == request.method and pattern.fullmatch(path):
                del self._refusals[i]
                return _json({"message": "Invalid Form Body", "code": 50035}, status=status)
        is_webhook = path.startswith("/interactions/") or path.startswith("/webhooks/")
        if not is_webhook and request.headers.get("Authorization") != f"Bot {self.token}":
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        m = request.method
        if m == "GET" and path == "/users/@me":
            return _json(self.bot_user)
        if m == "GET" and path == "/oauth2/applications/@me":
            return _json({"id": str(self.application_id), "name": "svibot", "icon": None,
                                      "description": "", "bot_public": True, "bot_require_code_grant": False,
                                      "owner": self.bot_user, "verify_key": "0" * 64, "flags": 0,
                                      "rpc_origins": [], "team": None})
        if m == "GET" and path == "/gateway/bot":
            return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": {
                "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}})
        if m == "GET" and path == f"/channels/{self.channel_id}":
            return _json(self.channel_payload())
        if mt := re.fullmatch(r"/applications/(\d+)(?:/guilds/(\d+))?/commands", path):
            if m == "PUT":
                body = await request.json()
                scope = mt.group(2) or "global"
                self.commands[scope] = [{"description": "", "options": [], **c,
                                         "id": str(snowflake_at(time.time(), next(self._ids))),
                                         "application_id": str(self.application_id), "version": "1",
                                         "default_member_permissions": None} for c in body]
                return _json(self.commands[scope])
            return _json(self.commands.get(mt.group(2) or "global", []))
        if mt := re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path):
            if self._tokens_expired:
                return _json({"message": "Unknown interaction", "code": 10062}, status=404)
            body, uploads = await self._read_body(request)
            data = body.get("data") or {}
            if body["type"] in (4, 7):
                self.writes.append(data)
                if too_long(data.get("content")):
                    self.rejected_content.append(len(data["content"]))
                    return _json(content_error(data["content"]), status=400)
            self.callbacks.append(Callback(int(mt.group(1)), body["type"], data))
            answer: dict[str, Any] = {"interaction": {
                "id": mt.group(1), "type": 2, "response_message_loading": body["type"] == 5,
                "response_message_ephemeral": bool(data.get("flags", 0) & 64)}}
            if body["type"] in (4, 5):  # a message (or its "thinking..." placeholder) under the command
                msg = FakeMessage(snowflake_at(time.time(), next(self._ids)), self.channel_id,
                                  data.get("content") or "", uploads, data.get("components") or [],
                                  via="original", token=mt.group(2), allowed_mentions=data.get("allowed_mentions"),
                                  pinged=pings(data.get("content") or "", data.get("allowed_mentions")))
                self.messages[msg.id] = msg
                answer["interaction"]["response_message_id"] = str(msg.id)
                answer["resource"] = {"type": body["type"], "message": msg.payload(self)}
            return _json(answer)
        if mt := re.fullmatch(r"/webhooks/(\d+)/([^/]+)(?:/messages/(@original|\d+))?", path):
            if self._tokens_expired:
                return _json({"message": "Invalid Webhook Token", "code": 50027}, status=401)
            return await self._message_write(request, self.channel_id, mt.group(3),
                                             via="followup" if mt.group(3) is None else "original",
                                             token=mt.group(2))
        if mt := re.fullmatch(r"/channels/(\d+)/messages(?:/(\d+))?", path):
            if int(mt.group(1)) != self.channel_id:
                return _json({"message": "Unknown Channel", "code": 10003}, status=404)
            return await self._message_write(request, self.channel_id, mt.group(2), via="channel")
        return _json({"message": f"fake Discord has no route {m} {path}", "code": 0}, status=404)

    async def _read_body(self, request: web.Request) -> tuple[dict[str, Any], list[Upload]]:
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            body = json.loads(form["payload_json"])  # type: ignore[arg-type]
            uploads = [Upload(f.filename, f.file.read(), f.content_type, snowflake_at(time.time(), next(self._ids)))
                       for k, f in form.items() if k.startswith("files[")]
            return body, uploads
        if request.can_read_body:
            return await request.json(), []
        return {}, []

    async def _message_write(self, request: web.Request, channel_id: int, message_id: str | None,
                             *, via: str, token: str | None = None) -> web.Response:
        if request.method == "DELETE":
            self.messages.pop(int(message_id or 0), None)
            return web.Response(status=204)
        body, uploads = await self._read_body(request)
        self.writes.append(body)
        if too_long(body.get("content")):
            self.rejected_content.append(len(body["content"]))
            return _json(content_error(body["content"]), status=400)
        total = sum(len(u.data) for u in uploads)
        if total > self.upload_limit:
            self.rejected_uploads.append(total)
            return _json({"message": "Request entity too large", "code": 40005}, status=413)
        if request.method == "POST" and message_id is None:
            msg_id = snowflake_at(time.time(), next(self._ids))
            content = body.get("content") or ""
            msg = FakeMessage(msg_id, channel_id, content, uploads, body.get("components") or [],
                              via=via, token=token, allowed_mentions=body.get("allowed_mentions"),
                              pinged=pings(content, body.get("allowed_mentions")))
            msg.history.extend(uploads)
            self.messages[msg_id] = msg
            return _json(msg.payload(self))
        if request.method == "PATCH":
            key = None if message_id == "@original" else int(message_id or 0)
            msg = self.messages.get(key) if key is not None else next(
                (m for m in self.messages.values() if m.token == token and m.via == "original"), None)
            if msg is None:
                if key is not None:
                    return _json({"message": "Unknown Message", "code": 10008}, status=404)
                msg = FakeMessage(snowflake_at(time.time(), next(self._ids)), channel_id, "", [], [], via=via,
                                  token=token)
                self.messages[msg.id] = msg
            msg.edits.append(body)
            if "content" in body:
                msg.content = body["content"] or ""
            if "components" in body:
                msg.components = body["components"] or []
            if "attachments" in body:
                # Discord keeps only the existing attachments the edit lists (by id); new files come
                # in the same list by their upload index. Leaving one out removes it.
                keep = {str(a.get("id")) for a in body["attachments"] or []}
                msg.uploads = [u for u in msg.uploads if str(u.id) in keep]
            msg.uploads.extend(uploads)
            msg.history.extend(uploads)
            return _json(msg.payload(self))
        return _json({"message": "Method Not Allowed", "code": 0}, status=405)

    async def _cdn(self, request: web.Request) -> web.Response:
        data = self.attachments.get(f"{request.match_info['a']}/{request.match_info['name']}")
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data)

    # -- interaction payloads ------------------------------------------------------------------
    def _interaction(self, type_: int, user_id: int, data: dict[str, Any], *, age_s: float = 0.0,
                     message: dict[str, Any] | None = None) -> dict[str, Any]:
        iid = snowflake_at(time.time() - age_s, next(self._ids))
        # Shaped like a real one: base64 of "interaction:<id>:<random>", well over 100 characters.
        token = base64.urlsafe_b64encode(f"interaction:{iid}:{secrets.token_urlsafe(96)}".encode()).decode()
        token = token.rstrip("=")
        self._interaction_tokens[token] = iid
        payload: dict[str, Any] = {
            "id": str(iid), "application_id": str(self.application_id), "type": type_, "data": data,
            "guild_id": str(self.guild_id), "channel_id": str(self.channel_id), "channel": self.channel_payload(),
            "member": {"user": {"id": str(user_id), "username": f"user{user_id}", "discriminator": "0",
                                "global_name": None, "avatar": None},
                       "roles": [], "joined_at": _iso(time.time() - 3600), "deaf": False, "mute": False,
                       "permissions": str(0x800 | 0x400 | 0x8000), "flags": 0},
            "token": token, "version": 1, "locale": self.user_locales.get(user_id, "en-US"), "guild_locale": "en-US",
            "app_permissions": str(0x800 | 0x400 | 0x8000), "attachment_size_limit": self.upload_limit,
            "entitlements": [], "authorizing_integration_owners": {"0": str(self.guild_id)}, "context": 0,
        }
        if message is not None:
            payload["message"] = message
        return payload

    def _command_id(self, name: str) -> str:
        for commands in self.commands.values():
            for c in commands:
                if c["name"] == name:
                    return c["id"]
        return str(snowflake_at(time.time(), next(self._ids)))

    def slash(self, name: str, user_id: int, options: dict[str, Any] | None = None, *,
              attachments: dict[str, dict[str, Any]] | None = None, age_s: float = 0.0) -> dict[str, Any]:
        """An application-command interaction; attachment options name a key of `attachments`."""
        opts = []
        for key, value in (options or {}).items():
            if attachments and key in attachments:
                opts.append({"name": key, "type": 11, "value": attachments[key]["id"]})
            elif isinstance(value, bool):
                opts.append({"name": key, "type": 5, "value": value})
            elif isinstance(value, int):
                opts.append({"name": key, "type": 4, "value": value})
            else:
                opts.append({"name": key, "type": 3, "value": value})
        data: dict[str, Any] = {"id": self._command_id(name), "name": name, "type": 1, "options": opts}
        if attachments:
            data["resolved"] = {"attachments": {a["id"]: a for a in attachments.values()}}
        return self._interaction(2, user_id, data, age_s=age_s)

    def message_command(self, name: str, user_id: int, target: dict[str, Any]) -> dict[str, Any]:
        """A context-menu command on `target` (a message payload)."""
        data = {"id": self._command_id(name), "name": name, "type": 3, "target_id": target["id"],
                "resolved": {"messages": {target["id"]: target}}}
        return self._interaction(2, user_id, data)

    def user_message(self, user_id: int, attachments: list[dict[str, Any]], content: str = "") -> dict[str, Any]:
        """A message a user posted (for context-menu targets)."""
        return {"id": str(snowflake_at(time.time(), next(self._ids))), "channel_id": str(self.channel_id),
                "guild_id": str(self.guild_id), "content": content, "timestamp": _iso(time.time()),
                "edited_timestamp": None, "tts": False, "mention_everyone": False, "mentions": [],
                "mention_roles": [], "pinned": False, "type": 0, "embeds": [], "attachments": attachments,
                "author": {"id": str(user_id), "username": f"user{user_id}", "discriminator": "0",
                           "global_name": None, "avatar": None}, "flags": 0}

    def modal_submit(self, custom_id: str, user_id: int, fields: dict[str, str]) -> dict[str, Any]:
        rows = [{"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]} for k, v in fields.items()]
        return self._interaction(5, user_id, {"custom_id": custom_id, "components": rows})

    def button_press(self, custom_id: str, user_id: int, message_id: int) -> dict[str, Any]:
        msg = self.messages[message_id].payload(self)
        return self._interaction(3, user_id, {"custom_id": custom_id, "component_type": 2}, message=msg)

    async def send_interaction(self, payload: dict[str, Any]) -> dict[str, Any]:
        await self.dispatch("INTERACTION_CREATE", payload)
        return payload

    def callbacks_for(self, payload: dict[str, Any]) -> list[Callback]:
        return [c for c in self.callbacks if c.interaction_id == int(payload["id"])]

    def followups_for(self, payload: dict[str, Any]) -> list[FakeMessage]:
        """Messages sent or edited through this interaction's webhook token."""
        return [m for m in self.messages.values() if m.token == payload["token"]]
