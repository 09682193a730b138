# The meter's secure link: OSCORE (RFC 8613) around each reading's POST,
# with the context `microgrid flash` wrote to the board (`oscore_file`,
# JSON: master secret and salt, sender and recipient ids, hex).
#
# Why: a meter drops a reading from its outbox when the coordinator says
# it has it. Unprotected, anyone on the network who forges a 2.01 makes
# readings vanish, and every reading travels in clear. Here the reading
# (the signed COSE message, unchanged: it stays the durable evidence)
# goes encrypted and authenticated, and only a response that decrypts
# under the coordinator's key *and* is bound to this very request (its
# kid and Partial IV are in the AAD) counts. Everything else - a forged or
# altered answer, an unprotected 4.01, a reply to an earlier request - is
# ignored as if never received; the client keeps waiting and
# retransmitting, and the reading stays on flash until a protected answer
# comes.
#
# Sequence numbers (the Partial IV) must never repeat under one key: they
# are reserved on flash BLOCK at a time (RFC 8613 B.1.1), one small
# journal save per BLOCK requests (edge/journal.py: two files replaced
# whole, inline in LittleFS metadata: ~0.04 erases a save), and a reboot
# continues above the last reservation. A save that fails sends nothing.
# The meter is only ever an OSCORE client: a response is accepted once, for
# its own request, so the meter keeps no replay window; the coordinator's
# window lives on the coordinator (aiocoap, persisted there). When the
# coordinator lost its window (a crash), it answers 4.01 with an Echo
# option (RFC 9175), protected: the request goes again, at once, with the
# Echo inside.
#
# Imported only when the board has a context (edge/firmware.py): a meter
# without one pays nothing for it.

import binascii
import json

from edge import coap, log
from edge.journal import Journal
from shared import oscore as core

BLOCK = 64  # sequence numbers reserved per flash write
UNAUTHORIZED = 129  # 4.01
POST = 2


def _hex(doc, key, path, size=None, optional=False):
    v = doc.get(key)
    if v is None and optional:
        return None
    try:
        raw = binascii.unhexlify(v)
    except (TypeError, ValueError):
        # Never echo the value: it may be the master secret.
        raise ValueError("oscore context %s: %s is not hex" % (path, key))
    if size is not None and not size[0] <= len(raw) <= size[1]:
        raise ValueError("oscore context %s: %s has %d bytes, expected %d..%d" % (path, key, len(raw), size[0], size[1]))
    return raw


