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

Modes: *Chat* (above, the Arena stream with sessions); *JSON*, where every reply is one JSON
object (OpenAI ``response_format``: ``json_object``, or ``json_schema`` with the schema typed in
the panel), enforced by the server's constrained decoding; and *Tools*, where the tools typed
in the panel (OpenAI's function list; the demo chat model's ``country_facts`` to start with)
go with each message: a reply that calls one shows the call, and the call's result, typed in
and sent with *Send result*, continues the conversation. JSON and Tools go through the agent's
OpenAI route ``v1/chat/completions`` (not streamed, no server session: the view holds the
conversation). Example::

    chat.mode.value = "Tools"
    chat.send("Look up France.").result(60)
    chat.pending_call                     # {"id": ..., "name": "country_facts", "arguments": ...}
    chat.send_tool_result("The capital of France is Paris.").result(60)

Threads: every HTTP call runs on the playground's own daemon worker thread, one call at a
time and in the order asked, and only sets widget values from there, so the kernel stays free
while a reply streams. The methods that start a call return a :class:`~concurrent.futures.Future`.

The key: ``key`` is a callable asked for the key on the worker thread right before each
request, so a rotated key is picked up at once. It is kept in no trait and no widget value, so
it never reaches the front end, the saved widget state or the notebook file.
"""

from __future__ import annotations

import html
import json
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
MODES = ("Chat", "JSON", "Tools")
# The demo chat model's one tool (server_extension.demos.llm.COUNTRY_TOOL; the panel does not
# import the server's demos, so it is spelt out here).
DEMO_TOOLS = [{"type": "function", "function": {
    "name": "country_facts", "description": "Facts about a country (its capital).",
    "parameters": {"type": "object", "properties": {"country": {"type": "string"}},
                   "required": ["country"], "additionalProperties": False}}}]

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
.awb-chat-tool { background: var(--jp-warn-color3, #fff8e1); margin-right: 15%; }
.awb-chat-call { font-family: var(--jp-code-font-family, monospace); font-size: 0.9em; }
"""

_ROLE_TITLES = {"user": "You", "assistant": "Assistant", "system": "System",
                "tool": "Tool result"}


def _turn_html(role: str, content: str, note: str = "",
               calls: list[dict[str, Any]] | None = None) -> str:
    role_class = {"user": "user", "tool": "tool"}.get(role, "assistant")
    title = _ROLE_TITLES.get(role, role.title())
    extra = f"<div class='awb-chat-error'>{html.escape(note)}</div>" if note else ""
    shown = "".join(
        f"<div class='awb-chat-call'>calls {html.escape(c['function']['name'])}"
        f"({html.escape(c['function']['arguments'])})</div>" for c in calls or [])
    return (f"<div class='awb-chat-turn awb-chat-{role_class}'>"
            f"<div class='awb-chat-role'>{html.escape(title)}</div>"
            f"{html.escape(content)}{shown}{extra}</div>")


