"""A minimal Hugging Face Hub on 127.0.0.1: enough of the API for hf_hub_download and snapshot_download."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves `repos = {"org/name": {"path/in/repo": b"bytes"}}`; counts the file downloads."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.downloads: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _file(self):
                path = unquote(urlparse(self.path).path).lstrip("/")
                for repo, files in hub.repos.items():
                    prefix = f"{repo}/resolve/"
                    if path.startswith(prefix):
                        _, _, name = path[len(prefix):].partition("/")
                        return repo, name, files.get(name)
                return None, None, None

            def _send_file_headers(self, repo, name, data):
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()

            def do_HEAD(self):
                repo, name, data = self._file()
                if data is None:
                    self._not_found()
                    return
                self._send_file_headers(repo, name, data)

            def do_GET(self):
                path = unquote(urlparse(self.path).path).lstrip("/")
                if path.startswith("api/models/"):
                    self._api(path[len("api/models/"):])
                    return
                repo, name, data = self._file()
                if data is None:
                    self._not_found()
                    return
                hub.downloads.append(f"{repo}/{name}")
                self._send_file_headers(repo, name, data)
                self.wfile.write(data)

            def _api(self, rest: str):
                repo = next((r for r in hub.repos if rest.startswith(r)), None)
                if repo is None:
                    self._not_found()
                    return
                files = hub.repos[repo]
                if "/tree/" in rest:  # list_repo_tree: one page, every file
                    payload = [{"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                               for n, d in files.items()]
                else:  # repo_info
                    payload = {"id": repo, "sha": COMMIT,
                               "siblings": [{"rfilename": n, "size": len(d)} for n, d in files.items()]}
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _not_found(self):
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