def load_context(path):
    """The shared.oscore.Context in `path`, or None when the board has no
    context file; ValueError when it is unusable (the board goes to safe
    mode rather than send readings in clear)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        raise ValueError("oscore context %s is not JSON: provision it again with `microgrid flash`" % path)
    if not isinstance(doc, dict):
        raise ValueError("oscore context %s: expected a JSON object" % path)
    secret = _hex(doc, "secret", path, (16, 64))
    salt = _hex(doc, "salt", path, (0, 64))
    sid = _hex(doc, "sender_id", path, (0, core.MAX_ID_LEN))
    rid = _hex(doc, "recipient_id", path, (0, core.MAX_ID_LEN))
    idc = _hex(doc, "id_context", path, (0, 32), optional=True)
    return core.Context(secret, salt, sid, rid, idc)


class Sequence:
    """Sender sequence numbers, reserved on flash `block` at a time.

    The journal holds the first number not yet reserved and the context's
    sender id: every number below it may have gone out. A journal written
    for another context (the board was provisioned anew) starts over at 0,
    which is safe because a new context has new keys."""

    def __init__(self, path, sender_id, block=BLOCK):
        self.journal = Journal(path, slot_size=96)
        self.block = block
        self.owner = binascii.hexlify(sender_id).decode()
        state = self.journal.load() or {}
        if state.get("sid") != self.owner:
            state = {}
        self.next = state.get("reserved", 0)
        self.limit = self.next  # nothing reserved by this boot yet
        self.saves = 0

    def take(self):
        if self.next >= self.limit:
            reserve = self.next + self.block
            # On flash before any number of the block is used; OSError
            # (flash full, torn) propagates and nothing is sent.
            self.journal.save({"sid": self.owner, "reserved": reserve})
            self.limit = reserve
            self.saves += 1
        n = self.next
        self.next += 1
        return n


def _outer(data):
    """(OSCORE option value or None, payload) of a CoAP datagram."""
    tkl = data[0] & 0x0F
    opts, payload = core.decode_options(data, 4 + tkl)
    for num, val in opts:
        if num == core.OPT_OSCORE:
            return val, payload
    return None, payload


class Link:
    """Protects requests for coap.Client.post (`protect=`) and checks
    its answers."""

    def __init__(self, ctx, seq):
        self.ctx = ctx
        self.seq = seq
        self.request_id = None
        self.echo = None  # to send with the next request
        self.echo_asked = None  # what the last protected 4.01 asked for
        self.ignored = 0  # answers that were not protected for us
        self.last_ignored = None
        self.protected = 0

    # -- the hooks coap.Client.post calls ------------------------------------

    def request(self, path, payload, content_format):
        """The outer options and payload: a POST whose Uri-Path, Content-
        Format and payload are encrypted inside."""
        opts = [(coap.OPT_URI_PATH, seg.encode()) for seg in path.strip("/").split("/")]
        if content_format is not None:
            cf = bytes((content_format,)) if content_format < 256 else bytes((content_format >> 8, content_format & 255))
            opts.append((coap.OPT_CONTENT_FORMAT, cf))
        if self.echo is not None:
            opts.append((core.OPT_ECHO, self.echo))
        value, ct, self.request_id = self.ctx.protect_request(self.seq.take(), POST, opts, payload)
        return [(core.OPT_OSCORE, value)], ct

    def response(self, data):
        """(code, payload) of a protected answer to our request, or None to
        ignore the datagram and keep waiting."""
        try:
            value, body = _outer(data)
            if value is None:
                self._ignore("unprotected %s" % coap.code_str(data[1]))
                return None
            code, opts, payload = self.ctx.unprotect_response(value, body, self.request_id)
        except (core.OSCOREError, IndexError) as e:
            self._ignore(str(e))
            return None
        self.echo_asked = None
        for num, val in opts:
            if num == core.OPT_ECHO:
                self.echo_asked = val
        self.protected += 1
        return code, payload

    def _ignore(self, why):
        self.ignored += 1
        self.last_ignored = why

    # -- what the firmware calls -----------------------------------------------

    def post(self, client, path, payload, content_format=None):
        """client.post over OSCORE: (code, payload) of the protected answer.
        CoAPError when none came (the reading stays queued)."""
        before = self.ignored
        try:
            code, body = client.post(path, payload, content_format, protect=self)
            if code == UNAUTHORIZED and self.echo_asked is not None:
                # The coordinator lost its replay window: prove freshness.
                log.info("oscore", "coordinator asked for Echo (its replay window was lost): request repeated")
                self.echo = self.echo_asked
                try:
                    code, body = client.post(path, payload, content_format, protect=self)
                finally:
                    self.echo = None
                if code == UNAUTHORIZED and self.echo_asked is not None:
                    # Not a refusal of the reading: never let it drop one.
                    raise coap.CoAPError("coordinator asked for Echo twice; will retry")
        except coap.CoAPError as e:
            if self.ignored > before:
                raise coap.CoAPError("%s; %d answer(s) ignored, not protected for this request (last: %s)" % (
                    e, self.ignored - before, self.last_ignored))
            raise
        return code, body


def open_link(path):
    """A Link for the context in `path` (its sequence numbers in
    `path`.seq.0/.1), or None when the board has none."""
    ctx = load_context(path)
    if ctx is None:
        return None
    return Link(ctx, Sequence(path + ".seq", ctx.sender_id))