def transcript_html(messages: list[dict[str, Any]]) -> str:
    """The finished turns of a conversation as HTML (text escaped; tool calls shown)."""
    if not messages:
        return "<div class='awb-chat-empty'>No messages yet: type a prompt and press Send.</div>"
    return "".join(_turn_html(str(m.get("role", "")), str(m.get("content") or ""),
                              calls=m.get("tool_calls"))
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

        self._mode_controls()
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
            self.mode,
            self.conversation,
            self.json_panel,
            self.tools_panel,
            self.prompt,
            gap(widgets.HBox([self.send_button, self.stop_button, self.new_button]), 6),
            gap(widgets.HBox([self.max_new_tokens, self.temperature, self.top_p,
                              self.do_sample], layout=widgets.Layout(flex_flow="row wrap")), 6),
            self.status,
            self.sessions,
            gap(widgets.HBox([self.load_button, self.delete_button, self.refresh_button]), 6),
        ])
        gap(self, 6)
        self._panels()
        self.refresh_sessions()

    def _mode_controls(self) -> None:
        """The mode switch and the JSON and Tools panels (see the module doc)."""
        # Switching mode starts a new conversation.
        self.mode = widgets.ToggleButtons(options=MODES, value="Chat", description="Mode",
                                          style={"button_width": "70px"},
                                          tooltips=["Free text, streamed, in server sessions",
                                                    "Every reply is one JSON object",
                                                    "The model may call the tools below"])
        self.schema = widgets.Textarea(
            placeholder="JSON schema the reply must follow (empty: any JSON object)",
            layout=widgets.Layout(width="auto", height="64px", align_self="stretch"))
        self.tools = widgets.Textarea(
            value=json.dumps(DEMO_TOOLS, indent=1),
            layout=widgets.Layout(width="auto", height="96px", align_self="stretch"))
        self.tool_choice = widgets.Dropdown(options=["auto", "required", "none"], value="auto",
                                            description="Tool choice",
                                            style={"description_width": "initial"},
                                            layout=widgets.Layout(width="200px"))
        self.tool_result = widgets.Textarea(
            placeholder="The call's result (what the tool answered)",
            layout=widgets.Layout(width="auto", height="48px", align_self="stretch"))
        self.result_button = widgets.Button(description="Send result", icon="reply",
                                            tooltip="Send the result back to the model")
        self.pending_call: dict[str, Any] | None = None
        self.json_panel = widgets.VBox([self.schema])
        self.tools_panel = widgets.VBox([
            widgets.HTML("<b>Tools</b> (OpenAI's function list, JSON)"), self.tools,
            self.tool_choice,
            widgets.VBox([self.tool_result, self.result_button])])
        self.mode.observe(lambda _c: self._mode_changed(), "value")
        self.result_button.on_click(lambda _b: self.send_tool_result())


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

    def _panels(self) -> None:
        """Show the panel of the current mode (and the result box while a call waits)."""
        self.json_panel.layout.display = "flex" if self.mode.value == "JSON" else "none"
        self.tools_panel.layout.display = "flex" if self.mode.value == "Tools" else "none"
        waiting = self.pending_call is not None
        self.tool_result.layout.display = "flex" if waiting else "none"
        self.result_button.layout.display = "flex" if waiting else "none"

    def _mode_changed(self) -> None:
        self.pending_call = None
        self._panels()
        self.new_session()

    def openai_body(self) -> dict[str, Any]:
        """The OpenAI request settings of the current mode and controls (messages aside).

        :class:`ValueError` with a readable message when the schema or tools do not parse.
        """
        body: dict[str, Any] = {
            "model": self.endpoint.rsplit("/", 1)[-1],
            "max_tokens": int(self.max_new_tokens.value),
            "temperature": float(self.temperature.value) if self.do_sample.value else 0.0,
            "top_p": float(self.top_p.value)}
        if self.mode.value == "JSON":
            schema = self.schema.value.strip()
            if schema:
                try:
                    parsed = json.loads(schema)
                except ValueError as exc:
                    raise ValueError(f"The JSON schema does not parse: {exc}.") from exc
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "reply", "schema": parsed, "strict": True}}
            else:
                body["response_format"] = {"type": "json_object"}
        elif self.mode.value == "Tools":
            try:
                tools = json.loads(self.tools.value or "[]")
            except ValueError as exc:
                raise ValueError(f"The tools do not parse as JSON: {exc}.") from exc
            if tools:
                body["tools"] = tools
                body["tool_choice"] = self.tool_choice.value
        return body

    def send_tool_result(self, result: str | None = None) -> Future[None]:
        """Answer the pending tool call with ``result`` (else the result box); the model goes
        on from there."""
        call = self.pending_call
        if call is None:
            self._say("No tool call is waiting for a result.", error=True)
            return self._done()
        text = self.tool_result.value if result is None else result
        self.tool_result.value = ""
        self.pending_call = None
        self._panels()
        message = {"role": "tool", "tool_call_id": call["id"], "content": text}
        return self._begin_turn(message, text)

    def _begin_turn(self, message: dict[str, Any], shown: str) -> Future[None]:
        try:
            body = self.openai_body()
        except ValueError as exc:
            self._say(str(exc), error=True)
            return self._done()
        self._stop.clear()
        self.last_error = None
        self.send_button.disabled = True
        self.live.value = _turn_html(message["role"], shown) + _turn_html("assistant", "…")
        self._say("")
        return self._submit(self._openai_turn, message, body)

    def send(self, prompt: str | None = None) -> Future[None]:
        """Send ``prompt`` (else the prompt box) as the next user turn and stream the reply
        (in JSON and Tools modes: wait for it, through the OpenAI route)."""
        text = self.prompt.value if prompt is None else prompt
        if not text.strip():
            self._say("Type a prompt first.", error=True)
            return self._done()
        self.prompt.value = ""
        if self.mode.value != "Chat":
            return self._begin_turn({"role": "user", "content": text}, text)
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

    def _openai_turn(self, message: dict[str, Any], body: dict[str, Any]) -> None:
        """One JSON or Tools turn: the conversation so far plus ``message``, answered whole."""
        payload = {**body, "messages": [*self.messages, message]}
        try:
            response = self._http.post(f"{self.endpoint}/v1/chat/completions", json=payload,
                                       headers=self._headers())
        finally:
            self.send_button.disabled = False
        if response.status_code >= 400:
            self.live.value = ""
            try:
                failure = str(response.json()["error"]["message"])
            except (ValueError, KeyError, TypeError):
                failure = f"HTTP {response.status_code}"
            self._say(f"The message was not answered. {failure}", error=True)
            return
        reply = response.json()["choices"][0]["message"]
        assistant: dict[str, Any] = {"role": "assistant", "content": reply.get("content") or ""}
        calls = reply.get("tool_calls") or []
        if calls:
            assistant["tool_calls"] = calls
            first = calls[0]
            self.pending_call = {"id": first["id"], "name": first["function"]["name"],
                                 "arguments": first["function"]["arguments"]}
        self.messages = [*self.messages, message, assistant]
        self.transcript.value = transcript_html(self.messages)
        self.live.value = ""
        self._panels()
        if calls:
            self._say(f"The model calls {self.pending_call['name']}; type its result and press "
                      "Send result." if self.pending_call else "")

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
