"""Ending dialogs whose media expired, through the SIP proxy's JSON-RPC datagram socket.

OpenSIPS 3.x (``mi_datagram``) takes ``dlg_end_dlg`` with one string: from 3.1 on it reads it as
the dialog's printed ``ID`` (h_entry and h_id each in hex with its digits reversed, joined by
``.``) or else as a Call-ID, so the module's decimal ``dialog_id`` (``h_entry << 32 | h_id``) is
converted to the printed form; a 404 to that is asked once more with the Call-ID. Kamailio
(``jsonrpcs`` with the datagram transport) takes ``dlg.end_dlg`` with h_entry and h_id as JSON
integers — strings there are silently read as 0. ``[OpenSIPS] flavour`` chooses between them.

Calls the rtpproxy module set up carry no dialog id, only the parties' tags: Kamailio ends those
with ``dlg.terminate_dlg`` (Call-ID, tags), OpenSIPS with ``dlg_end_dlg`` given the Call-ID.

``end_dialog`` answers a Deferred of the outcome (:class:`DialogEnding`) for whoever waits for
it (the management ``terminate``); cancelling it stops the attempts.
"""

from __future__ import annotations

import json
import os
import random

from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.internet.protocol import DatagramProtocol
from twisted.plugin import IPlugin
from zope.interface import implementer, provider

from mediaproxy.datatypes import ascii_decimal
from mediaproxy.dialogs import Dialog, DialogEnding, DialogTags
from mediaproxy.net import unixsocket
from mediaproxy.plugin import IDispatcherPlugin, IDispatcherPluginFactory, PluginBase
from mediaproxy.runtime.log import Logger

log = Logger(namespace="dialog_end")

REPLY_SOCKET = "opensips.sock"
TIMEOUT = 3.0
ATTEMPTS = 3


def opensips_dialog_id(dialog_id: str) -> str:
    """The dialog as OpenSIPS 3.1+ prints it (``dlg_list``'s ``ID``) from the decimal id its
    mediaproxy module sends: ``16862941634365`` → ``65f.d3f55a53``; another form as it is."""
    number = ascii_decimal(dialog_id, max_digits=20)
    if number is None or number >= 2**64:
        return dialog_id
    return f"{_reverse_hex(number >> 32)}.{_reverse_hex(number & 0xFFFFFFFF)}"


def _reverse_hex(number: int) -> str:
    # the dialog module writes the low nibble first (0 as "0")
    return f"{number:x}"[::-1]


def opensips_targets(call_id: str, dialog: Dialog) -> tuple[str, ...]:
    """What ``dlg_end_dlg`` is given, in turn: the dialog's own id, then (on a 404) its Call-ID."""
    if isinstance(dialog, DialogTags):
        return (call_id,)
    printed = opensips_dialog_id(dialog)
    return (printed,) if printed == call_id else (printed, call_id)


def opensips_request(request_id: str, target: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "dlg_end_dlg", "params": [target]}).encode()


def kamailio_request(request_id: int, call_id: str, dialog: Dialog) -> bytes:
    if isinstance(dialog, DialogTags):
        method, params = "dlg.terminate_dlg", [call_id, dialog.first, dialog.second]
    else:
        entry, _, identifier = dialog.partition(":")
        method, params = "dlg.end_dlg", [int(entry), int(identifier)]
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": request_id}, separators=(",", ":")).encode()


def _is_kamailio_dialog(dialog: Dialog) -> bool:
    if isinstance(dialog, DialogTags):
        return True
    entry, colon, identifier = dialog.partition(":")
    return bool(colon) and all(part.isascii() and part.isdigit() and len(part) <= 10 for part in (entry, identifier))


class _Pending:
    """One dialog being ended: its targets in turn (OpenSIPS), the attempts at the current one."""

    __slots__ = ("call_id", "dialog", "targets", "attempt", "timer", "retry", "outcome", "failure")

    def __init__(self, call_id: str, dialog: Dialog, targets: tuple[str, ...], outcome: defer.Deferred) -> None:
        self.call_id, self.dialog, self.targets = call_id, dialog, targets
        self.attempt, self.timer, self.retry = 0, None, None
        self.outcome = outcome
        self.failure = ""  # why the latest attempt got no answer

    @property
    def dialog_id(self) -> str:
        """The dialog as logged."""
        return str(self.dialog)

    @property
    def target(self) -> str | None:
        return self.targets[0] if self.targets else None

    def next_target(self) -> bool:
        """On to the next form (a 404 to this one); False when there is none."""
        if len(self.targets) < 2:
            return False
        self.targets, self.attempt = self.targets[1:], 0
        return True

    def cancel_timers(self) -> None:
        for timer in (self.timer, self.retry):
            if timer is not None and timer.active():
                timer.cancel()
        self.timer = self.retry = None


