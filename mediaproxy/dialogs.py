"""How the dispatcher names a call's SIP dialog to the proxy that is to end it.

The mediaproxy module sends the dialog module's own id with its first request. The rtpproxy
module sends none: its calls are named by their Call-ID and the two parties' tags, which
Kamailio's ``dlg.terminate_dlg`` and OpenSIPS's ``dlg_end_dlg`` (by Call-ID) accept instead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DialogTags:
    """A dialog known by its parties' tags; ``first`` is the tag of the call's first offerer."""

    first: str
    second: str

    def __str__(self) -> str:
        return f"tags {self.first}/{self.second}"


# what end_dialog is given: the proxy's dialog id, or the tags of a call without one
Dialog = str | DialogTags


@dataclass(frozen=True)
class DialogEnding:
    """What came of asking the proxy to end a dialog: ``ended``, and the proxy's answer (or why
    there was none) in words for a log line and the operator."""

    ended: bool
    answer: str
