"""Students as websocket sessions: Streamlit's browser protocol, without a browser.

Why: ``bench/classroom.py --http`` drives the real app with one Chromium per student, and 30
Chromiums do not fit beside the server on a 2-core machine: the browsers would take the cores the
server is being measured on. A :class:`Student` is one websocket to the app's ``/_stcore/stream``
that sends and answers the same protobuf messages (``streamlit.proto``'s BackMsg / ForwardMsg) as
the browser frontend, so the server does the same work per student; all students share one asyncio
loop on a thread of the bench, which costs little CPU. What the frontend does that the server sees:

* ``rerun_script`` carries the URL's query string (kept in step with ``page_info_changed``, as the
  frontend keeps ``location.search``), the page's script hash (from ``navigation``), the value of
  every widget drawn (each widget reports its value when it mounts; the server keeps a widget's
  value when it is absent, but a browser always sends them all), and the hashes of the ForwardMsgs
  it has cached, so the server sends ``ref_hash`` references that are resolved from this cache;
* ``auto_rerun``: a fragment rerun (``is_auto_rerun``) every ``interval`` s, like the frontend's
  ``setInterval``, until ``stop_auto_rerun`` or a full run's ``new_session`` clears the timers;
  this is what a student watching a live run costs the server (``ui/live.py``);
* a button press: the button's ``trigger_value`` in one rerun.

What it leaves out is the client's own work: drawing, Plotly, the page's static files.
"""
from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from urllib.parse import parse_qs

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState
from websockets.asyncio.client import connect

FINISHED = {ForwardMsg.FINISHED_SUCCESSFULLY: "full", ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY:
            "fragment", ForwardMsg.FINISHED_EARLY_FOR_RERUN: "early"}
RUN_LINE = re.compile(r"\*\*Run\*\* `([^`]+)`.*status \*\*(\w+)\*\*")     # app_pages/lab.py live_body
TEXT_ELEMENTS = ("markdown", "alert", "heading")


def optional(el, name: str):
    """A proto3 ``optional`` field's value, or None when unset (the frontend's null)."""
    return getattr(el, name) if el.HasField(name) else None


def mounted_value(kind: str, el) -> WidgetState | None:
    """The state a widget reports when it mounts (the frontend's useBasicWidgetState: its set value
    when ``set_value``, else its default), or None for elements that keep no value (buttons report
    only a trigger, charts nothing). The four kinds the Lab draws; a None value leaves the state
    empty, as the frontend's ``setXValue(id, null)`` does."""
    if kind not in ("checkbox", "selectbox", "number_input", "text_input"):
        return None
    ws = WidgetState(id=el.id)
    if kind == "checkbox":
        ws.bool_value = el.value if el.set_value else el.default
    elif kind == "selectbox":          # the formatted option, as SelectboxSerde reads it
        i = optional(el, "default")
        v = optional(el, "raw_value") if el.set_value else (el.options[i] if i is not None and el.options
                                                             else None)
        if v is not None:
            ws.string_value = v
    elif kind in ("number_input", "text_input"):
        v = optional(el, "value") if el.set_value else None
        v = optional(el, "default") if v is None else v
        if v is not None and kind == "text_input":
            ws.string_value = v
        elif v is not None and el.data_type == el.INT:       # the proto holds doubles
            ws.int_value = int(v)
        elif v is not None:
            ws.double_value = v
    return ws