@implementer(IDispatcherPlugin)
class DialogEndPlugin(PluginBase, DatagramProtocol):
    name = "dialog_end"
    noisy = False

    def __init__(self, config, context, timeout: float = TIMEOUT, attempts: int = ATTEMPTS, rng: random.Random | None = None) -> None:
        self.flavour = config.opensips.flavour
        self.target = config.opensips.socket_path
        self.reactor = context.reactor
        self.reply_path = os.path.join(context.runtime_dir, REPLY_SOCKET)
        self.socket_mode, self.socket_gid = context.socket_mode, context.socket_gid
        self.timeout = timeout
        self.attempts = attempts
        self.retry_delay = 1.0
        self.rng = rng or random.Random()
        self.pending: dict[object, _Pending] = {}
        self.port = None

    def start(self) -> None:
        if os.path.exists(self.reply_path):
            os.unlink(self.reply_path)
        # the proxy writes its answers here: the same mode and group as the dispatcher socket
        self.port = self.reactor.listenUNIXDatagram(self.reply_path, self, mode=self.socket_mode)
        unixsocket.give_group(self.reply_path, self.socket_gid)
        log.info("Ending expired dialogs through {target} ({flavour} flavour)", target=self.target, flavour=self.flavour)

    def stop(self) -> None:
        for pending in self.pending.values():
            pending.cancel_timers()
        self.pending.clear()
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        try:
            os.unlink(self.reply_path)
        except OSError:
            pass

    def end_dialog(self, call_id: str, dialog: Dialog) -> defer.Deferred:
        """Ask the proxy to end the dialog; the Deferred fires with a DialogEnding (never fails)."""
        outcome: defer.Deferred = defer.Deferred(lambda _: self._cancel(pending))
        # OpenSIPS takes the id as the one string it gave us, whatever its form; only Kamailio's
        # integers need the H:I split
        if self.flavour == "kamailio" and not _is_kamailio_dialog(dialog):
            problem = f"dialog_id {dialog!r} is not H:I, as Kamailio's dlg.end_dlg needs"
            log.error("Cannot end the dialog of call {call_id}: {problem}", call_id=call_id, problem=problem)
            outcome.callback(DialogEnding(False, problem))
            return outcome
        targets = () if self.flavour == "kamailio" else opensips_targets(call_id, dialog)
        pending = _Pending(call_id, dialog, targets, outcome)
        self._send(pending)
        return outcome

    def _cancel(self, pending: _Pending) -> None:
        """Whoever waited gave up (a deadline): no more attempts; it is told what stands."""
        pending.cancel_timers()
        for request_id, waiting in list(self.pending.items()):
            if waiting is pending:
                del self.pending[request_id]
        if pending.failure:
            self._done(pending, DialogEnding(False, f"the proxy could not be reached: {pending.failure}"))
        else:
            self._done(pending, DialogEnding(False, "the proxy did not answer in time"))

    def _new_id(self) -> object:
        while True:
            if self.flavour == "kamailio":
                request_id: object = self.rng.randrange(1, 2**31)
            else:
                request_id = f"{self.rng.randrange(1, 2**32):x}"
            if request_id not in self.pending:
                return request_id

    def _send(self, pending: _Pending) -> None:
        pending.retry = None
        pending.attempt += 1
        request_id = self._new_id()
        if self.flavour == "kamailio":
            data = kamailio_request(request_id, pending.call_id, pending.dialog)
        else:
            data = opensips_request(request_id, pending.target)
        try:
            self.transport.write(data, self.target)
        except (OSError, net_error.MessageLengthError) as failure:
            self._failed(pending, f"cannot send to {self.target}: {failure}")
            return
        self.pending[request_id] = pending
        pending.timer = self.reactor.callLater(self.timeout, self._timed_out, request_id)

    def _failed(self, pending: _Pending, reason: str) -> None:
        pending.failure = reason
        if pending.attempt < self.attempts:
            log.warn(
                "Ending dialog {dialog_id} of call {call_id} failed ({reason}); trying again",
                dialog_id=pending.dialog_id,
                call_id=pending.call_id,
                reason=reason,
            )
            pending.retry = self.reactor.callLater(self.retry_delay, self._send, pending)
        else:
            log.error(
                "Giving up ending dialog {dialog_id} of call {call_id} after {attempts} attempts: {reason}",
                dialog_id=pending.dialog_id,
                call_id=pending.call_id,
                attempts=pending.attempt,
                reason=reason,
            )
            self._done(pending, DialogEnding(False, f"the proxy could not be reached: {reason}"))

    def _done(self, pending: _Pending, ending: DialogEnding) -> None:
        if not pending.outcome.called:
            pending.outcome.callback(ending)

    def _timed_out(self, request_id: object) -> None:
        pending = self.pending.pop(request_id, None)
        if pending is not None:
            pending.timer = None
            self._failed(pending, f"request did timeout after {self.timeout:g}s")

    def _finish(self, request_id: object) -> _Pending | None:
        pending = self.pending.pop(request_id, None)
        if pending is not None:
            pending.cancel_timers()
        return pending

    def datagramReceived(self, data: bytes, address) -> None:  # noqa: N802
        text = data.decode("utf-8", "replace").strip()
        try:
            reply = json.loads(text)
        except ValueError:
            self._status_line(text)
            return
        if not isinstance(reply, dict) or "id" not in reply:
            log.warn("Ignoring a reply without id from the proxy: {text}", text=text[:200])
            return
        try:
            pending = self._finish(reply["id"])
        except TypeError:  # an id that cannot be a key (a list, say) is no request of ours
            pending = None
        if pending is None:
            log.warn("Ignoring a reply with unknown id {id!r} from the proxy", id=reply["id"])
            return
        if "result" in reply:
            self._ended(pending, "OK" if reply["result"] in ("OK", {}) else str(reply["result"])[:200])
        elif isinstance(reply.get("error"), dict):
            failure = reply["error"]
            self._refused(pending, failure.get("code"), str(failure.get("message"))[:200])
        else:
            log.warn("Invalid reply to ending dialog {dialog_id}: {text}", dialog_id=pending.dialog_id, text=text[:200])
            self._done(pending, DialogEnding(False, f"the proxy answered something unreadable: {text[:200]}"))

    def _ended(self, pending: _Pending, answer: str) -> None:
        log.info("The proxy ended dialog {dialog_id} of call {call_id}", dialog_id=pending.dialog_id, call_id=pending.call_id)
        self._done(pending, DialogEnding(True, answer))

    def _refused(self, pending: _Pending, code: object, reason: str) -> None:
        # OpenSIPS 3.1+ finds a dialog by its printed ID or by its Call-ID: a 404 to one is asked
        # once with the other. Any other error is an answer; asking again would not change it
        if str(code) == "404" and pending.next_target():
            self._send(pending)
            return
        log.warn(
            "MI request dlg_end_dlg failed with: {code} {reason} (dialog {dialog_id} of call {call_id})",
            code=code,
            reason=reason,
            dialog_id=pending.dialog_id,
            call_id=pending.call_id,
        )
        self._done(pending, DialogEnding(False, f"the proxy answered {code} {reason}"))

    def _status_line(self, text: str) -> None:
        code, _, message = text.partition(" ")
        if not code.isdigit():
            log.warn("Ignoring an unrecognised reply from the proxy: {text!r}", text=text[:200])
            return
        if len(self.pending) != 1:
            log.warn(
                "Cannot tell which request the proxy's status line {text!r} answers ({count} pending)",
                text=text[:200],
                count=len(self.pending),
            )
            return
        pending = self._finish(next(iter(self.pending)))
        if code.startswith("2"):
            log.info(
                "The proxy ended dialog {dialog_id} of call {call_id}: {code} {reason}",
                dialog_id=pending.dialog_id,
                call_id=pending.call_id,
                code=code,
                reason=message,
            )
            self._done(pending, DialogEnding(True, f"{code} {message}".strip()))
        else:
            self._refused(pending, code, message)


@provider(IPlugin, IDispatcherPluginFactory)
class DialogEndPluginFactory:
    name = "dialog_end"

    @staticmethod
    def create(config, context) -> DialogEndPlugin:
        return DialogEndPlugin(config, context)
