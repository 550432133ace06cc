"""A small fake Telegram Bot API server on 127.0.0.1 for driving the real python-telegram-bot stack.

It serves the methods the bot calls, records what it receives, lets a test inject user updates
(messages, photos, documents, button presses), fake file sizes, errors (429 flood control, 4xx,
5xx, failed file downloads, a rejected token), dropped connections and requests that hang. Like the real Bot API it
refuses texts over the length limits (4096 per message, 1024 per caption, 200 per button answer).
"""
from __future__ import annotations

import asyncio
import itertools
import random
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BOT_USER = {"id": 4242, "is_bot": True, "first_name": "SVI", "username": "svibot_test"}
TEXT_FIELDS = ("text", "caption")  # never JSON-decode these: a prompt "1" must stay a string
MESSAGE_CHARS, CAPTION_CHARS, CALLBACK_ANSWER_CHARS = 4096, 1024, 200
PHOTO_UPLOAD_BYTES = 10 * 1024 * 1024  # the Bot API's limit for photos sent as photos


def utf16_len(text: str) -> int:
    """Telegram counts lengths in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Sent:
    """One message the bot posted (sendMessage, sendPhoto, sendVideo, sendDocument)."""

    method: str
    chat_id: int
    message_id: int
    text: str | None  # text of a sendMessage, caption of a media message
    data: bytes | None  # uploaded file content
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


@dataclass
class MediaEdit:
    """One editMessageMedia: the message's photo replaced by `data`."""

    chat_id: int
    message_id: int
    data: bytes
    caption: str | None
    at: float = field(default_factory=time.monotonic)


@dataclass
class Edit:
    chat_id: int
    message_id: int
    text: str
    reply_markup: dict[str, Any] | None
    at: float = field(default_factory=time.monotonic)


