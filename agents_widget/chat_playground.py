"""Chat with a deployed LLM agent through its live endpoint, watching the reply stream in.

:class:`ChatPlayground` sits in the expanded row of a Deployed LLM agent. Every message goes
to the deployment's ``POST generate_stream`` with its Bearer key, as any client of the
inference contract would send it; the reply appears piece by piece as the server flushes it.
Conversations are the server's chat sessions: a second message continues the same session,
*New session* starts another, and past ones can be listed, loaded back and deleted. Example::

    from agents_widget.chat_playground import ChatPlayground

    chat = ChatPlayground(agent.endpoint, key=lambda: state.api_key(agent.name))
    chat                                  # display it; or, from code:
    chat.send("What is the capital of France?").result(60)
    chat.messages                         # [{"role": "user", ...}, {"role": "assistant", ...}]

Threads: every HTTP call runs on the playground's own daemon worker thread, one call at a
time and in the order asked, and only sets widget values from there, so the kernel stays free
while a reply streams. The methods that start a call return a :class:`~concurrent.futures.Future`.

The key: ``key`` is a callable asked for the key on the worker thread right before each
request, so a rotated key is picked up at once. It is kept in no trait and no widget value, so
it never reaches the front end, the saved widget state or the notebook file.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import httpx
import ipywidgets as widgets

from .client import SerialWorker
from .clipboard import TextProvider
from .viewkit import close_tree, gap

ERROR_MARK = "\n[ERROR:"  # how the contract reports a failure in the middle of a stream
# Greedy by default: the demo's tiny model answers its facts word for word when greedy and
# drifts ("is is is ...") when sampled; Sample is one click away for bigger models.
DEFAULT_PARAMS: dict[str, Any] = {
    "max_new_tokens": 100, "temperature": 0.7, "top_p": 0.9, "do_sample": False,
}
MAX_NEW_TOKENS = 4096

# Scoped to awb-chat classes; theme variables with fallbacks, as in the panel's stylesheet.
CSS = """
.awb-chat-log { max-height: 420px; overflow-y: auto; }
.awb-chat-turn { border-radius: 6px; padding: 6px 10px; margin: 4px 0; line-height: 1.45;
  white-space: pre-wrap; word-break: break-word; }
