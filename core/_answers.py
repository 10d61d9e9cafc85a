"""The coordinator's answers to clients: accepted, or rejected with the reason.

A client that names a ``reply_to`` in its request (``SubmitRun``, ``CancelRun``,
``ResumeRun``, ``LogsRequest``) waits for one :class:`~dagon.protocol.Answer` on
``topics.client_answers(reply_to)``, signed with the coordinator key. Answers are
queued here and sent by the drive loop right after its store commit, so an accepted
submission is in the run store when the client hears of it (a coordinator killed
before that never answered, and the client sends the request again).

A request the codec refused (unknown key, unsigned, outside the freshness window)
is answered too — otherwise the client could only wait for ever. Such a request is
peeked at without trusting anything in it but ``reply_to``, the run id and the key id
it was signed with; the answer names that key id, and a client ignores an
``untrusted`` answer for a key other than its own (anyone can publish a copy of its
request with a different signature). At most :data:`UNTRUSTED_PER_SECOND` such answers
go out a second, so a flood of strangers cannot make the coordinator flood the broker.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from dagon.protocol import (
    Answer,
    CancelRun,
    Codec,
    Envelope,
    LogsRequest,
    ProtocolError,
    ResumeRun,
    SubmitRun,
    key_fingerprint,
    topics,
)
from dagon.protocol.transport import Channel

__all__ = ["UNTRUSTED_PER_SECOND", "Answers"]

log = logging.getLogger(__name__)

MAX_REASON: Final = 8192  # characters of a reason sent (a validation error can list many tasks)
UNTRUSTED_PER_SECOND: Final = 20  # answers to refused requests sent per second at most
# codec reasons a client can act on (its key, its --insecure, its clock); a replay gets no answer
_ANSWERED: Final = frozenset({"untrusted", "unsigned", "expired"})

Request = SubmitRun | CancelRun | ResumeRun | LogsRequest


class Answers:
    """Answers waiting for the next store commit, and the peeking of refused requests.

    Args:
        channel: signs and encodes the answers, and sends them.
        coordinator_id: this coordinator (its inbox is where refused requests are peeked at).
    """

    def __init__(self, channel: Channel, *, coordinator_id: str) -> None:
        self._channel = channel
        self._id = coordinator_id
        self._inbox = topics.coordinator_inbox(coordinator_id)
        self._queued: list[tuple[str, Answer]] = []
        self._peek = Codec(sender=f"coordinator/{coordinator_id}")  # decodes without verifying: see module doc
        self._window = 0.0
        self._untrusted = 0

    @property
    def pending(self) -> bool:
        return bool(self._queued)

    def answer(
        self, envelope: Envelope, *, accepted: bool, reason: str = "", code: str = "", url: str = "", token: str = ""
    ) -> None:
        """Queue the answer to the request in ``envelope`` (nothing when it asked for none)."""
        msg = envelope.message
        if not isinstance(msg, SubmitRun | CancelRun | ResumeRun | LogsRequest) or not msg.reply_to:
            return
        reason = reason[:MAX_REASON]
        self._queue(msg, Answer(envelope.id, msg.OP, msg.run, accepted, reason, code, envelope.key_id, url, token))

    def _queue(self, request: Request, answer: Answer) -> None:
        try:
            topics.client_answers(request.reply_to)
        except ValueError:
            return
        self._queued.append((request.reply_to, answer))

    def refused(self, topic: str, payload: bytes, exc: ProtocolError) -> bool:
        """Answer a request the codec refused for a reason its client can fix; whether one was queued."""
        if topic != self._inbox or exc.reason not in _ANSWERED:
            return False
        try:
            envelope = self._peek.decode(payload)
        except ProtocolError:
            return False
        msg = envelope.message
        if not isinstance(msg, SubmitRun | CancelRun | ResumeRun | LogsRequest) or not msg.reply_to:
            return False
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window, self._untrusted = now, 0
        if self._untrusted >= UNTRUSTED_PER_SECOND:
            return False
        self._untrusted += 1
        reason = str(exc)
        if exc.reason == "untrusted" and envelope.key_id:
            reason = (
                f"coordinator {self._id!r} does not trust the client key {key_fingerprint(envelope.key_id)}"
                " that signed this request"
            )
        self._queue(msg, Answer(envelope.id, msg.OP, msg.run, False, reason, exc.reason, envelope.key_id))
        return True

    async def send(self) -> None:
        """Send every queued answer (after the store commit that backs them)."""
        queued, self._queued = self._queued, []
        for reply_to, answer in queued:
            try:
                payload = self._channel.codec.encode(answer)
            except ProtocolError as exc:  # e.g. a huge validation message: say so briefly instead
                log.warning("answer to %s for run %s cannot be sent: %s", reply_to, answer.run, exc)
                continue
            await self._channel.publisher.send(topics.client_answers(reply_to), payload)
