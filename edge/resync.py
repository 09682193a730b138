# Continuing above the coordinator after the meter lost its state.
#
# With the journal and the outbox gone (flash wiped, a new filesystem, a
# board swapped with the key restored) the sequence restarts at 1 and the
# coordinator answers every reading 4.09 "stale". Its diagnostic ends with
# where it stands, "...; last=SEQ import=WH export=WH"
# (coordinator/ingest/readings.py). The meter then moves its numbers above
# `last`, losing no reading:
#
# - Readings already on flash were never stored (the coordinator refused
#   them), so they go out again under new numbers. The outbox is not
#   rewritten: every outbox number up to `upto` is sent as number + `shift`,
#   re-signed at send time from the stored message (its seq records, and a
#   merged_from, renumbered; signatures are deterministic, so a retry sends
#   the same bytes and a lost acknowledgement is answered "duplicate").
#   New readings are numbered from upto + shift + 1.
# - If the first renumbered reading's counters are below the coordinator's
#   last stored counters (a host-counting driver started again from 0), it
#   carries a counter_dropped reset record with the coordinator's figures as
#   the totals before the reset (edge/meters/base.py's convention), so the
#   energy across the gap is counted as this reading's counters, never as
#   negative or as zero.
# - (upto, shift, reset) is saved in the journal at once, before anything
#   is sent under the new numbers, so a power cut cannot make the meter
#   reuse or forget them; it is dropped once no outbox reading is numbered
#   at or below `upto`.
#
# Trust: the answer counts only inside the CoAP exchange the meter made
# (its message id and random token) and from the coordinator's address
# (edge/coap.py ignores other sources); the coordinator gives it only for a
# reading signed with the meter's key. The jump only ever goes up, to a
# `last` at or above the number just refused, and below SEQ_LIMIT: numbers
# stay small ints on a 32-bit port with 2^29 to spare (17 years at one
# reading a second). An answer outside those bounds is refused: the reading
# stays in the outbox and is retried with backoff, nothing is dropped.

from micropython import const

from shared import cbor, cose
from shared import reading_build as reading
from edge.meters.base import RESET_DROPPED

MERGED_FROM = "merged_from"
SEQ_LIMIT = 1 << 29
# SenML labels (RFC 8428, as in shared/senml.py): folded into the bytecode.
_N = const(0)
_U = const(1)
_V = const(2)
_VS = const(3)


def parse_stale(text):
    """(last, import_wh, export_wh) from a 4.09 stale diagnostic, or None if
    it does not carry them (an older coordinator)."""
    if not text.startswith("stale"):
        return None
    i = text.find("; last=")
    if i < 0:
        return None
    got = {}
    for word in text[i + 2:].split():
        k = word.find("=")
        if k > 0:
            got[word[:k]] = word[k + 1:]
    try:
        out = (int(got["last"]), int(got["import"]), int(got["export"]))
    except (KeyError, ValueError):
        return None
    for v in out:
        if v < 0:
            return None
    return out


def _first_reading(pack):
    """(end index of the first reading's records, its import, its export,
    whether it already carries a reset record)."""
    end = len(pack)
    imp = exp = None
    has_reset = False
    for i in range(len(pack)):
        name = pack[i].get(_N)
        if i and name == reading.SEQ:
            end = i
            break
        if name == reading.IMPORT:
            imp = pack[i].get(_V)
        elif name == reading.EXPORT:
            exp = pack[i].get(_V)
        elif name == "reset":
            has_reset = True
    return end, imp, exp, has_reset


def _numbers(pack):
    """The sequence numbers a pack names: its seq records and merged_from."""
    out = []
    for rec in pack:
        if rec.get(_N) in (reading.SEQ, MERGED_FROM):
            out.append(rec.get(_V))
    return out


