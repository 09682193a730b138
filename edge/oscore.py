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
# are reserved on flash _BLOCK at a time (RFC 8613 B.1.1), one small
# journal save per _BLOCK requests (edge/journal.py: two files replaced
# whole, inline in LittleFS metadata: ~0.04 erases a save), and a reboot
# continues above the last reservation. A save that fails sends nothing.
# The meter is only ever an OSCORE client: a response is accepted once, for
# its own request, so the meter keeps no replay window; the coordinator's
# window lives on the coordinator (aiocoap, persisted there). When the
# coordinator lost its window (a crash), it answers 4.01 with an Echo
# option (RFC 9175), protected: the request goes again, at once, with the
# Echo inside.
#
# Heap (the firmware frozen, esp32-like build, bench/bench_firmware.py):
# a meter without a context pays nothing, this module is imported only
# when the board has one (edge/firmware.py). With one, what stays in RAM
# while the meter runs is this module and ~150 bytes of state: the
# context file is read, the keys derived and this link set up at boot by
# edge/oscore_context.py, which is then released; the protocol code
# (shared/oscore.py, shared/ccm.py, shared/aes*.py and the AES key
# schedules) is imported for each request and each answer and released
# right after (edge.release), so it is not in RAM while a reading is
# signed, the firmware's peak. Frozen, such an import costs a few function
# objects, no compilation. A function object costs ~90 bytes of heap and a
# class ~220, an instance ~60 more: so a meter's one link is this module
# itself (edge/oscore_context.open_link returns it; its globals are the
# link's state; as coap.Client.post's `protect` it is asked for request()
# and response()), the sequence reservation and the option parsing live
# inside the functions that use them, and the context is one packed bytes
# object (shared/oscore.py's Context.pack).

from micropython import const

from edge import coap, release

_UNAUTHORIZED = const(129)  # 4.01
_POST = const(2)
_OPT_OSCORE = const(9)  # shared/oscore.py's, here so that module need not stay loaded
_OPT_ECHO = const(252)
# Each global costs a slot in this module's dict: the protocol code
# imported per message (shared.oscore, shared.ccm, shared.aes,
# shared.aes_soft) is named where it is released.

# The link's state, set by edge/oscore_context.open_link.
sender_id = None
_packed = None  # the context (ids, keys, Common IV): shared.oscore.unpack
_path = None  # the sequence journal (two slots, _path.0/.1)
_block = 64  # sequence numbers reserved per flash write (tests use fewer)
_next = 0  # the next sequence number to use; the request in flight has _next - 1
_limit = 0  # the first one not reserved on flash by this boot
echo = None  # to send with the next request
echo_asked = None  # what the last protected 4.01 asked for
ignored = 0  # answers that were not protected for us
last_ignored = None


# -- the hooks coap.Client.post calls --------------------------------------------


def request(path, payload, content_format):
    """The outer options and payload: a POST whose Uri-Path, Content-
    Format and payload are encrypted inside. OSError (flash full, a torn
    write) when a new block of sequence numbers cannot be reserved: nothing
    is sent.

    Sequence numbers are reserved on flash `_block` at a time: the journal
    holds the first number not yet reserved and the context's sender id,
    so every number below it may have gone out and a reboot continues
    above it."""
    global _next, _limit
    opts = [(coap.OPT_URI_PATH, seg.encode()) for seg in path.strip("/").split("/")]
    if content_format is not None:
        cf = bytes((content_format,)) if content_format < 256 else bytes((content_format >> 8, content_format & 255))
        opts.append((coap.OPT_CONTENT_FORMAT, cf))
    if echo is not None:
        opts.append((_OPT_ECHO, echo))
    if _next >= _limit:
        # On flash before any number of the block is used.
        from edge.journal import Journal

        reserve = _next + _block
        Journal(_path, slot_size=96).save({"sid": sender_id.hex(), "reserved": reserve})
        _limit = reserve
    _next += 1
    try:
        from shared import oscore

        value, ct, _ = oscore.unpack(_packed).protect_request(_next - 1, _POST, opts, payload)
    finally:
        for name in ("shared.oscore", "shared.ccm", "shared.aes", "shared.aes_soft"):
            release(name)
    return [(_OPT_OSCORE, value)], ct


def response(data):
    """(code, payload) of a protected answer to our request, or None to
    ignore the datagram and keep waiting."""
    global ignored, last_ignored, echo_asked
    try:
        from shared import oscore

        try:
            # The outer options: the OSCORE option's value and the
            # ciphertext (the payload).
            outer, body = oscore.decode_options(data, 4 + (data[0] & 0x0F))
            value = None
            for num, val in outer:
                if num == _OPT_OSCORE:
                    value = val
            if value is None:
                why = "unprotected %s" % coap.code_str(data[1])
            else:
                code, opts, payload = oscore.unpack(_packed).unprotect_response(
                    value, body, (sender_id, oscore.piv_bytes(_next - 1)))
                why = None
        except (oscore.OSCOREError, IndexError) as e:
            why = str(e)
    finally:
        for name in ("shared.oscore", "shared.ccm", "shared.aes", "shared.aes_soft"):
            release(name)
    if why is not None:
        ignored += 1
        last_ignored = why
        return None
    echo_asked = None
    for num, val in opts:
        if num == _OPT_ECHO:
            echo_asked = val
    return code, payload


# -- what the firmware calls ---------------------------------------------------


def post(client, path, payload, content_format=None):
    """client.post over OSCORE: (code, payload) of the protected answer.
    CoAPError when none came (the reading stays queued)."""
    global echo, last_ignored
    from edge import oscore as link

    before = ignored
    try:
        code, body = client.post(path, payload, content_format, protect=link)
        if code == _UNAUTHORIZED and echo_asked is not None:
            # The coordinator lost its replay window: prove freshness.
            from edge import log

            log.info("oscore", "coordinator asked for Echo (its replay window was lost): request repeated")
            echo = echo_asked
            try:
                code, body = client.post(path, payload, content_format, protect=link)
            finally:
                echo = None
            if code == _UNAUTHORIZED and echo_asked is not None:
                # Not a refusal of the reading: never let it drop one.
                raise coap.CoAPError("coordinator asked for Echo twice; will retry")
    except coap.CoAPError as e:
        if ignored > before:
            raise coap.CoAPError("%s; %d answer(s) ignored, not protected for this request (last: %s)" % (
                e, ignored - before, last_ignored))
        raise
    finally:
        last_ignored = None
    return code, body
