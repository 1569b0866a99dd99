"""Ending dialogs whose media expired, through the SIP proxy's JSON-RPC datagram socket.

OpenSIPS 3.x (``mi_datagram``) takes ``dlg_end_dlg`` with the dialog id as one string; Kamailio
(``jsonrpcs`` with the datagram transport) takes ``dlg.end_dlg`` with h_entry and h_id as JSON
integers — strings there are silently read as 0. ``[OpenSIPS] flavour`` chooses between them.

Calls the rtpproxy module set up carry no dialog id, only the parties' tags: Kamailio ends those
with ``dlg.terminate_dlg`` (Call-ID, tags), OpenSIPS with ``dlg_end_dlg`` given the Call-ID.
"""

from __future__ import annotations

import json
import os
import random

from twisted.internet import error as net_error
from twisted.internet.protocol import DatagramProtocol
from twisted.plugin import IPlugin
from zope.interface import implementer, provider

from mediaproxy import unixsocket
from mediaproxy.dialogs import Dialog, DialogTags
from mediaproxy.log import Logger
from mediaproxy.plugin import IDispatcherPlugin, IDispatcherPluginFactory, PluginBase

log = Logger(namespace="dialog_end")

REPLY_SOCKET = "opensips.sock"
TIMEOUT = 3.0
ATTEMPTS = 3


def opensips_request(request_id: str, call_id: str, dialog: Dialog) -> bytes:
    # OpenSIPS looks a dialog up by its Call-ID where the id is not one of its own
    target = call_id if isinstance(dialog, DialogTags) else dialog
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
    __slots__ = ("call_id", "dialog", "attempt", "timer")

    def __init__(self, call_id: str, dialog: Dialog) -> None:
        self.call_id, self.dialog, self.attempt, self.timer = call_id, dialog, 0, None

    @property
    def dialog_id(self) -> str:
        """The dialog as logged."""
        return str(self.dialog)


@implementer(IDispatcherPlugin)
class DialogEndPlugin(PluginBase, DatagramProtocol):
    name = "dialog_end"
    noisy = False

    def __init__(self, config, context, timeout: float = TIMEOUT, attempts: int = ATTEMPTS, rng: random.Random | None = None) -> None:  # noqa: ANN001
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
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
        self.pending.clear()
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        try:
            os.unlink(self.reply_path)
        except OSError:
            pass

    def end_dialog(self, call_id: str, dialog: Dialog) -> None:
        # OpenSIPS takes the id as the one string it gave us, whatever its form; only Kamailio's
        # integers need the H:I split
        if self.flavour == "kamailio" and not _is_kamailio_dialog(dialog):
            log.error(
                "Cannot end the dialog of call {call_id}: dialog_id {dialog_id!r} is not H:I, as Kamailio's dlg.end_dlg needs",
                call_id=call_id,
                dialog_id=dialog,
            )
            return
        self._send(_Pending(call_id, dialog))

    def _new_id(self) -> object:
        while True:
            if self.flavour == "kamailio":
                request_id: object = self.rng.randrange(1, 2**31)
            else:
                request_id = f"{self.rng.randrange(1, 2**32):x}"
            if request_id not in self.pending:
                return request_id

    def _send(self, pending: _Pending) -> None:
        pending.attempt += 1
        request_id = self._new_id()
        encode = kamailio_request if self.flavour == "kamailio" else opensips_request
        data = encode(request_id, pending.call_id, pending.dialog)
        try:
            self.transport.write(data, self.target)
        except (OSError, net_error.MessageLengthError) as failure:
            self._failed(pending, f"cannot send to {self.target}: {failure}")
            return
        self.pending[request_id] = pending
        pending.timer = self.reactor.callLater(self.timeout, self._timed_out, request_id)

    def _failed(self, pending: _Pending, reason: str) -> None:
        if pending.attempt < self.attempts:
            log.warn(
                "Ending dialog {dialog_id} of call {call_id} failed ({reason}); trying again",
                dialog_id=pending.dialog_id,
                call_id=pending.call_id,
                reason=reason,
            )
            self.reactor.callLater(self.retry_delay, self._send, pending)
        else:
            log.error(
                "Giving up ending dialog {dialog_id} of call {call_id} after {attempts} attempts: {reason}",
                dialog_id=pending.dialog_id,
                call_id=pending.call_id,
                attempts=pending.attempt,
                reason=reason,
            )

    def _timed_out(self, request_id: object) -> None:
        pending = self.pending.pop(request_id, None)
        if pending is not None:
            pending.timer = None
            self._failed(pending, f"request did timeout after {self.timeout:g}s")

    def _finish(self, request_id: object) -> _Pending | None:
        pending = self.pending.pop(request_id, None)
        if pending is not None and pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        return pending

    def datagramReceived(self, data: bytes, address) -> None:  # noqa: N802, ANN001
        text = data.decode("utf-8", "replace").strip()
        try:
            reply = json.loads(text)
        except ValueError:
            self._status_line(text)
            return
        if not isinstance(reply, dict) or "id" not in reply:
            log.warn("Ignoring a reply without id from the proxy: {text}", text=text[:200])
            return
        pending = self._finish(reply["id"])
        if pending is None:
            log.warn("Ignoring a reply with unknown id {id!r} from the proxy", id=reply["id"])
            return
        if "result" in reply:
            log.info("The proxy ended dialog {dialog_id} of call {call_id}", dialog_id=pending.dialog_id, call_id=pending.call_id)
        elif isinstance(reply.get("error"), dict):
            failure = reply["error"]
            # an error is an answer (e.g. 404: the dialog is already gone); asking again would not change it
            log.warn(
                "MI request dlg_end_dlg failed with: {code} {reason} (dialog {dialog_id} of call {call_id})",
                code=failure.get("code"),
                reason=failure.get("message"),
                dialog_id=pending.dialog_id,
                call_id=pending.call_id,
            )
        else:
            log.warn("Invalid reply to ending dialog {dialog_id}: {text}", dialog_id=pending.dialog_id, text=text[:200])

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
        outcome = "ended" if code.startswith("2") else "did not end"
        log.info(
            "The proxy {outcome} dialog {dialog_id} of call {call_id}: {code} {reason}",
            outcome=outcome,
            dialog_id=pending.dialog_id,
            call_id=pending.call_id,
            code=code,
            reason=message,
        )


@provider(IPlugin, IDispatcherPluginFactory)
class DialogEndPluginFactory:
    name = "dialog_end"

    @staticmethod
    def create(config, context) -> DialogEndPlugin:  # noqa: ANN001
        return DialogEndPlugin(config, context)