class Renumber:
    """Outbox readings numbered up to `upto` go out as number + `shift`;
    the one numbered `reset[0]` also carries a counter_dropped record with
    the coordinator's totals reset[1], reset[2]."""

    def __init__(self, saved=None):
        self.upto = 0
        self.shift = 0
        self.reset = None
        # The last message renumbered: a retry sends it without signing
        # again (a signature takes seconds on a board).
        self._last = None
        if saved:
            try:
                self.upto, self.shift = int(saved[0]), int(saved[1])
                if len(saved) >= 5 and saved[2] is not None:
                    self.reset = (int(saved[2]), int(saved[3]), int(saved[4]))
            except (TypeError, ValueError, IndexError):
                # A journal written by something else: no renumbering.
                self.upto = self.shift = 0
                self.reset = None

    def active(self):
        return self.shift > 0

    def state(self):
        """What the journal keeps (nothing once done)."""
        if not self.shift:
            return {}
        r = self.reset
        return {"renumber": [self.upto, self.shift, r[0], r[1], r[2]] if r else [self.upto, self.shift]}

    def map(self, seq):
        return seq + self.shift if self.shift and seq <= self.upto else seq

    def release(self, head):
        """`head` is the outbox's oldest (seq, message, first), or None: once
        nothing left is numbered at or below `upto` the renumbering is over.
        True if it just ended (the caller saves the journal)."""
        if not self.shift:
            return False
        if head is not None and min(head[0], head[2]) <= self.upto:
            return False
        self.upto = self.shift = 0
        self.reset = None
        self._last = None
        return True

    def outgoing(self, secret, public_key, seq, message):
        """The message as it goes out: renumbered and re-signed if it names
        numbers at or below `upto`, else unchanged (the same bytes)."""
        if not self.shift:
            return message
        key = (seq, self.upto, self.shift, message)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        pack = cbor.loads(cose.parse(message).payload)
        changed = False
        for rec in pack:
            if rec.get(_N) in (reading.SEQ, MERGED_FROM):
                v = rec.get(_V)
                if isinstance(v, int) and v <= self.upto:
                    rec[_V] = v + self.shift
                    changed = True
        r = self.reset
        if r is not None and r[0] == seq:
            end, imp, exp, has_reset = _first_reading(pack)
            if not has_reset:
                pack[end:end] = [
                    {_N: "reset", _VS: RESET_DROPPED},
                    {_N: "reset_import_wh", _U: "Wh", _V: r[1]},
                    {_N: "reset_export_wh", _U: "Wh", _V: r[2]},
                ]
                changed = True
        out = reading.sign_payload(secret, public_key, cbor.dumps(pack)) if changed else message
        self._last = (key, out)
        return out

    def jump(self, head_seq, message, numbered, answer):
        """The coordinator refused the outbox's oldest reading (`head_seq`,
        `message` as stored, with any merged_from already added) as stale
        and told `answer` = (last, import_wh, export_wh). `numbered` is the
        highest number handed out so far (every reading numbered is on
        flash: the caller flushes a pending batch first). Renumbers
        everything up to `numbered` to continue above `last`; returns the
        new highest number. Raises ValueError, changing nothing, for an
        answer out of bounds."""
        last, c_import, c_export = answer
        pack = cbor.loads(cose.parse(message).payload)
        nums = [n for n in _numbers(pack) if isinstance(n, int)]
        if not nums:
            raise ValueError("the refused reading names no sequence number")
        lowest = min(nums)
        if last >= SEQ_LIMIT:
            raise ValueError("coordinator's last seq %d is beyond %d: not jumping" % (last, SEQ_LIMIT))
        if last < self.map(lowest):
            # Not stale at all by the coordinator's own figure: a confused
            # or forged answer; the reading waits for a sane one.
            raise ValueError("coordinator's last seq %d is below the refused seq %d" % (last, self.map(lowest)))
        if numbered < head_seq:
            numbered = head_seq
        shift = last + 1 - lowest
        reset = None
        end, imp, exp, has_reset = _first_reading(pack)
        if not has_reset and imp is not None and exp is not None and (imp < c_import or exp < c_export):
            reset = (head_seq, c_import, c_export)
        self.upto, self.shift, self.reset = numbered, shift, reset
        return numbered + shift