.awb-chat-user { background: var(--jp-brand-color3, #e3f2fd); margin-left: 15%; }
.awb-chat-assistant { background: var(--jp-layout-color2, #f1f1f1); margin-right: 15%; }
.awb-chat-role { font-size: 0.8em; font-weight: 600; color: var(--jp-ui-font-color2, #666); }
.awb-chat-error { color: #c62828; white-space: pre-wrap; }
.awb-chat-empty { color: var(--jp-ui-font-color2, #777); font-style: italic; }
"""

_ROLE_TITLES = {"user": "You", "assistant": "Assistant", "system": "System"}


def _turn_html(role: str, content: str, note: str = "") -> str:
    role_class = "user" if role == "user" else "assistant"
    title = _ROLE_TITLES.get(role, role.title())
    extra = f"<div class='awb-chat-error'>{html.escape(note)}</div>" if note else ""
    return (f"<div class='awb-chat-turn awb-chat-{role_class}'>"
            f"<div class='awb-chat-role'>{html.escape(title)}</div>"
            f"{html.escape(content)}{extra}</div>")


def transcript_html(messages: list[dict[str, str]]) -> str:
    """The finished turns of a conversation as HTML (text escaped)."""
    if not messages:
        return "<div class='awb-chat-empty'>No messages yet: type a prompt and press Send.</div>"
    return "".join(_turn_html(str(m.get("role", "")), str(m.get("content", "")))
                   for m in messages)


def split_stream_error(text: str) -> tuple[str, str | None]:
    """The reply text and the in-band error that ended it, if the stream reported one."""
    at = text.find(ERROR_MARK)
    if at < 0:
        return text, None
    error = text[at + 1:].strip()
    if error.startswith("[") and error.endswith("]"):
        error = error[1:-1]
    return text[:at], error


def _error_text(response: httpx.Response) -> str:
    """What the server said was wrong (the contract's ``error``), with the status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message = body.get("error") if isinstance(body, dict) else None
    if not message:
        message = response.text.strip()[:300] or response.reason_phrase
    hint = ""
    if response.status_code in (401, 403):
        hint = (" The key was refused: it may have been rotated, or the agent redeployed; "
                "reopen the row to pick up the current key.")
    elif response.status_code == 404:
        hint = " Is the agent still Deployed?"
    return f"HTTP {response.status_code}: {message}{hint}"


class ChatPlayground(widgets.VBox):
    """Conversation view, prompt box with Send/Stop, sampling controls and past sessions."""

    def __init__(self, endpoint: str, key: TextProvider, *, timeout: float = 120.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        # A callable, not the key: nothing secret is stored on the widget (see module doc).
        self._key: Callable[[], str | None] = key
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0))
        self._worker = SerialWorker(name="agents-workbench-chat")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending = 0
        self.session_id: str | None = None
        self.messages: list[dict[str, str]] = []
        self.last_error: str | None = None

        self.transcript = widgets.HTML(transcript_html([]))
        self.live = widgets.HTML()  # the turn in flight: the prompt and the reply so far
        self.conversation = widgets.VBox([self.transcript, self.live])
        self.conversation.add_class("awb-chat-log")
        # "auto" and stretched, not 100%: the widget's own margins came on top of 100% and
        # pushed its right edge out of the playground's frame.
        self.prompt = widgets.Textarea(placeholder="Ask the agent something…",
                                       layout=widgets.Layout(width="auto", height="64px",
                                                             align_self="stretch"))
        self.send_button = widgets.Button(description="Send", icon="paper-plane",
                                          button_style="primary")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True,
                                          tooltip="Stop the reply now (it is not saved)")
        self.new_button = widgets.Button(
            description="New session", icon="plus",
            tooltip="Clear the view and start a new conversation; this one stays listed below")

        self.max_new_tokens = widgets.BoundedIntText(
            value=DEFAULT_PARAMS["max_new_tokens"], min=1, max=MAX_NEW_TOKENS,
            description="Max tokens", style={"description_width": "initial"},
            layout=widgets.Layout(width="170px"))
        self.temperature = widgets.BoundedFloatText(
            value=DEFAULT_PARAMS["temperature"], min=0.0, max=10.0, step=0.1,
            description="Temperature", style={"description_width": "initial"},
            layout=widgets.Layout(width="170px"))
        self.top_p = widgets.BoundedFloatText(
            value=DEFAULT_PARAMS["top_p"], min=0.01, max=1.0, step=0.05, description="Top p",
            style={"description_width": "initial"}, layout=widgets.Layout(width="130px"))
        self.do_sample = widgets.Checkbox(
            value=DEFAULT_PARAMS["do_sample"], description="Sample", indent=False,
            tooltip="Off: greedy decoding (temperature and top p are then ignored)",
            layout=widgets.Layout(width="90px"))

        # Temperature and top p only matter when sampling: grey them out otherwise.
        self.do_sample.observe(lambda _c: self._sampling_controls(), "value")
        self._sampling_controls()

        self.sessions = widgets.Select(options=[], rows=5, description="Sessions",
                                       layout=widgets.Layout(width="auto",
                                                             align_self="stretch"))
        self.load_button = widgets.Button(description="Load", icon="folder-open",
                                          tooltip="Show the chosen session and continue it")
        self.delete_button = widgets.Button(description="Delete", icon="trash",
                                            tooltip="Delete the chosen session on the server")
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.status = widgets.HTML()

        self.send_button.on_click(lambda _b: self.send())
        self.stop_button.on_click(lambda _b: self.stop())
        self.new_button.on_click(lambda _b: self.new_session())
        self.load_button.on_click(lambda _b: self._chosen(self.load_session))
        self.delete_button.on_click(lambda _b: self._chosen(self.delete_session))
        self.refresh_button.on_click(lambda _b: self.refresh_sessions())
        # Whoever closes this widget (the panel closes whole trees with Widget.close), the
        # worker thread and its connections go with it.
        self.observe(self._on_comm, names="comm")

        style = widgets.HTML(f"<style>{CSS}</style>", layout=widgets.Layout(display="none"))
        super().__init__([
            style,
            self.conversation,
            self.prompt,
            gap(widgets.HBox([self.send_button, self.stop_button, self.new_button]), 6),
            gap(widgets.HBox([self.max_new_tokens, self.temperature, self.top_p,
                              self.do_sample], layout=widgets.Layout(flex_flow="row wrap")), 6),
            self.status,
            self.sessions,
            gap(widgets.HBox([self.load_button, self.delete_button, self.refresh_button]), 6),
        ])
        gap(self, 6)
        self.refresh_sessions()

    # -- what the buttons do (kernel thread: read widgets, then hand the HTTP to the worker) --

    @property
    def busy(self) -> bool:
        """Whether a call is queued or running on the worker thread."""
        with self._lock:
            return self._pending > 0

    def _sampling_controls(self) -> None:
        greedy = not self.do_sample.value
        self.temperature.disabled = greedy
        self.top_p.disabled = greedy

    def params(self) -> dict[str, Any]:
        """The sampling parameters the controls hold, in the contract's shape."""
        return {"max_new_tokens": int(self.max_new_tokens.value),
                "temperature": float(self.temperature.value),
                "top_p": float(self.top_p.value),
                "do_sample": bool(self.do_sample.value)}

    def send(self, prompt: str | None = None) -> Future[None]:
        """Send ``prompt`` (else the prompt box) as the next user turn and stream the reply."""
        text = self.prompt.value if prompt is None else prompt
        if not text.strip():
            self._say("Type a prompt first.", error=True)
            return self._done()
        self.prompt.value = ""
        self._stop.clear()
        self.send_button.disabled = True
        self.stop_button.disabled = False
        self.live.value = _turn_html("user", text) + _turn_html("assistant", "…")
        self._say("")
        return self._submit(self._stream, text, self.params())

    def stop(self) -> None:
        """Stop the reply that is streaming; the server drops it (it is not saved)."""
        self._stop.set()

    def new_session(self) -> Future[None]:
        """Clear the view; the next message starts a new session."""
        return self._submit(self._new_session)

    def refresh_sessions(self) -> Future[None]:
        """Reload the list of past sessions."""
        return self._submit(self._refresh)

    def load_session(self, session_id: str) -> Future[None]:
        """Show session ``session_id``; the next message continues it."""
        return self._submit(self._load, session_id)

    def delete_session(self, session_id: str) -> Future[None]:
        """Delete session ``session_id`` on the server (the view clears if it was shown)."""
        return self._submit(self._delete, session_id)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every call asked for so far is done; ``True`` when idle."""
        try:
            self._submit(lambda: None).exception(timeout)
        except TimeoutError:
            return False
        return not self.busy

    def close(self) -> None:
        """Stop any stream, the worker thread and the connections, then close the widgets."""
        self._shutdown()
        close_tree(self)

    def _chosen(self, action: Callable[[str], Future[None]]) -> None:
        if self.sessions.value is None:
            self._say("Choose a session in the list first.", error=True)
            return
        action(str(self.sessions.value))

    def _on_comm(self, change: dict[str, Any]) -> None:
        if change["new"] is None:
            self._shutdown()

    def _shutdown(self) -> None:
        self._stop.set()
        self._worker.close()
        # Closing the client also ends a stream that is still open on the worker.
        self._http.close()

    # -- worker thread ---------------------------------------------------------------------

    def _submit(self, fn: Callable[..., None], *args: Any) -> Future[None]:
        with self._lock:
            self._pending += 1

        def job() -> None:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - any failure is shown in the view instead
                self._say(_readable(exc), error=True)
            finally:
                with self._lock:
                    self._pending -= 1

        future = self._worker.submit(job)
        if future.done() and future.exception() is not None:
            # Refused without running (the playground was closed): nothing is pending.
            with self._lock:
                self._pending -= 1
        return future

    @staticmethod
    def _done() -> Future[None]:
        future: Future[None] = Future()
        future.set_result(None)
        return future

    def _headers(self) -> dict[str, str]:
        key = self._key()
        if not key:
            raise _NoKey
        return {"Authorization": f"Bearer {key}"}

    def _say(self, text: str, *, error: bool = False) -> None:
        if error:
            self.last_error = text
        css = "awb-chat-error" if error else "awb-chat-empty"
        self.status.value = f"<div class='{css}'>{html.escape(text)}</div>" if text else ""

    def _new_session(self) -> None:
        self._show(None, [])
        # The new session is not on the server until its first message: highlight nothing
        # rather than the session that is no longer on show.
        self.sessions.value = None
        self._say("New session: the next message starts it.")

    def _show(self, session_id: str | None, messages: list[dict[str, str]]) -> None:
        self.session_id = session_id
        self.messages = messages
        self.transcript.value = transcript_html(messages)
        self.live.value = ""

    def _stream(self, prompt: str, params: dict[str, Any]) -> None:
        body: dict[str, Any] = {"prompt": prompt, "params": params}
        if self.session_id:
            body["session_id"] = self.session_id
        reply, stopped, failure = "", False, None
        try:
            with self._http.stream("POST", f"{self.endpoint}/generate_stream", json=body,
                                   headers=self._headers()) as response:
                if response.status_code >= 400:
                    response.read()
                    failure = _error_text(response)
                else:
                    self.session_id = response.headers.get("X-Session-Id") or self.session_id
                    for chunk in response.iter_text():
                        if self._stop.is_set():
                            stopped = True
                            break
                        reply += chunk
                        shown, error = split_stream_error(reply)
                        self.live.value = (_turn_html("user", prompt)
                                           + _turn_html("assistant", shown or "…", error or ""))
        except Exception as exc:  # noqa: BLE001 - a dropped connection is shown, not raised
            failure = _readable(exc)
        finally:
            self.send_button.disabled = False
            self.stop_button.disabled = True
        if failure is not None:
            # Nothing reached the session: leave the prompt where the user can send it again.
            self.live.value = ""
            if not self.prompt.value:
                self.prompt.value = prompt
            self._say(f"The message was not answered. {failure}", error=True)
            return
        text, error = split_stream_error(reply)
        shown = transcript_html(self.messages) if self.messages else ""
        if stopped:
            # The server drops a reply whose client went away, so the turn stays out of
            # ``messages`` too: the view shows it until the next turn, the session never has it.
            self.transcript.value = shown + _turn_html("user", prompt) + _turn_html(
                "assistant", text, "(stopped; this turn is not saved in the session)")
            self.live.value = ""
            return
        if error:
            self._say(f"The reply stopped with an error: {error}", error=True)
        self.messages = [*self.messages, {"role": "user", "content": prompt},
                         {"role": "assistant", "content": text}]
        self.transcript.value = (shown + _turn_html("user", prompt)
                                 + _turn_html("assistant", text, error or ""))
        self.live.value = ""
        self._refresh()

    def _refresh(self) -> None:
        response = self._http.get(f"{self.endpoint}/sessions", headers=self._headers())
        if response.status_code >= 400:
            self._say(f"Could not list the sessions. {_error_text(response)}", error=True)
            return
        listed = response.json().get("sessions") or []
        options = [(_session_label(s), str(s["session_id"])) for s in listed]
        chosen = self.sessions.value
        self.sessions.options = options
        ids = [value for _label, value in options]
        # The session on show is the one highlighted (the old one stayed highlighted after
        # New session); otherwise what the user picked in the list stays picked.
        if self.session_id in ids:
            self.sessions.value = self.session_id
        elif chosen in ids:
            self.sessions.value = chosen
        else:
            self.sessions.value = None

    def _load(self, session_id: str) -> None:
        response = self._http.get(f"{self.endpoint}/sessions/{session_id}",
                                  headers=self._headers())
        if response.status_code >= 400:
            self._say(f"Could not load the session. {_error_text(response)}", error=True)
            self._refresh()
            return
        found = response.json()
        messages = [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
                    for m in found.get("messages") or []]
        self._show(session_id, messages)
        self._say(f"Loaded session {session_id}; a new message continues it.")

    def _delete(self, session_id: str) -> None:
        response = self._http.delete(f"{self.endpoint}/sessions/{session_id}",
                                     headers=self._headers())
        if response.status_code == 404:
            self._say(f"Session {session_id} was already gone.")
        elif response.status_code >= 400:
            self._say(f"Could not delete the session. {_error_text(response)}", error=True)
            return
        else:
            self._say(f"Deleted session {session_id}.")
        if session_id == self.session_id:
            self._show(None, [])
        self._refresh()


class _NoKey(Exception):
    def __str__(self) -> str:
        return "The agent is not Deployed any more (it has no key); connect it again."


def _session_label(summary: dict[str, Any]) -> str:
    title = str(summary.get("title") or "").strip() or "(untitled)"
    when = str(summary.get("last_updated") or "")[:16].replace("T", " ")
    return f"{title} · {when} UTC" if when else title


def _readable(exc: Exception) -> str:
    if isinstance(exc, _NoKey):
        return str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return f"The endpoint did not answer in time ({type(exc).__name__})."
    if isinstance(exc, httpx.HTTPError):
        return f"Cannot reach the endpoint: {exc}. Is the server still running?"
    return f"{type(exc).__name__}: {exc}"