class Student:
    """One browser tab on the app, as its websocket: see the module docstring."""

    def __init__(self, base: str, query: str):
        self.base, self.qs = base, query
        self.page_hash = ""                 # the first rerun names the page by its URL path
        self.widgets: dict[str, WidgetState] = {}
        self.widget_fragment: dict[str, str] = {}
        self.drawn: set[str] = set()        # widgets drawn since the last new_session
        self.buttons: dict[str, str] = {}   # label -> widget id
        self.cache: dict[str, list] = {}    # hash -> [bytes, run count when last used, fragment]
        self.run_count, self.max_age, self.fresh_session = 0, 2, False
        self.timers: dict[str, tuple[float, asyncio.Task]] = {}
        self.texts: set[str] = set()
        self.run_id = self.status = None
        self.progress: list[str] = []       # the progress bar's texts, in order
        self.sent: Counter = Counter()      # reruns asked for: full, fragment
        self.answered: Counter = Counter()  # script runs finished: full, fragment, early
        self.ws = self.task = None
        self.ran = False                    # a script run has finished
        self.closed, self.error = False, None

    @property
    def sid(self) -> str | None:
        return parse_qs(self.qs).get("sid", [None])[0]      # ui/engine.py OWNER_PARAM

    def shows(self, text: str) -> bool:
        return any(text in t for t in self.texts)

    # -- connection ------------------------------------------------------------------------------
    async def open(self) -> None:
        url = self.base.replace("http", "ws", 1) + "/_stcore/stream"
        # The frontend's subprotocols: "streamlit", then the XSRF token or this placeholder.
        self.ws = await connect(url, subprotocols=["streamlit", "PLACEHOLDER_AUTH_TOKEN"],
                                origin=self.base, max_size=None, ping_interval=None)
        self.task = asyncio.create_task(self.listen())
        await self.rerun()

    async def listen(self) -> None:
        try:
            async for data in self.ws:
                self.on_message(data)
        except Exception as e:      # a message this driver could not follow: the session ends
            self.error = f"{type(e).__name__}: {e}"
            raise
        finally:
            self.closed = True
            self.stop_timers(list(self.timers))

    async def close(self) -> None:
        self.stop_timers(list(self.timers))
        await self.ws.close()
        await asyncio.gather(self.task, return_exceptions=True)

    # -- what the frontend sends -----------------------------------------------------------------
    async def rerun(self, fragment_id: str = "", auto: bool = False, trigger: str | None = None) -> None:
        bm = BackMsg()
        rs = bm.rerun_script
        rs.query_string, rs.page_script_hash, rs.page_name = self.qs, self.page_hash, ""
        rs.fragment_id, rs.is_auto_rerun = fragment_id, auto
        rs.widget_states.widgets.extend(self.widgets.values())
        if trigger:
            rs.widget_states.widgets.append(WidgetState(id=trigger, trigger_value=True))
        rs.cached_message_hashes.extend(self.cache)
        ci = rs.context_info
        ci.timezone, ci.timezone_offset, ci.locale = "UTC", 0, "en-US"
        ci.url, ci.is_embedded, ci.color_scheme = self.base + "/", False, "light"   # no query
        self.fresh_session = False
        self.sent["fragment" if fragment_id else "full"] += 1
        await self.ws.send(bm.SerializeToString())

    async def press(self, label: str) -> None:
        """Click the button with this label (its trigger value, with every widget's state)."""
        await self.rerun(trigger=self.buttons[label])

    async def tick(self, fragment_id: str, every: float) -> None:
        """The frontend's setInterval for an auto-rerunning fragment: fixed rate, no waiting for
        the previous rerun's answer."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not self.closed:
            due += every
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self.rerun(fragment_id, auto=True)

    def stop_timers(self, fragment_ids) -> None:
        for fid in fragment_ids:
            _, task = self.timers.pop(fid, (None, None))
            if task is not None:
                task.cancel()

    # -- what the server sends -------------------------------------------------------------------
    def on_message(self, data: bytes) -> None:
        msg = ForwardMsg.FromString(data)
        if msg.metadata.cacheable and msg.hash and msg.hash not in self.cache:
            self.cache[msg.hash] = [data, self.run_count, msg.delta.fragment_id or None]
        if msg.WhichOneof("type") == "ref_hash":
            entry = self.cache[msg.ref_hash]          # a miss is a protocol error: let it raise
            entry[1] = self.run_count
            full = ForwardMsg.FromString(entry[0])
            full.metadata.CopyFrom(msg.metadata)
            msg = full
        handler = getattr(self, "on_" + (msg.WhichOneof("type") or ""), None)
        if handler is not None:
            handler(msg)

    def on_new_session(self, msg) -> None:
        self.fresh_session = True
        self.max_age = msg.new_session.config.max_cached_message_age
        self.drawn = set()
        if not msg.metadata.run.fragment_ids:      # a full run: it re-sends the auto_reruns it keeps
            self.page_hash = msg.new_session.page_script_hash
            self.stop_timers(list(self.timers))
            self.texts = set()

    def on_navigation(self, msg) -> None:
        self.page_hash = msg.navigation.page_script_hash    # st.navigation's page, not app.py

    def on_page_info_changed(self, msg) -> None:
        self.qs = msg.page_info_changed.query_string

    def on_auto_rerun(self, msg) -> None:
        fid, every = msg.auto_rerun.fragment_id, msg.auto_rerun.interval
        if self.timers.get(fid, (None,))[0] == every:
            return
        self.stop_timers([fid])
        self.timers[fid] = (every, asyncio.get_running_loop().create_task(self.tick(fid, every)))

    def on_stop_auto_rerun(self, msg) -> None:
        self.stop_timers(msg.stop_auto_rerun.fragment_ids)

    def on_delta(self, msg) -> None:
        if msg.delta.WhichOneof("type") != "new_element":
            return
        kind = msg.delta.new_element.WhichOneof("type")
        el = getattr(msg.delta.new_element, kind)
        if kind in TEXT_ELEMENTS:
            self.see_text(el.body)
        elif kind == "progress" and el.text and (not self.progress or self.progress[-1] != el.text):
            self.progress.append(el.text)
        elif kind == "button":
            self.buttons[el.label] = el.id
        state = mounted_value(kind, el)
        if state is not None:
            self.drawn.add(el.id)
            self.widget_fragment[el.id] = msg.delta.fragment_id
            if el.set_value or el.id not in self.widgets:
                self.widgets[el.id] = state

    def see_text(self, text: str) -> None:
        self.texts.add(text)
        m = RUN_LINE.search(text)
        if m:
            self.run_id, self.status = m.groups()

    def on_script_finished(self, msg) -> None:
        status = msg.script_finished
        self.answered[FINISHED.get(status, "other")] += 1
        if not msg.metadata.HasField("run"):
            return
        frags = set(msg.metadata.run.fragment_ids)
        if status in (ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY):
            self.forget_widgets(frags)
            self.ran = True
        if status != ForwardMsg.FINISHED_EARLY_FOR_RERUN and self.fresh_session:
            self.age_cache(frags)

    def forget_widgets(self, frags: set[str]) -> None:
        """Drop the state of widgets the run did not draw again (the frontend's
        removeInactiveWidgetState); a fragment run only redraws its own fragments."""
        for wid in [w for w in self.widgets if w not in self.drawn
                    and (not frags or self.widget_fragment.get(w) in frags)]:
            del self.widgets[wid]

    def age_cache(self, frags: set[str]) -> None:
        """The frontend's ForwardMsgCache.incrementRunCount: messages unused for more than
        ``max_cached_message_age`` runs (of their fragment, for a fragment run) are dropped."""
        self.run_count += 1
        for h, (_, used, frag) in list(self.cache.items()):
            if frags and frag not in frags:
                continue
            if self.run_count - used > self.max_age:
                del self.cache[h]


class WsClass:
    """N students on one asyncio loop, on a thread of its own; the bench calls the same steps as on
    ``bench/classroom.py``'s Chromium driver (``open``, ``press_all``, ``finish``)."""

    def __init__(self, base: str):
        self.base = base
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.students: list[Student] = []
        self.window: tuple[float, Counter, Counter] | None = None

    def __enter__(self) -> "WsClass":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.call(self._close_all(), 60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def call(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def open(self, n: int, epochs: int, ready: str | None = "This teacher is cached") -> None:
        """N Lab sessions set up for ``epochs``, opened one after another (see :meth:`add`)."""
        for _ in range(n):
            self.add(f"train.epochs={epochs}", ready)

    def add(self, query: str, ready: str | None, timeout: float = 180) -> Student:
        """One session on ``/?query``, once its page shows ``ready`` (or has finished its first
        run, with ``ready`` None) and has a Train button."""
        s = Student(self.base, query)
        self.students.append(s)
        self.call(self._open(s, ready), timeout)
        return s

    async def _open(self, s: Student, ready: str | None) -> None:
        await s.open()
        while not (s.ran and "Train" in s.buttons and (ready is None or s.shows(ready))):
            if s.closed:
                await s.task        # raises what ended it
                raise RuntimeError("the server closed the session")
            await asyncio.sleep(0.05)

    def press_all(self, spread: float = 0.0) -> None:
        """N Train presses, back to back or evenly over ``spread`` seconds; the rerun counters start
        from here."""
        self.window = (time.perf_counter(), *self.totals())
        self.call(self._press_all(spread), 60 + spread)

    async def _press_all(self, spread: float) -> None:
        for i, s in enumerate(self.students):
            if i and spread:
                await asyncio.sleep(spread / (len(self.students) - 1))
            await s.press("Train")

    def totals(self) -> tuple[Counter, Counter]:
        sent, answered = Counter(), Counter()
        for s in self.students:
            sent.update(s.sent)
            answered.update(s.answered)
        return sent, answered

    def wait_shown(self, timeout: float = 60) -> None:
        """Until every session's page shows its run's final status (the fragment's last full
        rerun after the run ends), or ``timeout``."""
        from kdengine import ACTIVE
        end = time.perf_counter() + timeout
        while time.perf_counter() < end and any(
                not s.closed and (s.status is None or s.status in ACTIVE) for s in self.students):
            time.sleep(0.2)

    def finish(self, store, epochs: int) -> list[str]:
        """Report lines: the reruns the server answered during the load, and whether each session
        saw its own run, with the expected config, to the end."""
        t0, sent0, ans0 = self.window
        secs = time.perf_counter() - t0
        sent, ans = self.totals()
        sent, ans = sent - sent0, ans - ans0
        lines = [f"reruns the sessions asked for during the load ({secs:.0f} s): full "
                 f"{sent['full'] / secs:.2f}/s, fragment {sent['fragment'] / secs:.2f}/s",
                 f"reruns the server answered: full {ans['full'] / secs:.2f}/s, fragment "
                 f"{ans['fragment'] / secs:.2f}/s, ended early for a newer rerun "
                 f"{ans['early'] / secs:.2f}/s"]
        self.wait_shown()
        bad = [f"{i}: {why}" for i, s in enumerate(self.students)
               if (why := own_run_problem(s, store, epochs))]
        lines.append(f"sessions that saw their own {epochs}-epoch run to 'done': "
                     f"{len(self.students) - len(bad)}/{len(self.students)}"
                     + ("" if not bad else "; " + "; ".join(bad[:5])))
        return lines

    async def _close_all(self) -> None:
        for s in self.students:
            if s.ws is not None and not s.closed:
                await s.close()


def own_run_problem(s: Student, store, epochs: int) -> str | None:
    """Why session ``s`` did not see its own run with ``epochs`` epochs to 'done', or None."""
    if s.closed:
        return f"the session ended ({s.error or 'closed by the server'})"
    if s.run_id is None:
        return "no run shown"
    row = store.get_run(s.run_id)
    if row is None:
        return f"run {s.run_id} not stored"
    if row["owner"] != s.sid:
        return f"run {s.run_id} belongs to {row['owner']}, not {s.sid}"
    if row["config"]["train"]["epochs"] != epochs:
        return f"run {s.run_id} has {row['config']['train']['epochs']} epochs"
    if s.status != "done":
        return f"run {s.run_id} shown as {s.status}"
    return None