class FakeTelegram:
    """Start with `await fake.start()`; point the bot at `fake.base_url` (the server root)."""

    def __init__(self, token: str = "123456:FAKE-token-for-tests", *, upload_limit_bytes: int = 50 * 1024 * 1024,
                 max_download_bytes: int = 20 * 1024 * 1024) -> None:
        self.token = token
        self.upload_limit_bytes = upload_limit_bytes
        self.max_download_bytes = max_download_bytes
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.sent: list[Sent] = []
        self.edits: list[Edit] = []
        self.media_edits: list[MediaEdit] = []
        self.photo_data: dict[tuple[int, int], bytes] = {}  # the photo each bot photo message shows now
        self.callback_answers: list[dict[str, Any]] = []
        self.rejected: list[tuple[str, int]] = []  # (method, http status) of injected or size errors
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}  # every message, by (chat, id)
        self.user_languages: dict[int, str] = {}  # user id -> the language_code their Telegram app sends
        self._files: dict[str, tuple[bytes, int, str]] = {}  # file_id -> (data, reported size, path)
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(100)
        self._file_ids = itertools.count(1)
        self._failures: dict[str, list[tuple[int, str, int]]] = {}  # method -> (status, description, retry)
        self._download_failures: list[int] = []  # HTTP statuses for the next file downloads
        self._hanging: set[str] = set()  # methods whose next call never answers
        self._random_faults: tuple[float, dict[str, list[int]], random.Random] | None = None
        self._drops: dict[str, int] = {}  # method -> calls whose connection is closed without an answer
        self._release = asyncio.Event()
        self.get_me_status: int | None = None  # e.g. 401 or 404: getMe refuses the token
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- server lifecycle --------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application(client_max_size=2 * 1024**3)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.*}", self._download)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # ephemeral port chosen by the OS
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        self._release.set()  # let hanging requests finish so the server can close
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> "FakeTelegram":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what a test injects -----------------------------------------------------------------------
    def add_file(self, data: bytes, *, reported_size: int | None = None, suffix: str = "jpg") -> str:
        n = next(self._file_ids)
        file_id = f"file-{n}"
        self._files[file_id] = (data, len(data) if reported_size is None else reported_size,
                                f"files/file_{n}.{suffix}")
        return file_id

    def fail_next(self, method: str, retry_after: int = 1, times: int = 1, *, status: int = 429,
                  description: str | None = None) -> None:
        """Answer the next `times` calls of `method` with an error (429 Too Many Requests by default)."""
        if description is None:
            description = (f"Too Many Requests: retry after {retry_after}" if status == 429
                           else "Internal Server Error" if status >= 500 else "Bad Request: wrong file_id")
        self._failures.setdefault(method, []).extend([(status, description, retry_after)] * times)

    def fail_downloads(self, times: int = 1, status: int = 404) -> None:
        """Answer the next `times` file downloads (GET /file/bot<token>/...) with `status`."""
        self._download_failures.extend([status] * times)

    def drop_next(self, method: str, times: int = 1) -> None:
        """Close the connection of the next `times` calls of `method` before answering (nothing is done)."""
        self._drops[method] = self._drops.get(method, 0) + times

    def random_faults(self, rate: float, faults: dict[str, list[int]], seed: int = 0) -> None:
        """From now on each call of a method in `faults` fails with probability `rate`, with one of
        its statuses drawn at random (429 flood control, 5xx, or 0: the connection is dropped)."""
        self._random_faults = (rate, faults, random.Random(seed))

    def hang_next(self, method: str) -> None:
        """The next call of `method` is received but never answered (until the server stops)."""
        self._hanging.add(method)

    def user_message(self, chat_id: int, user_id: int, *, text: str | None = None, caption: str | None = None,
                     photo: bytes | None = None, document: tuple[bytes, str, str] | None = None,
                     reported_size: int | None = None, reply_to: int | None = None) -> dict[str, Any]:
        """Queue a message from a user as an update; returns the message. document=(data, mime, name)."""
        message: dict[str, Any] = {
            "message_id": next(self._message_ids), "date": int(time.time()),
            "chat": self._chat(chat_id), "from": self._user(user_id),
        }
        if text is not None:
            message["text"] = text
            if text.startswith("/"):
                command = text.split()[0]
                message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        if caption is not None:
            message["caption"] = caption
            if caption.startswith("/"):
                command = caption.split()[0]
                message["caption_entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        if photo is not None:
            file_id = self.add_file(photo, reported_size=reported_size)
            size = self._files[file_id][1]
            # Telegram lists several sizes, smallest first; here the thumbnail is the same file.
            message["photo"] = [
                {"file_id": file_id, "file_unique_id": f"u{file_id}", "width": 90, "height": 60, "file_size": size},
                {"file_id": file_id, "file_unique_id": f"u{file_id}", "width": 960, "height": 640, "file_size": size},
            ]
        if document is not None:
            data, mime, name = document
            file_id = self.add_file(data, reported_size=reported_size, suffix=name.rsplit(".", 1)[-1])
            message["document"] = {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_name": name,
                                   "mime_type": mime, "file_size": self._files[file_id][1]}
        if reply_to is not None:
            message["reply_to_message"] = self.messages[(chat_id, reply_to)]
        self.messages[(chat_id, message["message_id"])] = message
        self._push({"message": message})
        return message

    def press_button(self, chat_id: int, user_id: int, message_id: int, data: str) -> str:
        """A user taps an inline button of a bot message; returns the callback query id."""
        query_id = f"cbq-{next(self._update_ids)}"
        self._push({"callback_query": {
            "id": query_id, "from": self._user(user_id), "chat_instance": f"ci{chat_id}",
            "message": self.messages[(chat_id, message_id)], "data": data,
        }})
        return query_id

    def _push(self, body: dict[str, Any]) -> None:
        self._updates.append({"update_id": next(self._update_ids), **body})
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- what a test reads ---------------------------------------------------------------------------
    def sent_to(self, chat_id: int, method: str | None = None) -> list[Sent]:
        return [s for s in self.sent if s.chat_id == chat_id and (method is None or s.method == method)]

    def texts_to(self, chat_id: int) -> list[str]:
        return [s.text or "" for s in self.sent_to(chat_id, "sendMessage")]

    def current_text(self, chat_id: int, message_id: int) -> str | None:
        message = self.messages.get((chat_id, message_id))
        return None if message is None else message.get("text")

    def method_calls(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == method]

    async def wait_for(self, condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
        """Wait until `condition()` is truthy (checked whenever the bot calls the server)."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while not (result := condition()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                         f"calls: {[name for name, _ in self.calls][-30:]}")
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.5))
                except asyncio.TimeoutError:
                    pass
        return result

    # -- the HTTP side -------------------------------------------------------------------------------
    def _user(self, user_id: int) -> dict[str, Any]:
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"}
        if user_id in self.user_languages:  # like Telegram, only sent when the app has a language
            user["language_code"] = self.user_languages[user_id]
        return user

    @staticmethod
    def _chat(chat_id: int) -> dict[str, Any]:
        return {"id": chat_id, "type": "private" if chat_id > 0 else "group", "title": f"chat{chat_id}"}

    @staticmethod
    def _ok(result: Any) -> web.Response:
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _error(status: int, description: str, **parameters: Any) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.json_response(body, status=status)

    async def _read_params(self, request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
        params: dict[str, Any] = dict(request.query)
        files: dict[str, bytes] = {}
        if request.content_type == "application/json":
            params.update(await request.json())
        elif request.can_read_body:
            for key, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    files[key] = value.file.read()
                elif key in TEXT_FIELDS:
                    params[key] = value
                else:
                    try:
                        params[key] = json.loads(value)
                    except ValueError:
                        params[key] = value
        # Uploads may come as "attach://<name>" pointing at another multipart field, also inside
        # an InputMedia object (editMessageMedia's `media`), where the file goes under "media".
        for key, value in list(params.items()):
            if isinstance(value, str) and value.startswith("attach://"):
                files[key] = files.pop(value[len("attach://"):])
            elif isinstance(value, dict) and str(value.get("media", "")).startswith("attach://"):
                files[key] = files.pop(value["media"][len("attach://"):])
        return params, files

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return self._error(401, "Unauthorized")
        method = request.match_info["method"]
        params, files = await self._read_params(request)
        self.calls.append((method, params))
        if self._random_faults is not None:
            rate, faults, rng = self._random_faults
            if faults.get(method) and rng.random() < rate:
                status = rng.choice(faults[method])
                if status == 0:
                    self.drop_next(method)
                else:
                    self.fail_next(method, status=status, retry_after=1)
        try:
            if self._drops.get(method):
                self._drops[method] -= 1
                self.rejected.append((method, 0))
                request.transport.close()  # the client sees the server disconnect mid-request
                return web.Response(status=204)
            if self._failures.get(method):
                status, description, retry_after = self._failures[method].pop(0)
                self.rejected.append((method, status))
                if status == 429:
                    return self._error(429, description, retry_after=retry_after)
                return self._error(status, description)
            if method in self._hanging:
                self._hanging.discard(method)
                await self._notify()
                await self._release.wait()
                return self._error(504, "Gateway Timeout")
            too_long = self._too_long(method, params)
            if too_long is not None:
                self.rejected.append((method, 400))
                return self._error(400, too_long)
            handler = getattr(self, f"_m_{method}", None)
            if handler is None:
                return self._error(404, f"Not Found: method {method} not found")
            return await handler(params, files)
        finally:
            await self._notify()

    @staticmethod
    def _too_long(method: str, params: dict[str, Any]) -> str | None:
        """The Bot API's refusal of a text over its limit (or an empty message text), else None."""
        if method in ("sendMessage", "editMessageText"):
            text = str(params.get("text") or "")
            if not text.strip():
                return "Bad Request: message text is empty"
            if utf16_len(text) > MESSAGE_CHARS:
                return "Bad Request: message is too long"
        if method in ("sendVideo", "sendDocument", "sendPhoto") and utf16_len(str(params.get("caption") or "")) \
                > CAPTION_CHARS:
            return "Bad Request: message caption is too long"
        if method == "editMessageMedia" and isinstance(params.get("media"), dict) \
                and utf16_len(str(params["media"].get("caption") or "")) > CAPTION_CHARS:
            return "Bad Request: message caption is too long"
        if method == "answerCallbackQuery" and utf16_len(str(params.get("text") or "")) > CALLBACK_ANSWER_CHARS:
            return "Bad Request: MESSAGE_TOO_LONG"
        return None

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        if self._download_failures:
            status = self._download_failures.pop(0)
            self.rejected.append(("download", status))
            await self._notify()
            return web.Response(status=status)
        for data, _, path in self._files.values():
            if path == request.match_info["path"]:
                return web.Response(body=data)
        return web.Response(status=404)

    # -- Bot API methods ---------------------------------------------------------------------------
    async def _m_getMe(self, params: dict, files: dict) -> web.Response:
        if self.get_me_status is not None:
            return self._error(self.get_me_status, "Unauthorized" if self.get_me_status == 401 else "Not Found")
        return self._ok(BOT_USER)

    async def _m_deleteWebhook(self, params: dict, files: dict) -> web.Response:
        return self._ok(True)

    async def _m_setMyCommands(self, params: dict, files: dict) -> web.Response:
        return self._ok(True)

    async def _m_close(self, params: dict, files: dict) -> web.Response:
        return self._ok(True)

    async def _m_getUpdates(self, params: dict, files: dict) -> web.Response:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        # Like the Bot API: an offset confirms every earlier update, which is never returned again
        # (a restarted bot, polling without an offset, must not see them twice).
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        while True:
            ready = [u for u in self._updates if u["update_id"] >= offset][:limit]
            left = deadline - time.monotonic()
            if ready or left <= 0:
                return self._ok(ready)
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.2))
                except asyncio.TimeoutError:
                    pass

    async def _m_getFile(self, params: dict, files: dict) -> web.Response:
        file_id = str(params.get("file_id"))
        if file_id not in self._files:
            return self._error(400, "Bad Request: invalid file_id")
        _, size, path = self._files[file_id]
        if size > self.max_download_bytes:
            return self._error(400, "Bad Request: file is too big")
        return self._ok({"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": size, "file_path": path})

    def _bot_message(self, chat_id: int, **content: Any) -> dict[str, Any]:
        message = {"message_id": next(self._message_ids), "date": int(time.time()),
                   "chat": self._chat(chat_id), "from": BOT_USER,
                   **{k: v for k, v in content.items() if v is not None}}
        self.messages[(chat_id, message["message_id"])] = message
        return message

    async def _m_sendMessage(self, params: dict, files: dict) -> web.Response:
        chat_id = int(params["chat_id"])
        message = self._bot_message(chat_id, text=params["text"], reply_markup=params.get("reply_markup"))
        self.sent.append(Sent("sendMessage", chat_id, message["message_id"], params["text"], None, params))
        return self._ok(message)

    async def _m_editMessageText(self, params: dict, files: dict) -> web.Response:
        chat_id, message_id = int(params["chat_id"]), int(params["message_id"])
        message = self.messages.get((chat_id, message_id))
        if message is None:
            return self._error(400, "Bad Request: message to edit not found")
        markup = params.get("reply_markup")
        if message.get("text") == params["text"] and message.get("reply_markup") == markup:
            return self._error(400, "Bad Request: message is not modified: specified new message content "
                                    "and reply markup are exactly the same as a current content")
        message["text"] = params["text"]
        message["reply_markup"] = markup
        self.edits.append(Edit(chat_id, message_id, params["text"], markup))
        return self._ok(message)

    async def _send_media(self, method: str, kind: str, params: dict, files: dict) -> web.Response:
        chat_id = int(params["chat_id"])
        data = files.get(kind)
        if data is not None and len(data) > self.upload_limit_bytes:
            self.rejected.append((method, 413))
            return self._error(413, "Request Entity Too Large")
        file_id = self.add_file(data or b"", suffix="mp4")
        media = {"file_id": file_id, "file_unique_id": f"u{file_id}"}
        if kind == "video":
            media.update(width=64, height=64, duration=1)
        else:
            media.update(file_name=params.get("filename", "file"))
        message = self._bot_message(chat_id, caption=params.get("caption"), **{kind: media})
        self.sent.append(Sent(method, chat_id, message["message_id"], params.get("caption"), data, params))
        return self._ok(message)

    async def _m_sendPhoto(self, params: dict, files: dict) -> web.Response:
        chat_id = int(params["chat_id"])
        data = files.get("photo")
        if data is None:
            return self._error(400, "Bad Request: there is no photo in the request")
        if len(data) > PHOTO_UPLOAD_BYTES:
            self.rejected.append(("sendPhoto", 400))
            return self._error(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        file_id = self.add_file(data)
        message = self._bot_message(chat_id, caption=params.get("caption"), photo=self._photo_sizes(file_id))
        self.sent.append(Sent("sendPhoto", chat_id, message["message_id"], params.get("caption"), data, params))
        self.photo_data[(chat_id, message["message_id"])] = data
        return self._ok(message)

    async def _m_editMessageMedia(self, params: dict, files: dict) -> web.Response:
        """Replace a media message's photo. Like the real API it refuses a message without media
        (a text message cannot become a photo) and an unchanged file."""
        chat_id, message_id = int(params["chat_id"]), int(params["message_id"])
        message = self.messages.get((chat_id, message_id))
        if message is None:
            return self._error(400, "Bad Request: message to edit not found")
        if not any(k in message for k in ("photo", "video", "document", "animation", "audio")):
            return self._error(400, "Bad Request: there is no media in the message to edit")
        media = params.get("media") or {}
        if media.get("type") != "photo":
            return self._error(400, f"Bad Request: unsupported media type {media.get('type')!r} here")
        data = files.get("media")
        if data is None:
            file_id = str(media.get("media"))
            if file_id not in self._files:
                return self._error(400, "Bad Request: wrong file identifier/HTTP URL specified")
            if message.get("photo", [{}])[-1].get("file_id") == file_id:
                return self._error(400, "Bad Request: message is not modified: specified new message content "
                                        "and reply markup are exactly the same as a current content")
            data = self._files[file_id][0]
        else:
            file_id = self.add_file(data)
        message.pop("video", None)
        message.pop("document", None)
        message["photo"] = self._photo_sizes(file_id)
        message["caption"] = media.get("caption")
        message["edit_date"] = int(time.time())
        self.photo_data[(chat_id, message_id)] = data
        self.media_edits.append(MediaEdit(chat_id, message_id, data, media.get("caption")))
        return self._ok(message)

    def _photo_sizes(self, file_id: str) -> list[dict[str, Any]]:
        size = self._files[file_id][1]
        return [{"file_id": file_id, "file_unique_id": f"u{file_id}", "width": 384, "height": 96, "file_size": size}]

    async def _m_sendVideo(self, params: dict, files: dict) -> web.Response:
        return await self._send_media("sendVideo", "video", params, files)

    async def _m_sendDocument(self, params: dict, files: dict) -> web.Response:
        return await self._send_media("sendDocument", "document", params, files)

    async def _m_answerCallbackQuery(self, params: dict, files: dict) -> web.Response:
        self.callback_answers.append(params)
        return self._ok(True)
